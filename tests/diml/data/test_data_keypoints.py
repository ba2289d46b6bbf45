"""Part keypoints and boxes in the evaluation crop: the geometry against hand-computed values and against the real
eval transform's pixels, CUB's files (1-based points, ``0 0 0`` for invisible parts) and the folder sidecar, read
through the real loaders, and bad part files refused with one line naming the file, the line and the fix."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from diml.data import Augmentation, build_splits, eval_transform
from diml.data.keypoints import EvalGeometry


def _one(x, y, visible=True):
    return np.array([[[x, y]]], dtype=float), np.array([[visible]])


@pytest.mark.parametrize("size,geometry,point,expected", [
    # 500 x 375 landscape, S 224, ratio 256/224: Resize(256) -> 341 x 256 (int(256 * 500 / 375) = int(341.33));
    # left = round((341 - 224) / 2) = round(58.5) = 58 (halves to even), top = 16.
    ((500, 375), (224, 256), (99.5, 199.5), (99.5 * 341 / 500 - 58, 199.5 * 256 / 375 - 16)),
    # the same image upright: the width is the short side.
    ((375, 500), (224, 256), (199.5, 99.5), (199.5 * 256 / 375 - 16, 99.5 * 341 / 500 - 58)),
    # ratio 1.5, S 100: Resize(150) of 131 x 97 -> int(150 * 131 / 97) = int(202.58) = 202 x 150; left 51, top 25.
    ((131, 97), (100, 150), (60.0, 40.25), (60.0 * 202 / 131 - 51, 40.25 * 150 / 97 - 25)),
    # 97 x 131 upright, ratio 1.5: 150 x 202, left 25, top 51.
    ((97, 131), (100, 150), (40.25, 60.0), (40.25 * 150 / 97 - 25, 60.0 * 202 / 131 - 51)),
    # already the resize size and square: only the crop moves it (left = top = round(1.5) = 2).
    ((67, 67), (64, 67), (10.0, 20.0), (8.0, 18.0)),
])
def test_points_follow_resize_and_centre_crop(size, geometry, point, expected):
    g = EvalGeometry(*geometry)
    crop = g.points_to_crop(*_one(*point), np.array([size]))
    assert crop.dtype == np.float32 and crop.shape == (1, 1, 3)
    np.testing.assert_allclose(crop[0, 0], [*expected, 1.0], rtol=0, atol=1e-4)


def test_points_leaving_the_crop_or_invisible_are_zero():
    g = EvalGeometry(224, 256)  # 500 x 375 -> 341 x 256, crop x in [58, 282) of the resized image
    xs = np.array([0.5, 57.9 * 500 / 341, 58.0 * 500 / 341, 281.99 * 500 / 341, 282.0 * 500 / 341, 250.0])
    points = np.stack([xs, np.full_like(xs, 187.5)], axis=1)[None]
    visible = np.array([[True, True, True, True, True, False]])
    crop = g.points_to_crop(points, visible, np.array([[500, 375]]))
    assert crop[0, :, 2].tolist() == [0, 0, 1, 1, 0, 0]
    assert np.all(crop[0, [0, 1, 4, 5], :2] == 0)
    np.testing.assert_allclose(crop[0, 2, 0], 0.0, atol=1e-4)


def test_boxes_are_clipped_to_the_crop():
    g = EvalGeometry(100, 150)  # 131 x 97 -> 202 x 150, left 51, top 25
    boxes = g.boxes_to_crop(np.array([[0, 0, 131, 97], [40, 30, 80, 60]], dtype=float), np.array([[131, 97]] * 2))
    np.testing.assert_allclose(boxes, [[0, 0, 100, 100],
                                       [40 * 202 / 131 - 51, 30 * 150 / 97 - 25, 80 * 202 / 131 - 51,
                                        60 * 150 / 97 - 25]], atol=1e-4)


@pytest.mark.parametrize("size,ratio", [((53, 41), 256 / 224), ((41, 53), 1.4), ((60, 32), 1.0)])
def test_a_bright_block_lands_where_its_keypoint_says_through_the_real_transform(size, ratio):
    """Independent of the formulas: the eval transform's own pixels put the block's centre at the keypoint."""
    s = 24
    w, h = size
    x0, y0 = (w // 2 - 3, h // 2 + 1)  # a 5 x 5 block whose centre is (x0 + 2.5, y0 + 2.5)
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    pixels[y0:y0 + 5, x0:x0 + 5] = 255
    image = eval_transform(s, augmentation=Augmentation(eval_resize_ratio=ratio))(Image.fromarray(pixels))
    grey = (image * torch.tensor([0.229, 0.224, 0.225])[:, None, None]
            + torch.tensor([0.485, 0.456, 0.406])[:, None, None]).mean(0).numpy()
    grey = np.clip(grey, 0, None)
    ys, xs = np.mgrid[0:s, 0:s] + 0.5
    centroid = ((grey * xs).sum() / grey.sum(), (grey * ys).sum() / grey.sum())
    crop = EvalGeometry.from_ratio(s, ratio).points_to_crop(*_one(x0 + 2.5, y0 + 2.5), np.array([size]))
    np.testing.assert_allclose(crop[0, 0, :2], centroid, atol=0.05)
    assert crop[0, 0, 2] == 1


# --- CUB-200-2011 files through the real loader ------------------------------------------------------------------

CLASSES = {1: "001.Black_footed_Albatross", 101: "101.White_Pelican"}
SIZES = [(40, 30), (30, 40), (40, 30), (30, 40)]  # images 1, 2 (class 1); 3, 4 (class 101)
PARTS = "1 back\n2 left eye\n3 tail\n"
# image 1: part 1 at 1-based (11, 7), part 2 invisible, part 3 at the right border (leaves the crop);
# image 2: part 3 at (1, 1); image 3: part 2 at (20, 15); image 4 has no rows (all invisible).
LOCS = ["1 1 11.0 7.0 1", "1 2 0.0 0.0 0", "1 3 40.0 15.0 1", "2 1 0.0 0.0 0", "2 2 0 0 0", "2 3 1 1 1",
        "3 2 20 15 1", "3 1 0 0 0"]
BOXES = ["1 1.0 1.0 40.0 30.0", "2 11.0 6.0 10.0 10.0", "3 5 5 20 20", "4 1 1 30 40"]


def _write_cub(tmp_path, locs=LOCS, boxes=BOXES, parts=PARTS):
    base = tmp_path / "CUB_200_2011"
    images, labels = [], []
    for image_id, (w, h) in enumerate(SIZES, start=1):
        cid = 1 if image_id <= 2 else 101
        rel = f"{CLASSES[cid]}/img_{image_id}.jpg"
        (base / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (image_id * 40, 90, 30)).save(base / "images" / rel)
        images.append(f"{image_id} {rel}")
        labels.append(f"{image_id} {cid}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "classes.txt").write_text("".join(f"{c} {n}\n" for c, n in CLASSES.items()))
    if parts is not None:
        (base / "parts").mkdir()
        (base / "parts" / "parts.txt").write_text(parts)
        (base / "parts" / "part_locs.txt").write_text("\n".join(locs) + "\n")
    if boxes is not None:
        (base / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    return base


def _crop(point, size, s=16, ratio=1.25):
    """Hand computation: S 16, ratio 1.25 -> Resize(20); 40 x 30 -> 26 x 20 (left 5, top 2), 30 x 40 -> 20 x 26
    (left 2, top 5)."""
    (w, h) = size
    new, offset = ((26, 20), (5, 2)) if w > h else ((20, 26), (2, 5))
    return point[0] * new[0] / w - offset[0], point[1] * new[1] / h - offset[1]


def test_cub_parts_are_read_one_based_and_follow_the_eval_geometry(tmp_path):
    _write_cub(tmp_path)
    splits = build_splits("cub200", root=tmp_path, image_size=16, augmentation=Augmentation(eval_resize_ratio=1.25))
    train, test = splits.train, splits.test
    assert train.part_names == test.part_names == ["back", "left eye", "tail"]
    assert train.keypoint_image_size == 16
    kp = train.keypoints()
    assert kp.shape == (2, 3, 3) and kp.dtype == np.float32
    expected = np.zeros((2, 3, 3), dtype=np.float32)
    expected[0, 0] = [*_crop((10.5, 6.5), SIZES[0]), 1]  # 1-based (11, 7) is the centre of 0-based pixel (10, 6)
    # image 1: left eye 0 0 0, tail (39.5 * 26 / 40 - 5 = 20.7) out; image 2: tail (0.5 * 20 / 30 - 2 < 0) out
    np.testing.assert_allclose(kp, expected, atol=1e-5)
    kt = test.keypoints()
    np.testing.assert_allclose(kt[0], [[0, 0, 0], [*_crop((19.5, 14.5), SIZES[2]), 1], [0, 0, 0]], atol=1e-5)
    assert np.all(kt[1] == 0)  # image 4 has no rows: every part invisible

    boxes = train.part_boxes()
    assert boxes.shape == (2, 4) and boxes.dtype == np.float32
    np.testing.assert_allclose(boxes[0], [0, 0, 16, 16], atol=1e-5)  # the whole image, clipped to the crop
    # image 2: 1-based top-left (11, 6), 10 x 10 -> [10, 20] x [5, 15], 30 x 40 upright; y0 -1.75 is clipped to 0
    np.testing.assert_allclose(boxes[1], [10 * 20 / 30 - 2, 0, 20 * 20 / 30 - 2, 15 * 26 / 40 - 5], atol=1e-5)

    # views follow their items
    both = build_splits("cub200", root=tmp_path, image_size=16, augmentation=Augmentation(eval_resize_ratio=1.25),
                        val_fraction=0.0).train
    flipped = both.select_classes([0])
    np.testing.assert_array_equal(flipped.keypoints(), kp)
    np.testing.assert_array_equal(both.eval_view().keypoints(), kp)
    np.testing.assert_array_equal(both.with_transform(None).part_boxes(), boxes)
    reordered = copy.copy(both)
    reordered.items = both.items[::-1]
    np.testing.assert_array_equal(reordered.keypoints(), kp[::-1])


def test_cub_without_parts_has_no_part_names_and_boxes_alone_work(tmp_path):
    _write_cub(tmp_path, parts=None)
    splits = build_splits("cub200", root=tmp_path, image_size=16, augmentation=Augmentation(eval_resize_ratio=1.25))
    assert splits.train.part_names is None
    with pytest.raises(ValueError, match="no part annotations"):
        splits.train.keypoints()
    assert splits.test.part_boxes().shape == (2, 4)
    plain = tmp_path / "plain"
    _write_cub(plain, parts=None, boxes=None)
    splits = build_splits("cub200", root=plain, image_size=16)
    assert splits.test.part_names is None and splits.test.part_boxes() is None
    x, y = splits.train[0]
    assert x.shape == (3, 16, 16)


def _error(build):
    with pytest.raises(ValueError) as info:
        build()
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("bad,line,words", [
    ("7 1 3 3 1", 9, "unknown image id '7'"),
    ("2 1 3 3", 9, "expected 5 fields, got 4"),
    ("2 1 3 3 1 12.5", 9, "expected 5 fields, got 6"),
    ("2 1 three 3 1", 9, "x 'three' is not a finite number"),
    ("4 9 3 3 1", 9, "unknown part id '9'"),
    ("4 1 3 3 2", 9, "visible '2' is not 0 or 1"),
    ("1 1 5 5 1", 9, "duplicate"),
    ("4 1.5 3 3 1", 9, "part id '1.5' is not an integer"),
])
def test_bad_part_locs_are_refused_at_load_with_file_and_line(tmp_path, bad, line, words):
    _write_cub(tmp_path, locs=LOCS + [bad])
    message = _error(lambda: build_splits("cub200", root=tmp_path, image_size=16))
    assert f"part_locs.txt' line {line}:" in message
    assert any(w in message for w in words.split("|")), message
    assert "docs/DATASETS.md" in message


@pytest.mark.parametrize("bad,words", [("4 1 45.0 3 1", "outside image"), ("4 3 -1 1 1", "outside image")])
def test_a_visible_point_outside_its_image_is_refused_when_the_sizes_are_read(tmp_path, bad, words):
    _write_cub(tmp_path, locs=LOCS + [bad])  # image 4 is 30 x 40: x up to 30.5 (1-based, half a pixel) is allowed
    splits = build_splits("cub200", root=tmp_path, image_size=16)
    splits.train.keypoints()  # the train images are fine
    message = _error(splits.test.keypoints)
    assert "part_locs.txt' line 9:" in message and words in message and "img_4.jpg" in message
    assert "(30 x 40 pixels)" in message


def test_points_on_the_border_pixel_are_accepted(tmp_path):
    _write_cub(tmp_path, locs=LOCS + ["4 1 30 40 1", "4 2 30.5 0.5 1"])
    assert build_splits("cub200", root=tmp_path, image_size=16).test.keypoints().shape == (2, 3, 3)


@pytest.mark.parametrize("parts,boxes,file,words", [
    ("1 back\n1 eye\n", BOXES, "parts.txt' line 2", "duplicate part id"),
    ("x back\n", BOXES, "parts.txt' line 1", "part id 'x' is not a finite number"),
    ("1 back\n2 eye (left)\n", BOXES, "parts.txt' line 2", "part name 'eye (left)' cannot name a metric"),
    (PARTS, BOXES[:3], "bounding_boxes.txt", "no box for 1 image(s), e.g. '101.White_Pelican/img_4.jpg'"),
    (PARTS, BOXES + ["2 1 1 5 5"], "bounding_boxes.txt' line 5", "duplicate image"),
    (PARTS, BOXES[:3] + ["4 1 1 0 5"], "bounding_boxes.txt' line 4", "no area"),
    (PARTS, BOXES[:3] + ["9 1 1 3 5"], "bounding_boxes.txt' line 4", "unknown image id '9'"),
])
def test_bad_part_names_and_boxes_are_refused(tmp_path, parts, boxes, file, words):
    _write_cub(tmp_path, parts=parts, boxes=boxes, locs=[])
    message = _error(lambda: build_splits("cub200", root=tmp_path, image_size=16))
    assert file in message and words in message, message


def test_a_missing_part_locs_file_is_named(tmp_path):
    base = _write_cub(tmp_path)
    (base / "parts" / "part_locs.txt").unlink()
    with pytest.raises(FileNotFoundError, match="part_locs.txt' is missing"):
        build_splits("cub200", root=tmp_path)


# --- the folder sidecar ------------------------------------------------------------------------------------------

def _write_folder(root, given_split: bool, parts: list[str], boxes: list[str] | None = None):
    layout = {"train/ant": 2, "test/bee": 2} if given_split else {"ant": 2, "bee": 2}
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True)
        for j in range(n):
            Image.new("RGB", (40, 30), (10, 20, 30)).save(root / folder / f"{j}.png")
    (root / "parts.csv").write_text("image,part,x,y,visible\n" + "\n".join(parts) + "\n")
    if boxes is not None:
        (root / "boxes.csv").write_text("image,x0,y0,x1,y1\n" + "\n".join(boxes) + "\n")


@pytest.mark.parametrize("given_split", [True, False])
def test_folder_sidecar_gives_keypoints_and_boxes(tmp_path, given_split):
    pre = ("train/", "test/") if given_split else ("", "")
    parts = [f"{pre[0]}ant/1.png,head,10.5,6.5,1", f"{pre[0]}ant/0.png,tail,0,0,0",
             f'"{pre[1]}bee/0.png",head,20,15,1', f"{pre[1]}bee/0.png,tail,39.9,15,1"]
    boxes = [f"{pre[0]}ant/0.png,0,0,40,30", f"{pre[0]}ant/1.png,10,5,20,15", f"{pre[1]}bee/0.png,1,1,2,2",
             f"{pre[1]}bee/1.png,0,0,40,30"]
    _write_folder(tmp_path, given_split, parts, boxes)
    splits = build_splits("folder", root=tmp_path, image_size=16, augmentation=Augmentation(eval_resize_ratio=1.25),
                          test_fraction=0.5, seed=0)
    ant = splits.train if "ant" in splits.train.class_names else splits.test
    bee = splits.test if ant is splits.train else splits.train
    assert ant.part_names == ["head", "tail"]
    kp = ant.keypoints()  # ant/0.png: nothing visible; ant/1.png: head at 0-based continuous (10.5, 6.5)
    np.testing.assert_allclose(kp, [[[0, 0, 0], [0, 0, 0]], [[*_crop((10.5, 6.5), (40, 30)), 1], [0, 0, 0]]],
                               atol=1e-5)
    kb = bee.keypoints()  # bee/0.png: tail at x 39.9 -> 20.9 leaves the crop
    np.testing.assert_allclose(kb[0], [[*_crop((20, 15), (40, 30)), 1], [0, 0, 0]], atol=1e-5)
    np.testing.assert_allclose(ant.part_boxes()[1], [*_crop((10, 5), (40, 30)), *_crop((20, 15), (40, 30))],
                               atol=1e-5)


@pytest.mark.parametrize("row,line,words", [
    ("ant/9.png,head,1,1,1", 3, "unknown image 'ant/9.png'"),
    ("ant/0.png,head,1,1", 3, "expected 5 fields, got 4"),
    ("ant/0.png,head,1,y,1", 3, "y 'y' is not a finite number"),
    ("ant/0.png,head,1,1,yes", 3, "visible 'yes' is not a finite number"),
    ("ant/1.png,head,1,1,1", 3, "duplicate"),
    ("ant/0.png,Left Eye (L),1,1,1", 3, "part name 'Left Eye (L)' cannot name a metric"),
])
def test_bad_folder_sidecar_rows_are_refused(tmp_path, row, line, words):
    _write_folder(tmp_path, False, ["ant/1.png,head,1,1,1", row])
    message = _error(lambda: build_splits("folder", root=tmp_path, image_size=16))
    assert f"parts.csv' line {line}:" in message and words in message, message


def test_folder_sidecar_needs_its_header_and_checks_points_against_the_image(tmp_path):
    _write_folder(tmp_path, False, ["ant/1.png,head,1,1,1"])
    (tmp_path / "parts.csv").write_text("img,part,x,y,visible\nant/1.png,head,1,1,1\n")
    assert "line 1: the header must be" in _error(lambda: build_splits("folder", root=tmp_path, image_size=16))
    (tmp_path / "parts.csv").write_text("image,part,x,y,visible\nant/1.png,head,40.5,1,1\n")
    splits = build_splits("folder", root=tmp_path, image_size=16, test_fraction=0.5)
    ant = splits.train if "ant" in splits.train.class_names else splits.test
    message = _error(ant.keypoints)
    assert "parts.csv' line 2:" in message and "outside image 'ant/1.png' (40 x 30 pixels)" in message
