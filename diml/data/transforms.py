"""Image transforms, with the authors' augmentation as the default (Roth et al.'s DML code base, reused by DIML).

Train: ``RandomResizedCrop(S, scale, ratio)`` + horizontal flip; eval: ``Resize(round(S * resize_ratio))`` +
``CenterCrop(S)`` (``resize_ratio = 256 / 224``); both end with ``ToTensor`` and ImageNet normalisation, giving
``(3, S, S)`` float tensors. :class:`Augmentation` holds every parameter; data where a mirror image or a corner crop
is another class (text, digits, documents, parts in a fixed order) needs ``flip=False`` and a milder
``crop_scale`` (e.g. ``(0.8, 1.0)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torchvision import transforms as T

from diml.models.backbones import IMAGENET_MEAN, IMAGENET_STD
DEFAULT_CROP_SCALE = (0.08, 1.0)
DEFAULT_CROP_RATIO = (3 / 4, 4 / 3)
DEFAULT_RESIZE_RATIO = 256 / 224


@dataclass(frozen=True)
class Augmentation:
    """Augmentation parameters; the defaults are the authors'.

    ``crop_scale``: area range of ``RandomResizedCrop`` (``0 < low <= high <= 1``; ``None``: the dataset's default,
    chosen by :func:`diml.data.build_splits`, the authors' ``(0.08, 1)`` elsewhere); ``crop_ratio``: its aspect
    ratio range (``0 < low <= high``); ``flip``: random horizontal flip with probability 0.5; ``random_crop``:
    ``False`` replaces the random crop by the eval geometry (resize + centre crop) in training too;
    ``eval_resize_ratio``: the eval transform resizes the short side to ``round(S * eval_resize_ratio)``
    (``>= 1``) before the centre crop ``S``.
    """

    crop_scale: tuple[float, float] | None = DEFAULT_CROP_SCALE
    crop_ratio: tuple[float, float] = DEFAULT_CROP_RATIO
    flip: bool = True
    random_crop: bool = True
    eval_resize_ratio: float = DEFAULT_RESIZE_RATIO

    def __post_init__(self) -> None:
        lo, hi = _pair("crop_scale", DEFAULT_CROP_SCALE if self.crop_scale is None else self.crop_scale)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale!r}")
        lo, hi = _pair("crop_ratio", self.crop_ratio)
        if not 0.0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio!r}")
        for name in ("flip", "random_crop"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        ratio = self.eval_resize_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
            raise ValueError(f"eval_resize_ratio must be a number >= 1 (the authors: 256/224), got {ratio!r}")


def _pair(name: str, value) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise ValueError(f"{name} must be two finite numbers [low, high], got {value!r}")
    return float(value[0]), float(value[1])


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")


def _normalise() -> list:
    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(image_size: int = 224, *, crop_scale: tuple[float, float] | None = None,
                    augmentation: Augmentation | None = None) -> T.Compose:
    """``PIL.Image -> (3, S, S)``: ``RandomResizedCrop(S, scale, ratio)``, flip, ImageNet normalisation.

    ``augmentation`` defaults to the authors' :class:`Augmentation`; ``crop_scale`` (kept for callers that only
    change the crop area) replaces its ``crop_scale``.
    """
    _check_size(image_size)
    aug = augmentation if augmentation is not None else Augmentation()
    scale = crop_scale if crop_scale is not None else aug.crop_scale
    scale = tuple(scale) if scale is not None else DEFAULT_CROP_SCALE
    Augmentation(scale, aug.crop_ratio, aug.flip, aug.random_crop, aug.eval_resize_ratio)  # checks crop_scale
    if aug.random_crop:
        steps = [T.RandomResizedCrop(image_size, scale=scale, ratio=tuple(aug.crop_ratio))]
    else:
        steps = [T.Resize(round(image_size * aug.eval_resize_ratio)), T.CenterCrop(image_size)]
    if aug.flip:
        steps.append(T.RandomHorizontalFlip(0.5))
    return T.Compose(steps + _normalise())


def eval_transform(image_size: int = 224, *, augmentation: Augmentation | None = None) -> T.Compose:
    """``PIL.Image -> (3, S, S)``: ``Resize(round(S * eval_resize_ratio))``, ``CenterCrop(S)``, normalisation."""
    _check_size(image_size)
    aug = augmentation if augmentation is not None else Augmentation()
    return T.Compose([T.Resize(round(image_size * aug.eval_resize_ratio)), T.CenterCrop(image_size)] + _normalise())
