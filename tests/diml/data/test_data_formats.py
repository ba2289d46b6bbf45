"""Each real on-disk format, written by the test in that exact format, loads into the right class-disjoint splits.

Every fixture image is a uniform colour whose red channel encodes its class key (``RED[key]``), so a loaded image
can be checked against its label independently of the loader.
"""

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from diml.data import build_splits

S = 16  # output image size of the transforms in these tests


def _write(path, red, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (red, 40, 200)).save(path)


def _red(key):
    return (int(key) * 37) % 250


def _check_split(split, expected):
    """``expected``: {class name: number of images}; each image's red channel encodes its class."""
    assert sorted(split.class_names) == sorted(expected)
    assert split.num_classes == len(expected)
    assert split.labels.dtype == np.int64
    assert set(split.labels.tolist()) == set(range(len(expected)))
    counts = np.bincount(split.labels, minlength=split.num_classes)
    assert {split.class_names[c]: int(counts[c]) for c in range(split.num_classes)} == expected
    x, y = split[0]
    assert x.shape == (3, S, S) and x.dtype == torch.float32 and y == split.labels[0]
    return [np.asarray(split.load_image(i))[0, 0, 0] for i in range(len(split))]


def test_cub_official_archive(tmp_path):
    base = tmp_path / "CUB_200_2011"
    classes = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross", 100: "100.Brown_Pelican",
               101: "101.White_Pelican", 200: "200.Common_Yellowthroat"}
    per_class = {1: 3, 2: 2, 100: 2, 101: 3, 200: 2}
    images, labels, image_id = [], [], 0
    for cid, name in classes.items():
        for j in range(per_class[cid]):
            image_id += 1
            rel = f"{name}/{name.split('.')[1]}_{j:04d}_{image_id}.jpg"
            _write(base / "images" / rel, _red(cid))
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cid}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "classes.txt").write_text("\n".join(f"{c} {n}" for c, n in classes.items()) + "\n")

    for root in (tmp_path, base):
        splits = build_splits("cub200", root=root, image_size=S)
        reds = _check_split(splits.train, {classes[c]: per_class[c] for c in (1, 2, 100)})
        for i, red in enumerate(reds):
            cid = int(splits.train.class_names[splits.train.labels[i]].split(".")[0])
            assert abs(int(red) - _red(cid)) <= 3
        _check_split(splits.test, {classes[c]: per_class[c] for c in (101, 200)})
        assert splits.val is None
        assert splits.test.image_id(0).startswith("101.White_Pelican/")


def test_cub_bare_image_folders(tmp_path):
    for cid, n in ((3, 2), (50, 3), (150, 2)):
        for j in range(n):
            _write(tmp_path / "images" / f"{cid:03d}.Bird_{cid}" / f"img_{j}.jpg", _red(cid))
    (tmp_path / "images" / "notes").mkdir()  # not a NNN.Name class folder: ignored
    splits = build_splits("cub200", root=tmp_path, image_size=S)
    _check_split(splits.train, {"003.Bird_3": 2, "050.Bird_50": 3})
    reds = _check_split(splits.test, {"150.Bird_150": 2})
    assert all(abs(int(r) - _red(150)) <= 3 for r in reds)


def _cars_mat(path, records, class_names):
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
             ("class", "O"), ("test", "O")]
    ann = np.zeros((1, len(records)), dtype=dtype)
    for i, (rel, cls, test) in enumerate(records):
        ann[0, i] = (rel, np.uint8(1), np.uint8(2), np.uint16(10), np.uint16(8), np.uint8(cls), np.uint8(test))
    names = np.empty((1, len(class_names)), dtype=object)
    names[0, :] = class_names
    scipy.io.savemat(path, {"annotations": ann, "class_names": names})


def test_cars196_official_mat(tmp_path):
    class_names = [f"Make{c} Model {2000 + c}" for c in range(1, 197)]
    records, n = [], 0
    for cls, count in ((1, 3), (98, 2), (99, 2), (196, 3)):
        for j in range(count):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            _write(tmp_path / rel, _red(cls))
            records.append((rel, cls, j % 2))  # the official train/test flag is ignored by the DML protocol
    _cars_mat(tmp_path / "cars_annos.mat", records, class_names)
    splits = build_splits("cars196", root=tmp_path, image_size=S)
    reds = _check_split(splits.train, {class_names[0]: 3, class_names[97]: 2})
    for i, red in enumerate(reds):
        cls = class_names.index(splits.train.class_names[splits.train.labels[i]]) + 1
        assert abs(int(red) - _red(cls)) <= 3
    _check_split(splits.test, {class_names[98]: 2, class_names[195]: 3})
    assert splits.train.image_id(0).startswith("car_ims/")


