"""The dataset interface every split shares, and the class-disjoint carving of a validation split.

A split is a ``torch.utils.data.Dataset`` yielding ``(image (3, S, S) float, label int)`` with ``labels`` (``(N,)``
np.int64, contiguous ``0..C-1`` within the split), ``num_classes``, ``class_names``, ``load_image(i) -> PIL.Image``
(untransformed, for figures) and ``image_id(i) -> str`` (a stable name: a relative path, or ``synthetic/...``).
Splits with part annotations also give ``keypoints()`` and ``part_boxes()`` (:mod:`diml.data.keypoints`).
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable, NamedTuple, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from diml.data.keypoints import EvalGeometry, PartSource


class SplitDataset(Dataset):
    """Base class: ``items[i]`` describes image ``i`` (a path, a synthetic key...); subclasses implement
    :meth:`load_image` and :meth:`image_id` from it.

    ``labels``: ``(N,)`` int64 in ``0..C-1`` with every class present; ``class_names``: ``C`` strings.
    ``part_source``: the split's part annotations (shared by its views; ``None``: none), ``keypoint_geometry``: the
    eval transform's geometry (set by :func:`~diml.data.build_splits`); see :meth:`keypoints`.
    """

    part_source: PartSource | None = None
    keypoint_geometry: EvalGeometry | None = None

    def __init__(self, items: Sequence, labels, class_names: Sequence[str], transform: Callable | None,
                 eval_transform: Callable | None = None) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or len(labels) != len(items):
            raise ValueError(f"labels must be a 1-D array with one label per item, got shape {labels.shape} "
                             f"for {len(items)} items")
        present = np.unique(labels)
        if len(labels) and not np.array_equal(present, np.arange(len(class_names))):
            raise ValueError(f"labels must cover 0..{len(class_names) - 1} contiguously (one per class name), "
                             f"got {present.tolist()[:10]}")
        self.items = list(items)
        self.labels = labels
        self.class_names = list(class_names)
        self.transform = transform
        self.eval_transform = eval_transform if eval_transform is not None else transform

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        if getattr(self.transform, "reads_pixels", False):  # diml.data.pixels: uint8 crops from decoded pixels
            return self.transform(self.load_pixels(index)), int(self.labels[index])
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def load_image(self, index: int) -> Image.Image:
        """The untransformed RGB image ``index``."""
        raise NotImplementedError

    def load_pixels(self, index: int) -> np.ndarray:
        """The untransformed image ``index`` as ``(H, W, 3)`` uint8 RGB (the same pixels as :meth:`load_image`;
        subclasses may decode faster, and a decoded cache (:mod:`diml.data.pixel_cache`) answers first)."""
        cache = getattr(self, "pixel_cache", None)
        if cache is not None:
            pixels = cache.get(self, index)
            if pixels is not None:
                return pixels
        return self._decode_pixels(index)

    def _decode_pixels(self, index: int) -> np.ndarray:
        return np.array(self.load_image(index).convert("RGB"))

    def image_id(self, index: int) -> str:
        """A stable identifier of image ``index`` (e.g. its path relative to the dataset root)."""
        raise NotImplementedError

    @property
    def part_names(self) -> list[str] | None:
        """The ``P`` part names of :meth:`keypoints`' columns, or ``None`` when the split has no part annotations."""
        names = None if self.part_source is None else self.part_source.part_names
        return None if names is None else list(names)

    @property
    def keypoint_image_size(self) -> int | None:
        """``S``, the side of the evaluation crop that :meth:`keypoints` refers to (``data.image_size``)."""
        return None if self.keypoint_geometry is None else self.keypoint_geometry.image_size

    def set_eval_geometry(self, image_size: int, eval_resize_ratio: float) -> None:
        """Record the eval transform's geometry (``Resize(round(S * ratio))``, ``CenterCrop(S)``) for keypoints."""
        self.keypoint_geometry = EvalGeometry.from_ratio(image_size, eval_resize_ratio)

    def _geometry(self) -> EvalGeometry:
        if self.keypoint_geometry is None:
            raise ValueError("this split does not know its eval geometry: build it with diml.data.build_splits, "
                             "or call set_eval_geometry(image_size, eval_resize_ratio) first")
        return self.keypoint_geometry

    def keypoints(self) -> np.ndarray:
        """``(N, P, 3)`` float32 ``x, y, visible`` of every image's parts in its ``S x S`` evaluation crop
        (continuous pixels, origin at the crop's top-left corner, pixel ``k`` spans ``[k, k + 1)``); a part that is
        invisible or outside the crop is ``0, 0, 0``. Per image, whatever this split's transform (a view's rows
        follow its ``items``); annotations are read once per image and cached in the shared part source."""
        if self.part_names is None:
            raise ValueError("this split has no part annotations (part_names is None): use a dataset with parts "
                             "(cub200 with parts/, a folder with parts.csv, synthetic); see docs/DATASETS.md")
        geometry = self._geometry()
        parts = self.part_source.original(self.items)
        return geometry.points_to_crop(parts.points, parts.visible, parts.sizes)

    def part_boxes(self) -> np.ndarray | None:
        """``(N, 4)`` float32 ``x0, y0, x1, y1`` of each image's object box in its evaluation crop (clipped to
        ``[0, S]``), or ``None`` when the dataset has no boxes."""
        if self.part_source is None or not self.part_source.has_boxes:
            return None
        geometry = self._geometry()
        parts = self.part_source.original(self.items)
        return geometry.boxes_to_crop(parts.boxes, parts.sizes)

    def with_transform(self, transform: Callable | None) -> "SplitDataset":
        """A shallow copy that applies ``transform`` (the images and labels are shared)."""
        view = copy.copy(self)
        view.transform = transform
        return view

    def eval_view(self) -> "SplitDataset":
        """This split with the evaluation transform (e.g. to embed the training images)."""
        return self.with_transform(self.eval_transform)

    def subset(self, indices: Sequence[int]) -> "SplitDataset":
        """A copy holding images ``indices`` only, in that order (labels and class names unchanged, so a class may
        end up with no image): e.g. the images an evaluation kept after dropping those it could not read."""
        indices = np.asarray(indices, dtype=np.int64)
        view = copy.copy(self)
        view.items = [self.items[i] for i in indices]
        view.labels = self.labels[indices]
        return view

    def select_classes(self, classes: Sequence[int]) -> "SplitDataset":
        """A copy restricted to the given classes (labels of this split), relabelled ``0..len(classes)-1`` in the
        given order."""
        classes = [int(c) for c in classes]
        mapping = np.full(self.num_classes, -1, dtype=np.int64)
        mapping[classes] = np.arange(len(classes))
        keep = np.flatnonzero(mapping[self.labels] >= 0)
        view = copy.copy(self)
        view.items = [self.items[i] for i in keep]
        view.labels = mapping[self.labels[keep]]
        view.class_names = [self.class_names[c] for c in classes]
        return view


