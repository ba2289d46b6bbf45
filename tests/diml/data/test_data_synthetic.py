"""The synthetic parts dataset: deterministic by (seed, class, index), class-disjoint splits, real drawing."""

import numpy as np
import pytest
import torch

from diml.data import SyntheticParts, build_splits
from diml.data.synthetic import PALETTE, SHAPES, Part, draw_part


def test_image_depends_only_on_seed_class_and_index():
    a = SyntheticParts(seed=7, image_size=32)
    b = SyntheticParts(seed=7, image_size=32)
    later = [b.render(c, i) for c, i in [(9, 3), (1, 0)]]  # other order, other instance
    assert np.array_equal(a.render(1, 0), later[1]) and np.array_equal(a.render(9, 3), later[0])
    assert not np.array_equal(a.render(1, 0), a.render(1, 1))  # images of a class differ (jitter, clutter)
    assert not np.array_equal(a.render(1, 0), SyntheticParts(seed=8, image_size=32).render(1, 0))
    assert a.render(1, 0).shape == (32, 32, 3) and a.render(1, 0).dtype == np.uint8


def test_splits_are_class_disjoint_and_deterministic():
    s1 = build_splits("synthetic", image_size=24, seed=2, num_classes=10, images_per_class=3, val_fraction=0.2)
    s2 = build_splits("synthetic", image_size=24, seed=2, num_classes=10, images_per_class=3, val_fraction=0.2)
    names = [set(s.class_names) for s in s1]
    assert names[0].isdisjoint(names[1]) and names[0].isdisjoint(names[2]) and names[1].isdisjoint(names[2])
    assert names[0] | names[1] == {f"class_{c:03d}" for c in range(5)}  # first half: train (+ val)
    assert names[2] == {f"class_{c:03d}" for c in range(5, 10)}  # second half: test
    assert (s1.train.num_classes, s1.val.num_classes, s1.test.num_classes) == (4, 1, 5)
    for split in (s1.train, s1.val, s1.test):
        assert np.array_equal(np.bincount(split.labels), np.full(split.num_classes, 3))
    for i in (0, 7):
        assert s1.test.image_id(i) == s2.test.image_id(i)
        assert np.array_equal(np.asarray(s1.test.load_image(i)), np.asarray(s2.test.load_image(i)))
        x1, y1 = s1.test[i]
        x2, y2 = s2.test[i]
        assert torch.equal(x1, x2) and y1 == y2 and x1.shape == (3, 24, 24)
    # the same class and index give the same pixels whichever split and val_fraction they land in
    s3 = build_splits("synthetic", image_size=24, seed=2, num_classes=10, images_per_class=3)
    j = [s3.train.image_id(k) for k in range(len(s3.train))].index(s1.val.image_id(0))
    assert np.array_equal(np.asarray(s3.train.load_image(j)), np.asarray(s1.val.load_image(0)))


def test_defaults_give_at_least_40_classes_and_half_for_training():
    splits = build_splits("synthetic", image_size=16)
    assert splits.train.num_classes + splits.test.num_classes >= 40
    assert splits.train.num_classes == splits.test.num_classes
    assert len(splits.train) == splits.train.num_classes * 24


def test_classes_have_distinct_parts_spread_apart():
    gen = SyntheticParts(seed=0, image_size=64)
    signatures = set()
    for c in range(48):
        parts = gen.class_parts(c)
        assert len(parts) == 3 and len({(p.shape, p.colour, p.texture) for p in parts}) == 3
        for p in parts:
            assert 0.25 <= p.x <= 0.75 and 0.25 <= p.y <= 0.75
        signatures.add(tuple(sorted((p.shape, p.colour, p.texture) for p in parts)))
    assert len(signatures) == 48


@pytest.mark.parametrize("shape,area", [("circle", np.pi), ("square", 1.7 ** 2), ("ring", np.pi * (1 - 0.3)),
                                        ("diamond", 2 * 1.15 ** 2)])
def test_draw_part_paints_the_shape_area(shape, area):
    size, radius = 200, 0.1
    canvas = np.zeros((size, size, 3))
    colour = PALETTE[1]
    draw_part(canvas, Part(SHAPES.index(shape), 1, 0, 0.5, 0.5, radius), colour)
    painted = np.all(np.isclose(canvas, colour), axis=2)
    expected = area * (radius * size) ** 2
    assert abs(painted.sum() - expected) / expected < 0.03
    ys, xs = np.nonzero(painted)
    assert abs(ys.mean() - size / 2) < 1 and abs(xs.mean() - size / 2) < 1


def test_part_clipped_at_the_border_and_generation_options():
    canvas = np.zeros((20, 20, 3))
    draw_part(canvas, Part(0, 0, 0, 0.0, 0.0, 0.2), PALETTE[0])  # centred on the corner: a quarter circle
    assert 0 < np.all(canvas > 0, axis=2).sum() < 0.3 * np.pi * 16
    with pytest.raises(ValueError, match="parts_per_class"):
        SyntheticParts(parts_per_class=9)
    with pytest.raises(ValueError, match="distractors"):
        SyntheticParts(distractors=(3, 1))
    with pytest.raises(ValueError, match="images_per_class must be >= 2"):
        build_splits("synthetic", images_per_class=1)
