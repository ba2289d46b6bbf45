"""Image transforms as the authors use them (Roth et al.'s DML code base, reused by DIML).

Train: ``RandomResizedCrop(S)`` + horizontal flip; eval: ``Resize(S * 256 / 224)`` + ``CenterCrop(S)``; both end with
``ToTensor`` and ImageNet normalisation, giving ``(3, S, S)`` float tensors.
"""

from __future__ import annotations

from torchvision import transforms as T

from diml.models.backbones import IMAGENET_MEAN, IMAGENET_STD
DEFAULT_CROP_SCALE = (0.08, 1.0)


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")


def train_transform(image_size: int = 224, *, crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE) -> T.Compose:
    """``PIL.Image -> (3, S, S)``: ``RandomResizedCrop(S, scale=crop_scale)``, flip, ImageNet normalisation."""
    _check_size(image_size)
    lo, hi = crop_scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale!r}")
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(lo, hi)),
        T.RandomHorizontalFlip(0.5),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform(image_size: int = 224) -> T.Compose:
    """``PIL.Image -> (3, S, S)``: ``Resize(round(S * 256 / 224))``, ``CenterCrop(S)``, ImageNet normalisation."""
    _check_size(image_size)
    return T.Compose([
        T.Resize(round(image_size * 256 / 224)),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
