"""Augmentation parameters: the authors' defaults, each switch observable on real pixels, validation messages."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from diml.data import Augmentation, build_splits, eval_transform, train_transform


def _steps(transform):
    return [type(step).__name__ for step in transform.transforms]


def test_defaults_are_the_authors():
    aug = Augmentation()
    assert aug.crop_scale == (0.08, 1.0) and aug.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert aug.flip and aug.random_crop and aug.eval_resize_ratio == pytest.approx(256 / 224)
    crop = train_transform(224).transforms[0]
    assert isinstance(crop, T.RandomResizedCrop) and crop.scale == (0.08, 1.0)
    assert _steps(train_transform(224)) == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    resize = eval_transform(224).transforms[0]
    assert _steps(eval_transform(224))[:2] == ["Resize", "CenterCrop"] and resize.size == 256


def _asymmetric_image():
    """Left half white, right half black: a flip or a crop shows in the pixels."""
    pixels = np.zeros((40, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255
    return Image.fromarray(pixels)


def test_flip_off_and_no_random_crop_give_the_eval_geometry_every_time():
    aug = Augmentation(flip=False, random_crop=False, eval_resize_ratio=1.0)
    image = _asymmetric_image()
    train = train_transform(32, augmentation=aug)
    expected = eval_transform(32, augmentation=aug)(image)
    for _ in range(10):
        torch.testing.assert_close(train(image), expected)
    assert expected[0, :, :16].mean() > expected[0, :, 16:].mean()  # left stays bright: no flip


def test_flip_on_mirrors_some_draws():
    torch.manual_seed(0)
    aug = Augmentation(random_crop=False, eval_resize_ratio=1.0)
    image = _asymmetric_image()
    train = train_transform(32, augmentation=aug)
    left_bright = [bool(x[0, :, :16].mean() > x[0, :, 16:].mean()) for x in (train(image) for _ in range(20))]
    assert any(left_bright) and not all(left_bright)


def test_eval_resize_ratio_sets_the_resize_before_the_crop():
    assert eval_transform(100, augmentation=Augmentation(eval_resize_ratio=1.5)).transforms[0].size == 150


@pytest.mark.parametrize("kwargs, message", [
    ({"crop_scale": (0.5, 0.2)}, "crop_scale must satisfy"),
    ({"crop_scale": (0.0, 1.0)}, "crop_scale must satisfy"),
    ({"crop_ratio": (2.0, 1.0)}, "crop_ratio must satisfy"),
    ({"crop_ratio": (1.0,)}, "crop_ratio must be two finite numbers"),
    ({"flip": 1}, "flip must be true or false"),
    ({"eval_resize_ratio": 0.9}, "eval_resize_ratio must be a number >= 1"),
])
def test_invalid_parameters_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Augmentation(**kwargs)


def test_build_splits_uses_the_augmentation():
    aug = Augmentation(crop_scale=(0.8, 1.0), flip=False)
    splits = build_splits("synthetic", image_size=32, augmentation=aug, num_classes=4, images_per_class=2)
    crop = splits.train.transform.transforms[0]
    assert crop.scale == (0.8, 1.0) and "RandomHorizontalFlip" not in _steps(splits.train.transform)
    default = build_splits("synthetic", image_size=32, num_classes=4, images_per_class=2)
    assert default.train.transform.transforms[0].scale == (0.5, 1.0)  # the synthetic data's milder default


def test_no_crop_scale_means_the_datasets_default():
    aug = Augmentation(crop_scale=None, flip=False)
    assert train_transform(32, augmentation=aug).transforms[0].scale == (0.08, 1.0)
    splits = build_splits("synthetic", image_size=32, augmentation=aug, num_classes=4, images_per_class=2)
    assert splits.train.transform.transforms[0].scale == (0.5, 1.0)
    assert "RandomHorizontalFlip" not in _steps(splits.train.transform)
