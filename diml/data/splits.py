"""``build_splits``: one entry point for every dataset (synthetic and the real on-disk formats)."""

from __future__ import annotations

import dataclasses
from typing import Callable

from diml.data.base import Splits, carve_validation, report_small_classes
from diml.data.transforms import DEFAULT_CROP_SCALE, Augmentation, eval_transform, train_transform

INPUT_FORMATS = ("float", "uint8")

# The synthetic images keep their parts away from the border; a milder crop keeps most parts in view, which makes
# the dataset learnable in a couple of short CPU epochs.
SYNTHETIC_CROP_SCALE = (0.5, 1.0)

# name -> loader(root, *, image_size, seed, train_transform, eval_transform, skip_bad_images, **options)
#   -> (train, test), both SplitDatasets with contiguous labels.
_LOADERS: dict[str, Callable] = {}


def register_dataset(name: str, loader: Callable) -> None:
    """Register a dataset loader under ``name``; an already registered name raises ``ValueError``."""
    if name in _LOADERS:
        raise ValueError(f"dataset {name!r} is already registered; choose another name")
    _LOADERS[name] = loader


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_splits`, sorted."""
    return sorted(_LOADERS)


def build_splits(dataset: str, *, root=None, image_size: int = 224, seed: int = 0, val_fraction: float = 0.0,
                 skip_bad_images: bool = False, crop_scale: tuple[float, float] | None = None,
                 augmentation: Augmentation | None = None, input_format: str = "float", **dataset_options) -> Splits:
    """Build ``Splits(train, val, test)`` for ``dataset`` in ``list_datasets()``.

    Train and test classes are disjoint (zero-shot retrieval). ``val_fraction > 0`` moves a seeded fraction of the
    training classes to a class-disjoint validation split (else ``val`` is ``None``). The train split uses the
    train transform of ``augmentation`` (default: the authors' :class:`~diml.data.transforms.Augmentation`,
    ``RandomResizedCrop(image_size, scale=(0.08, 1))`` + flip; an ``augmentation.crop_scale`` of ``None`` takes the
    dataset's default, ``(0.5, 1)`` for the synthetic data; ``crop_scale`` replaces the crop area of either),
    val/test the eval transform of ``augmentation``;
    ``splits.train.eval_view()`` gives the training images with the eval transform. ``dataset_options`` go to the
    dataset's loader (e.g. ``num_classes`` for synthetic, ``test_fraction`` for folder). Classes with fewer than
    two images in a split are reported with a warning.

    ``input_format``: ``"float"`` (each item a normalised ``(3, S, S)`` float tensor) or ``"uint8"`` (each item a
    :class:`~diml.data.pixels.PixelCrops` of ``(S, S, 3)`` uint8 and the flip drawn, for
    :func:`diml.data.device_input.device_batches` to normalise on the device; the same augmentation draws).
    """
    if dataset not in _LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(list_datasets())}")
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}")
    augmentation = augmentation if augmentation is not None else Augmentation(crop_scale=None)
    if augmentation.crop_scale is None:
        augmentation = dataclasses.replace(
            augmentation, crop_scale=SYNTHETIC_CROP_SCALE if dataset == "synthetic" else DEFAULT_CROP_SCALE)
    train_tf = train_transform(image_size, crop_scale=crop_scale, augmentation=augmentation)
    eval_tf = eval_transform(image_size, augmentation=augmentation)
    if input_format == "uint8":
        from diml.data.pixels import Uint8EvalTransform, Uint8TrainTransform

        scale = tuple(crop_scale) if crop_scale is not None else augmentation.crop_scale
        train_tf = Uint8TrainTransform(image_size, augmentation=dataclasses.replace(augmentation, crop_scale=scale))
        eval_tf = Uint8EvalTransform(image_size, augmentation=augmentation)
    train, test = _LOADERS[dataset](root, image_size=image_size, seed=seed, train_transform=train_tf,
                                    eval_transform=eval_tf, skip_bad_images=skip_bad_images, **dataset_options)
    for split in (train, test):  # before the validation views are made, so that they inherit it
        split.set_eval_geometry(image_size, augmentation.eval_resize_ratio)
    train, val = carve_validation(train, val_fraction, seed)
    for name, split in (("train", train), ("val", val), ("test", test)):
        if split is not None:
            report_small_classes(f"{dataset} {name}", split)
    return Splits(train, val, test)


def _synthetic(root, *, image_size, seed, train_transform, eval_transform, skip_bad_images, **options):
    from diml.data.synthetic import SYNTHETIC_OPTIONS, synthetic_splits

    unknown = sorted(set(options) - set(SYNTHETIC_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for dataset 'synthetic'; allowed: {list(SYNTHETIC_OPTIONS)}")
    if root is not None:
        raise ValueError("the synthetic dataset is generated on the fly: leave root unset (null)")
    return synthetic_splits(image_size=image_size, seed=seed, train_transform=train_transform,
                            eval_transform=eval_transform, **options)


register_dataset("synthetic", _synthetic)
