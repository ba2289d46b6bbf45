"""Worker-side transforms that return uint8 crops: decode and crop geometry on the CPU, no float work there.

The float transforms of :mod:`diml.data.transforms` end in ``ToTensor`` + ``Normalize`` per image and ship
``(3, S, S)`` float32 tensors (600 KB at 224 px) from the loader workers; these ship ``(S, S, 3)`` uint8 crops
(150 KB) and leave the flip and the normalisation to :class:`diml.data.device_input.DeviceAugment`, one batched
operation on the device (issue 26).

Same augmentation, draw for draw: :class:`Uint8TrainTransform` takes its crop box from
``torchvision.transforms.RandomResizedCrop.get_params`` and its flip from ``torch.rand(1) < 0.5`` as
``RandomHorizontalFlip`` does, in the same order, so for the same torch random state it draws the crop boxes and
flips of ``train_transform`` (:mod:`diml.data.transforms`). The resize is torch's uint8 bilinear with antialiasing
(vectorised, 0.16 vs 0.70 ms for Pillow's at 224 px here), which matches Pillow's ``BILINEAR`` (what the float path uses on
PIL images) within one grey level; decoding is exact (:func:`decode_file`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as nnf
from torchvision import transforms as T

from diml.data.transforms import DEFAULT_CROP_SCALE, Augmentation, _check_size

try:  # libjpeg-turbo without Pillow's per-image overhead: the same pixels as Pillow, about 15 % faster here
    import simplejpeg
except ImportError:  # pragma: no cover - exercised where simplejpeg is not installed
    simplejpeg = None

JPEG_SUFFIXES = (".jpg", ".jpeg")


class PixelCrops(NamedTuple):
    """uint8 crops and their flip decisions: one sample (``pixels (S, S, 3)``, ``flip`` a bool) or, after the
    DataLoader's collate, a batch (``pixels (B, S, S, 3)``, ``flip (B,)`` bool tensor). Channels last: the batch
    permuted to ``(B, 3, S, S)`` is a channels-last tensor without a copy."""

    pixels: torch.Tensor
    flip: bool | torch.Tensor


def decode_file(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB pixels of an image file.

    JPEG files go through ``simplejpeg`` when it is installed (libjpeg-turbo with Pillow's settings: accurate DCT,
    fancy upsampling, so the same pixels as ``Image.open(path).convert("RGB")``); anything else, and any JPEG it
    declines (CMYK), through Pillow (:func:`diml.data.files.read_image`, whose errors name the file and the fix).
    """
    from diml.data.files import read_image

    if simplejpeg is not None and str(path).lower().endswith(JPEG_SUFFIXES):
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return np.asarray(read_image(Path(path)))  # raises the missing-file error
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:
            pass  # CMYK, corrupt...: Pillow decides, and names the problem
    return np.array(read_image(Path(path)))


def as_pixels(image) -> np.ndarray:
    """``(H, W, 3)`` uint8 of a PIL image (converted to RGB) or of an ``(H, W, 3)`` uint8 array."""
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))  # a copy: Pillow's buffer is read-only
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 pixels or a PIL image, got {array.dtype} {array.shape}")
    return array


def _chw(pixels: np.ndarray) -> torch.Tensor:
    """``(3, H, W)`` view of ``(H, W, 3)`` pixels (channels-last strides, no copy)."""
    return torch.from_numpy(pixels).permute(2, 0, 1)


def resize_uint8(chw: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize with antialiasing of ``chw (3, h, w)`` uint8 to ``(3, height, width)`` uint8 (torch's
    vectorised uint8 kernel; within one grey level of Pillow's ``BILINEAR``)."""
    if chw.shape[-2:] == (height, width):
        return chw
    # the vectorised uint8 kernel needs channels-last contiguous input (a crop of an image is a strided window):
    # copying the window first (0.03 ms) takes a 224 px resize from 0.28 to 0.16 ms and gives channels-last output
    batch = chw[None].contiguous(memory_format=torch.channels_last)
    return nnf.interpolate(batch, size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


def resized_short_side(height: int, width: int, size: int) -> tuple[int, int]:
    """Output ``(height, width)`` of ``torchvision.transforms.Resize(size)``: the short side becomes ``size``, the
    long side ``int(size * long / short)`` (torchvision's ``_compute_resized_output_size``)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def centre_crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    """``(top, left)`` of torchvision's ``CenterCrop(size)`` on an image at least ``size`` on each side."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def eval_geometry(chw: torch.Tensor, image_size: int, resize_ratio: float) -> torch.Tensor:
    """``Resize(round(S * resize_ratio))`` + ``CenterCrop(S)`` of ``chw (3, H, W)`` uint8 -> ``(3, S, S)``."""
    height, width = resized_short_side(chw.shape[1], chw.shape[2], round(image_size * resize_ratio))
    resized = resize_uint8(chw, height, width)
    top, left = centre_crop_box(height, width, image_size)
    return resized[:, top:top + image_size, left:left + image_size]


def _sample(chw: torch.Tensor, flip: bool) -> PixelCrops:
    return PixelCrops(chw.permute(1, 2, 0).contiguous(), flip)  # a channels-last crop: no copy


class Uint8TrainTransform:
    """``PIL image | (H, W, 3) uint8 -> PixelCrops((S, S, 3) uint8, flip)``: the training augmentation of
    :func:`diml.data.transforms.train_transform` without its float steps; the flip is drawn here and applied by
    :class:`diml.data.device_input.DeviceAugment`.

    ``reads_pixels``: :class:`diml.data.base.SplitDataset` hands it decoded pixels (``load_pixels``), not a PIL image.
    """

    reads_pixels = True

    def __init__(self, image_size: int = 224, *, augmentation: Augmentation | None = None) -> None:
        _check_size(image_size)
        aug = augmentation if augmentation is not None else Augmentation()
        scale = tuple(aug.crop_scale) if aug.crop_scale is not None else DEFAULT_CROP_SCALE
        self.augmentation = Augmentation(scale, tuple(aug.crop_ratio), aug.flip, aug.random_crop,
                                         aug.eval_resize_ratio)
        self.image_size = image_size

    def __call__(self, image) -> PixelCrops:
        aug, size = self.augmentation, self.image_size
        chw = _chw(as_pixels(image))
        if aug.random_crop:  # the same draws as torchvision's RandomResizedCrop, in the same order
            top, left, height, width = T.RandomResizedCrop.get_params(chw, list(aug.crop_scale),
                                                                      list(aug.crop_ratio))
            crop = resize_uint8(chw[:, top:top + height, left:left + width], size, size)
        else:
            crop = eval_geometry(chw, size, aug.eval_resize_ratio)
        flip = bool(torch.rand(1) < 0.5) if aug.flip else False  # RandomHorizontalFlip(0.5)'s draw
        return _sample(crop, flip)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size}, augmentation={self.augmentation})"


class Uint8EvalTransform:
    """``PIL image | (H, W, 3) uint8 -> PixelCrops((S, S, 3) uint8, flip=False)``: the geometry of
    :func:`diml.data.transforms.eval_transform` (resize the short side, centre crop), normalised on the device."""

    reads_pixels = True

    def __init__(self, image_size: int = 224, *, augmentation: Augmentation | None = None) -> None:
        _check_size(image_size)
        self.image_size = image_size
        self.resize_ratio = (augmentation if augmentation is not None else Augmentation()).eval_resize_ratio

    def __call__(self, image) -> PixelCrops:
        return _sample(eval_geometry(_chw(as_pixels(image)), self.image_size, self.resize_ratio), False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size}, resize_ratio={self.resize_ratio})"
