"""Images for explanations: opening files, the model input, the displayed crop, and embedding a few images.

The model sees ``eval_transform(S)``: ``Resize(round(S * r))`` then ``CenterCrop(S)``, with the run's
``data.augmentation.eval_resize_ratio`` ``r`` (256 / 224 by default; checkpoints record it). The figures show the
same crop (computed at a display resolution of their own, with the same ``r``), so the drawn grid covers exactly what
the cells saw.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T
from tqdm.auto import tqdm

from diml.data.transforms import DEFAULT_RESIZE_RATIO, Augmentation, eval_transform
from diml.distributed import unwrap_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
DISPLAY_SIZE = 160


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as an RGB image; ``FileNotFoundError`` / ``ValueError`` name the path when it cannot be read."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist; pass the path of an image file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"image {path} cannot be read as an image ({error}); pass a JPEG/PNG file") from None


def list_images(path: str | os.PathLike) -> list[pathlib.Path]:
    """``path`` itself if it is a file, else every image file below the folder ``path`` (recursively, sorted)."""
    path = pathlib.Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"gallery {path} does not exist; pass an image file or a folder of images")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"gallery folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                         "pass a folder with images")
    return files


def display_array(image: Image.Image | np.ndarray, size: int = DISPLAY_SIZE, *,
                  resize_ratio: float = DEFAULT_RESIZE_RATIO) -> np.ndarray:
    """The crop the model sees, for drawing: ``(size, size, 3)`` float in ``[0, 1]``.

    A PIL image gets the geometry of :func:`diml.data.eval_transform` (resize the short side to
    ``round(size * resize_ratio)``, centre crop ``size``); an ``(H, W, 3)`` array (uint8 or float in [0, 1]) is taken
    as already cropped and returned as float.
    """
    if isinstance(image, Image.Image):
        crop = T.CenterCrop(size)(T.Resize(round(size * _ratio(resize_ratio)))(image.convert("RGB")))
        return np.asarray(crop, dtype=np.float64) / 255.0
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image must be a PIL image or an (H, W, 3) array, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def _ratio(resize_ratio: float) -> float:
    """``resize_ratio`` checked as :class:`~diml.data.transforms.Augmentation` checks it (a number >= 1)."""
    return Augmentation(eval_resize_ratio=resize_ratio).eval_resize_ratio


def model_input(image: Image.Image | torch.Tensor, image_size: int, *,
                resize_ratio: float = DEFAULT_RESIZE_RATIO) -> torch.Tensor:
    """``(3, S, S)`` float model input: a PIL image through ``eval_transform(image_size)`` with ``resize_ratio``; a
    ``(3, H, W)`` tensor is taken as already transformed."""
    if isinstance(image, Image.Image):
        augmentation = Augmentation(eval_resize_ratio=resize_ratio)
        return eval_transform(image_size, augmentation=augmentation)(image.convert("RGB"))
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3:
        return image.float()
    raise ValueError(f"image must be a PIL image or a (3, H, W) tensor, got {type(image).__name__} "
                     f"{tuple(getattr(image, 'shape', ()))}")


def embed_images(
    model: torch.nn.Module,
    images: Sequence[Image.Image | torch.Tensor],
    *,
    image_size: int,
    resize_ratio: float = DEFAULT_RESIZE_RATIO,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed ``images`` with ``model`` in eval mode (its training mode is restored); PIL images go through the eval
    transform of ``image_size`` and ``resize_ratio`` (:func:`model_input`); ``progress`` shows a progress bar of the
    batches on stderr.

    Returns:
        ``(global_emb (N, D), local_emb (N, D, R))`` float32 on the CPU.
    """
    if not images:
        raise ValueError("images is empty; pass at least one image")
    module = unwrap_model(model)
    device = torch.device(device)
    was_training = module.training
    module.eval()
    globals_, locals_ = [], []
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(images), batch_size), desc="embedding", unit="batch", disable=not progress,
                              leave=False):
                batch = torch.stack([model_input(im, image_size, resize_ratio=resize_ratio)
                                     for im in images[start:start + batch_size]])
                out = module(batch.to(device))
                globals_.append(out.global_emb.float().cpu())
                locals_.append(out.local_emb.float().cpu())
    finally:
        module.train(was_training)
    return torch.cat(globals_), torch.cat(locals_)
