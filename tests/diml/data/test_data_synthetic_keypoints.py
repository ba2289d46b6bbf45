"""The synthetic data's part keypoints: the pixels are unchanged by factoring the drawing, the keypoints are derived
without rendering, and the eval image really shows the part's colour at each visible keypoint."""

import hashlib

import numpy as np
import pytest
import torch

from diml.data import Augmentation, SyntheticParts, build_splits
from diml.data.synthetic import PALETTE, SHAPES

# sha256 of the rendered images of classes (0, 1, 5, 23, 40) x indices (0, 1, 7), taken before the drawing was
# factored into _layout (commit 30039cd): the pixels must never change.
DIGESTS = [
    (dict(seed=0, image_size=64), "1092244a25e7a075520a1ff5a21167df8d836264d3f2048a4db9ded30bad570f"),
    (dict(seed=3, image_size=224), "10e3979f37ed49e8489751795b8ecd8e48b5b7b6d88f67a51735d0367a8b4d03"),
    (dict(seed=1, image_size=37, parts_per_class=6, distractors=(0, 5)),
     "7a793957f752c5ca34ea095256dc4e3c8f326d00316b11fddc8f53dd8f04b67d"),
    (dict(seed=2, image_size=48, parts_per_class=1, distractors=(0, 0)),
     "bc6035d2212a573f33a341d556acfd52a67f1612ec847a8671a56c9b30fcd8ed"),
]


@pytest.mark.parametrize("options,digest", DIGESTS)
def test_rendered_pixels_are_those_of_before_the_refactor(options, digest):
    gen = SyntheticParts(**options)
    h = hashlib.sha256()
    for c in (0, 1, 5, 23, 40):
        for i in (0, 1, 7):
            h.update(gen.render(c, i).tobytes())
    assert h.hexdigest() == digest


def test_the_layout_without_pixels_draws_the_same_parts(monkeypatch):
    gen = SyntheticParts(seed=4, image_size=40, parts_per_class=4, distractors=(0, 4))
    for c, i in [(0, 0), (3, 5), (11, 2)]:
        canvas, distractors, parts = gen._layout(c, i)
        none, distractors2, parts2 = gen._layout(c, i, pixels=False)
        assert canvas is not None and none is None
        for (a, ca), (b, cb) in zip(distractors + parts, distractors2 + parts2, strict=True):
            assert a == b and np.array_equal(ca, cb)
    # keypoints never render an image
    monkeypatch.setattr("diml.data.synthetic.draw_part", lambda *a: pytest.fail("keypoints drew an image"))
    splits = build_splits("synthetic", image_size=40, num_classes=4, images_per_class=3)
    assert splits.test.keypoints().shape == (6, 3, 3)


def _eval_pixels(split, i):
    """The eval image ``i`` as (S, S, 3) floats in [0, 1] (normalisation undone)."""
    x, _ = split.eval_view()[i]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (x * std[:, None, None] + mean[:, None, None]).permute(1, 2, 0).numpy()


def _looks_like(pixel, colour):
    """The pixel is the palette colour times a brightness (texture 0.35-1, noise 0.85-1.1 per channel)."""
    return float(pixel @ colour / (np.linalg.norm(pixel) * np.linalg.norm(colour) + 1e-9)) > 0.97


def test_the_eval_image_shows_the_part_at_its_keypoint():
    splits = build_splits("synthetic", image_size=64, seed=5, num_classes=12, images_per_class=6,
                          augmentation=Augmentation(eval_resize_ratio=1.3))
    checked = control_hits = controls = 0
    for split in (splits.train, splits.test):
        kp = split.keypoints()
        assert split.part_names == ["part_0", "part_1", "part_2"]
        assert kp.shape == (len(split), 3, 3) and kp.dtype == np.float32
        assert 0.8 < kp[..., 2].mean() <= 1.0
        boxes = split.part_boxes()
        assert boxes.shape == (len(split), 4) and np.all(boxes[:, :2] < boxes[:, 2:])
        for i in range(len(split)):
            class_id, _ = split.items[i]
            parts = split.generator.class_parts(class_id)
            pixels = _eval_pixels(split, i)
            for k, (x, y, visible) in enumerate(kp[i]):
                if not visible:
                    assert x == y == 0
                    continue
                assert boxes[i, 0] <= x <= boxes[i, 2] and boxes[i, 1] <= y <= boxes[i, 3]
                part = parts[k]
                if SHAPES[part.shape] == "ring" or part.colour == len(PALETTE) - 1:
                    continue  # a ring's centre is its hole; white is too close to the grey background's direction
                pixel = pixels[int(y), int(x)]
                assert _looks_like(pixel, PALETTE[part.colour]), (split.image_id(i), k, pixel, part)
                checked += 1
                other = parts[(k + 1) % 3]  # the control: another part's colour is (nearly always) not there
                if other.colour not in (part.colour, len(PALETTE) - 1):
                    controls += 1
                    control_hits += _looks_like(pixel, PALETTE[other.colour])
    assert checked > 80 and control_hits < 0.15 * controls


def test_a_part_under_a_later_part_is_invisible():
    gen = SyntheticParts(seed=0, image_size=64, parts_per_class=6)  # six parts crowd the canvas: some overlap
    covered = 0
    for c in range(12):
        for i in range(4):
            centres, visible, _ = gen.part_centres(c, i)
            _, _, parts = gen._layout(c, i, pixels=False)
            image = gen.render(c, i).astype(float) / 255
            for k in np.flatnonzero(~visible):
                if not np.all((centres[k] >= 0) & (centres[k] < 64)):
                    continue
                covered += 1
                # the pixel shows a later part's colour, not this part's (unless they share the colour)
                later = {p.colour for p, _ in parts[k + 1:]}
                pixel = image[int(centres[k, 1]), int(centres[k, 0])]
                mine = parts[k][0].colour
                if mine not in later and SHAPES[parts[k][0].shape] != "ring":
                    assert not _looks_like(pixel, PALETTE[mine]) or mine == len(PALETTE) - 1
    assert covered > 0