def test_cars196_one_folder_per_class(tmp_path):
    counts = {"Acura TL 2012": 2, "BMW M3 2012": 3, "Chevrolet Volt 2012": 2, "Dodge Ram 2010": 4}
    for k, (name, count) in enumerate(counts.items()):
        for j in range(count):
            _write(tmp_path / "images" / name / f"{j}.png", _red(k))
    splits = build_splits("cars196", root=tmp_path, image_size=S)
    _check_split(splits.train, {"Acura TL 2012": 2, "BMW M3 2012": 3})
    reds = _check_split(splits.test, {"Chevrolet Volt 2012": 2, "Dodge Ram 2010": 4})
    assert reds == [_red(2)] * 2 + [_red(3)] * 4  # PNG is lossless


def test_sop_ebay_files(tmp_path):
    header = "image_id class_id super_class_id path"
    train = [(1, 1, "bicycle", 3), (2, 1, "bicycle", 2), (3, 2, "chair", 2)]
    test = [(4, 3, "chair", 2), (5, 4, "kettle", 3)]
    for fname, rows in (("Ebay_train.txt", train), ("Ebay_test.txt", test)):
        lines, image_id = [header], 0
        for class_id, super_id, super_name, count in rows:
            for j in range(count):
                image_id += 1
                rel = f"{super_name}_final/{1000 + class_id}_{j}.JPG"
                _write(tmp_path / "Stanford_Online_Products" / rel, _red(class_id))
                lines.append(f"{image_id} {class_id} {super_id} {rel}")
        (tmp_path / "Stanford_Online_Products" / fname).write_text("\n".join(lines) + "\n")
    splits = build_splits("sop", root=tmp_path, image_size=S)
    _check_split(splits.train, {"bicycle_final:1": 3, "bicycle_final:2": 2, "chair_final:3": 2})
    reds = _check_split(splits.test, {"chair_final:4": 2, "kettle_final:5": 3})
    assert all(abs(int(r) - _red(4)) <= 3 for r in reds[:2]) and all(abs(int(r) - _red(5)) <= 3 for r in reds[2:])


def test_folder_with_train_and_test_subtrees(tmp_path):
    for sub, names in (("train", ["ant", "bee"]), ("test", ["cat", "dog", "eel"])):
        for k, name in enumerate(names):
            for j in range(2 + k):
                _write(tmp_path / sub / name / "nested" / f"{j}.png", _red(k))
    splits = build_splits("folder", root=tmp_path, image_size=S)
    _check_split(splits.train, {"ant": 2, "bee": 3})
    _check_split(splits.test, {"cat": 2, "dog": 3, "eel": 4})
    assert splits.train.image_id(0) == "ant/nested/0.png"


def test_folder_seeded_class_disjoint_fraction(tmp_path):
    names = [f"class{k}" for k in range(8)]
    for k, name in enumerate(names):
        for j in range(2):
            _write(tmp_path / name / f"{j}.png", _red(k))
    a = build_splits("folder", root=tmp_path, image_size=S, seed=1, test_fraction=0.25)
    assert a.train.num_classes == 6 and a.test.num_classes == 2
    assert set(a.train.class_names).isdisjoint(a.test.class_names)
    assert sorted(a.train.class_names + a.test.class_names) == names
    b = build_splits("folder", root=tmp_path, image_size=S, seed=1, test_fraction=0.25)
    assert b.test.class_names == a.test.class_names
    tests_by_seed = {tuple(build_splits("folder", root=tmp_path, image_size=S, seed=s).test.class_names)
                     for s in range(5)}
    assert len(tests_by_seed) > 1  # the held-out classes depend on the seed
    for i in range(len(a.test)):
        assert np.asarray(a.test.load_image(i))[0, 0, 0] == _red(names.index(a.test.class_names[a.test.labels[i]]))


@pytest.mark.parametrize("val_fraction,n_val", [(0.25, 2), (0.01, 1)])
def test_validation_split_is_carved_from_training_classes(tmp_path, val_fraction, n_val):
    for sub, names in (("train", [f"tr{k}" for k in range(8)]), ("test", ["te0", "te1"])):
        for name in names:
            for j in range(3):
                _write(tmp_path / sub / name / f"{j}.png", 100)
    splits = build_splits("folder", root=tmp_path, image_size=S, val_fraction=val_fraction, seed=3)
    assert splits.val.num_classes == n_val and splits.train.num_classes == 8 - n_val
    assert set(splits.val.class_names).isdisjoint(splits.train.class_names)
    assert set(splits.val.class_names) | set(splits.train.class_names) == {f"tr{k}" for k in range(8)}
    assert set(splits.val.labels.tolist()) == set(range(n_val))
    assert splits.val.transform is splits.val.eval_transform  # val is for model selection: eval transform
    assert splits.train.transform is not splits.train.eval_transform
    again = build_splits("folder", root=tmp_path, image_size=S, val_fraction=val_fraction, seed=3)
    assert again.val.class_names == splits.val.class_names