class Splits(NamedTuple):
    """``train`` (train transform), ``val`` (eval transform, ``None`` unless ``val_fraction > 0``), ``test``."""

    train: SplitDataset
    val: SplitDataset | None
    test: SplitDataset


def carve_validation(train: SplitDataset, val_fraction: float, seed: int) -> tuple[SplitDataset, SplitDataset | None]:
    """Move a seeded ``val_fraction`` of the training classes (at least one) to a class-disjoint validation split.

    Returns ``(train, val)``; ``val`` uses the eval transform; ``val`` is ``None`` when ``val_fraction == 0``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0:
        return train, None
    n_val = max(1, int(round(val_fraction * train.num_classes)))
    if n_val >= train.num_classes:
        raise ValueError(f"val_fraction={val_fraction} leaves no training class out of {train.num_classes}; "
                         "lower val_fraction")
    order = np.random.default_rng([seed, 7001]).permutation(train.num_classes)
    val_classes, train_classes = sorted(order[:n_val]), sorted(order[n_val:])
    val = train.select_classes(val_classes).eval_view()
    return train.select_classes(train_classes), val


def report_small_classes(split_name: str, dataset: SplitDataset) -> list[str]:
    """Warn about classes with fewer than 2 images in a split (such a query has no positive); return their names."""
    counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
    small = [dataset.class_names[c] for c in np.flatnonzero(counts < 2)]
    if small:
        warnings.warn(
            f"{split_name} split: {len(small)} class(es) with fewer than 2 images (no positive for retrieval): "
            f"{', '.join(small[:10])}{' ...' if len(small) > 10 else ''}",
            stacklevel=2,
        )
    return small
