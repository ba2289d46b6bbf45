"""Bad roots, bad images, bad options and tiny classes give one clear message each."""

import re
import warnings

import pytest
from PIL import Image

from diml.data import BadImageError, build_splits


def _folder(root, names=("ant", "bee", "cat", "dog"), per_class=2):
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            Image.new("RGB", (8, 8), (10, 20, 30)).save(root / name / f"{j}.jpg")


@pytest.mark.parametrize("dataset", ["cub200", "cars196", "sop", "folder"])
def test_missing_root_names_the_path_and_the_docs(tmp_path, dataset):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere.*docs/DATASETS.md"):
        build_splits(dataset, root=missing)
    with pytest.raises(ValueError, match="needs root"):
        build_splits(dataset, root=None)


@pytest.mark.parametrize("dataset,layout", [("cub200", "images.txt"), ("cars196", "cars_annos.mat"),
                                            ("sop", "Ebay_train.txt"), ("folder", "train/<class>")])
def test_unknown_layout_lists_what_was_looked_for(tmp_path, dataset, layout):
    (tmp_path / "README.txt").write_text("not a dataset")
    with pytest.raises(FileNotFoundError) as info:
        build_splits(dataset, root=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and layout in message and "docs/DATASETS.md" in message
    assert "\n" not in message


def test_corrupt_image_raises_naming_the_file(tmp_path):
    _folder(tmp_path)
    (tmp_path / "ant" / "0.jpg").write_bytes(b"this is not a jpeg")
    splits = build_splits("folder", root=tmp_path, image_size=8, test_fraction=0.5, seed=0)
    split = splits.train if "ant" in splits.train.class_names else splits.test
    index = [split.image_id(i) for i in range(len(split))].index("ant/0.jpg")
    with pytest.raises(BadImageError, match=r"ant/0\.jpg.*skip_bad_images"):
        split[index]


def test_skip_bad_images_drops_corrupt_and_truncated_files_with_a_count(tmp_path):
    _folder(tmp_path, per_class=3)
    (tmp_path / "ant" / "0.jpg").write_bytes(b"garbage")
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "bee" / "big.jpg", quality=95)
    data = (tmp_path / "bee" / "big.jpg").read_bytes()
    (tmp_path / "bee" / "big.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    with pytest.warns(UserWarning, match="missing or unreadable") as record:
        splits = build_splits("folder", root=tmp_path, image_size=8, skip_bad_images=True)
    messages = " ".join(str(w.message) for w in record)
    assert sum(int(n) for n in re.findall(r"skipped (\d+) missing or unreadable", messages)) == 2
    assert "ant/0.jpg" in messages and "bee/big.jpg" in messages
    assert sorted(splits.train.skipped_at_load + splits.test.skipped_at_load) == ["ant/0.jpg", "bee/big.jpg"]
    ids = [s.image_id(i) for s in (splits.train, splits.test) for i in range(len(s))]
    assert len(ids) == 4 * 3 - 1 and "ant/0.jpg" not in ids and "bee/big.jpg" not in ids
    for split in (splits.train, splits.test):
        for i in range(len(split)):
            split[i]  # every remaining image loads


def test_an_image_that_goes_bad_after_the_scan_is_skipped_when_read(tmp_path):
    from diml.data import skipped_indices, skipped_label

    _folder(tmp_path, per_class=3)
    splits = build_splits("folder", root=tmp_path, image_size=8, test_fraction=0.5, seed=0, skip_bad_images=True)
    assert splits.train.skipped_at_load == [] == splits.test.skipped_at_load
    split = splits.train if "ant" in splits.train.class_names else splits.test
    index = [split.image_id(i) for i in range(len(split))].index("ant/1.jpg")
    (tmp_path / "ant" / "1.jpg").write_bytes(b"overwritten since the scan")
    with pytest.warns(UserWarning, match=r"skipped image '.*ant/1\.jpg': cannot read image") as record:
        for view in (split, split.eval_view(), split):  # training and evaluation transforms; warned once
            image, label = view[index]
            assert image.shape == (3, 8, 8) and label == skipped_label(index) < 0
    assert len(record) == 1 and skipped_indices([3, label, 0]) == [index]
    (tmp_path / "ant" / "2.jpg").unlink()  # a file deleted since the scan
    with pytest.warns(UserWarning, match=r"ant/2\.jpg' is missing"):
        assert split.eval_view()[index + 1][1] == skipped_label(index + 1)
    assert split[index - 1][1] >= 0  # the others still load
    kept = split.subset([i for i in range(len(split)) if i != index])
    assert len(kept) == len(split) - 1 and "ant/1.jpg" not in [kept.image_id(i) for i in range(len(kept))]


def test_missing_listed_file_raises_naming_it(tmp_path):
    header = "image_id class_id super_class_id path"
    for fname, cls in (("Ebay_train.txt", 1), ("Ebay_test.txt", 2)):
        rows = [header] + [f"{j} {cls} 1 bicycle_final/{cls}_{j}.JPG" for j in range(2)]
        (tmp_path / fname).write_text("\n".join(rows))
        for j in range(2):
            (tmp_path / "bicycle_final").mkdir(exist_ok=True)
            if (cls, j) != (2, 1):
                Image.new("RGB", (8, 8)).save(tmp_path / "bicycle_final" / f"{cls}_{j}.JPG", format="JPEG")
    with pytest.raises(FileNotFoundError, match=r"sop test: 1 listed image.*2_1\.JPG"):
        build_splits("sop", root=tmp_path, image_size=8)


def test_truncated_annotation_file_names_the_line(tmp_path):
    (tmp_path / "Ebay_train.txt").write_text("image_id class_id super_class_id path\n1 1 1\n")
    (tmp_path / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n")
    with pytest.raises(ValueError, match="Ebay_train.txt' line 2"):
        build_splits("sop", root=tmp_path)


def test_classes_with_fewer_than_two_images_are_reported(tmp_path):
    _folder(tmp_path / "train", names=("ant", "bee"))
    _folder(tmp_path / "test", names=("cat", "dog"))
    (tmp_path / "test" / "dog" / "1.jpg").unlink()
    with pytest.warns(UserWarning, match=r"folder test split: 1 class\(es\) with fewer than 2 images.*dog"):
        build_splits("folder", root=tmp_path, image_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (tmp_path / "test" / "cat" / "1.jpg").rename(tmp_path / "test" / "dog" / "1.jpg")
        _folder(tmp_path / "test", names=("cat",))
        build_splits("folder", root=tmp_path, image_size=8)  # no warning once every class has 2 images


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose one of cars196, cub200, folder"):
        build_splits("imagenet")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colours'\] for dataset 'synthetic'"):
        build_splits("synthetic", colours=3)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_classes'\] for dataset 'folder'"):
        build_splits("folder", root=tmp_path, num_classes=3)
    with pytest.raises(ValueError, match="leave root unset"):
        build_splits("synthetic", root=tmp_path)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        build_splits("synthetic", image_size=16, num_classes=8, images_per_class=2, val_fraction=1.0)
    with pytest.raises(ValueError, match="image_size must be an integer >= 8"):
        build_splits("synthetic", image_size=4)
    with pytest.raises(ValueError, match="crop_scale"):
        build_splits("synthetic", image_size=16, crop_scale=(0.5, 2.0))


def test_dataset_registry_rejects_a_duplicate_name():
    from diml.data import list_datasets, register_dataset

    assert list_datasets() == ["cars196", "cub200", "folder", "sop", "synthetic"]
    with pytest.raises(ValueError, match="'cub200' is already registered"):
        register_dataset("cub200", lambda root, **kw: None)
