"""Part keypoints and object boxes in the coordinates of the image a model sees at evaluation.

Coordinates: continuous pixels, origin at the top-left corner of the image, pixel ``k`` spans ``[k, k + 1)`` so its
centre is ``k + 0.5``. A split's :meth:`~diml.data.base.SplitDataset.keypoints` gives ``(N, P, 3)`` float32 rows
``x, y, visible`` in the ``S x S`` evaluation crop; an invisible part, or one whose point leaves the crop, is
``0, 0, 0``. :meth:`~diml.data.base.SplitDataset.part_boxes` gives ``(N, 4)`` float32 ``x0, y0, x1, y1`` clipped to
the crop.

The evaluation geometry is torchvision's (checked against torchvision 0.29.1, ``transforms.functional``):
``Resize(R)`` with an int scales the short side to ``R`` and the long side to ``int(R * long / short)`` (truncated),
each axis by its own factor ``new / old`` (PIL and tensor resizing both map pixel centres ``k + 0.5`` linearly, so a
continuous point ``x`` goes to ``x * new / old``); ``CenterCrop(S)`` then cuts at ``top = int(round((H - S) / 2))``,
``left = int(round((W - S) / 2))`` (Python's round: halves go to the even integer, ``round(58.5) == 58``).

Sources: a split holds a *part source* (shared by its views) that returns each image's annotation in
original-image pixels; :class:`FilePartSource` (annotation files read by :mod:`diml.data.part_files`) and the
synthetic generator's source (:mod:`diml.data.synthetic`). Both are keyed by the split's ``items``, so the views made
by ``select_classes`` / ``with_transform`` / ``eval_view`` stay right.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, NamedTuple, Sequence

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class EvalGeometry:
    """``Resize(resize)`` of the short side, then ``CenterCrop(image_size)``: the eval transform's geometry."""

    image_size: int
    resize: int

    def __post_init__(self) -> None:
        if not (isinstance(self.image_size, int) and isinstance(self.resize, int) and 0 < self.image_size
                <= self.resize):
            raise ValueError(f"EvalGeometry needs integers 0 < image_size <= resize, got image_size="
                             f"{self.image_size!r}, resize={self.resize!r}")

    @classmethod
    def from_ratio(cls, image_size: int, eval_resize_ratio: float) -> "EvalGeometry":
        """The geometry of :func:`diml.data.transforms.eval_transform`: ``resize = round(S * eval_resize_ratio)``."""
        return cls(int(image_size), int(round(image_size * eval_resize_ratio)))

    def placement(self, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``sizes: (N, 2)`` original ``(width, height)`` -> ``scale (N, 2)`` (x, y factors of the resize) and
        ``offset (N, 2)`` (``left, top`` of the crop in the resized image): crop = original * scale - offset."""
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        short, long = sizes.min(axis=1), sizes.max(axis=1)
        new_long = np.floor(self.resize * long / short).astype(np.int64)  # int(R * long / short), as torchvision
        portrait = sizes[:, 0] <= sizes[:, 1]  # torchvision: w <= h -> the width is the short side
        new = np.where(portrait[:, None], np.stack([np.full_like(short, self.resize), new_long], 1),
                       np.stack([new_long, np.full_like(short, self.resize)], 1))
        scale = new / sizes
        offset = np.round((new - self.image_size) / 2.0)  # numpy rounds halves to even, as Python's round
        return scale, offset

    def points_to_crop(self, points: np.ndarray, visible: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """``points: (N, P, 2)`` original continuous pixels, ``visible: (N, P)`` bool, ``sizes: (N, 2)`` ->
        ``(N, P, 3)`` float32 ``x, y, visible`` in the crop; a point outside ``[0, S)^2`` becomes ``0, 0, 0``."""
        scale, offset = self.placement(sizes)
        crop = np.asarray(points, dtype=np.float64) * scale[:, None, :] - offset[:, None, :]
        inside = np.asarray(visible, dtype=bool) & np.all((crop >= 0) & (crop < self.image_size), axis=2)
        out = np.zeros(crop.shape[:2] + (3,), dtype=np.float32)
        out[..., :2] = np.where(inside[..., None], crop, 0.0)
        out[..., 2] = inside
        return out

    def boxes_to_crop(self, boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """``boxes: (N, 4)`` original ``x0, y0, x1, y1`` -> ``(N, 4)`` float32 in the crop, clipped to ``[0, S]``."""
        scale, offset = self.placement(sizes)
        crop = np.asarray(boxes, dtype=np.float64) * np.tile(scale, 2) - np.tile(offset, 2)
        return np.clip(crop, 0.0, self.image_size).astype(np.float32)


class OriginalParts(NamedTuple):
    """Annotations of ``N`` images in their original pixels: ``points (N, P, 2)`` float64 (continuous),
    ``visible (N, P)`` bool, ``boxes (N, 4)`` float64 or ``None``, ``sizes (N, 2)`` int64 ``(width, height)``."""

    points: np.ndarray
    visible: np.ndarray
    boxes: np.ndarray | None
    sizes: np.ndarray


class PartSource:
    """What a split needs from its annotations. ``part_names``: ``P`` names or ``None`` (no parts, perhaps boxes);
    ``has_boxes``; :meth:`original` for the given items."""

    part_names: list[str] | None = None
    has_boxes: bool = False

    def original(self, items: Sequence[Hashable]) -> OriginalParts:
        raise NotImplementedError


@dataclass
class PartTable:
    """Parsed annotation files (see :mod:`diml.data.part_files`): one row per listed image.

    ``keys``: the ``M`` image paths (relative to the dataset root) the loader lists; ``points (M, P, 2)`` float64
    continuous original pixels, ``visible (M, P)`` bool, ``lines (M, P)`` int (line of the row in
    ``points_file``, 0 = no row); ``boxes (M, 4)`` float64 or ``None``. An image without annotation rows has
    every part invisible.
    """

    part_names: list[str] | None
    keys: list[str]
    points: np.ndarray
    visible: np.ndarray
    lines: np.ndarray
    boxes: np.ndarray | None
    points_file: Path | None
    on_border: float  # how far (pixels) a visible point may lie outside the image (annotation rounding)


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:  # reads the header only
            return image.size
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {str(path)!r} is missing; restore it or rebuild the dataset") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read the size of image {str(path)!r} ({err}); replace or delete the file") from None


class FilePartSource(PartSource):
    """Annotations of image files: ``table`` keyed by paths relative to ``root``; a split whose items are relative
    to ``root / prefix`` (e.g. ``prefix="train/"``) looks up ``prefix + item``. Image sizes are read (headers
    only, threads) the first time an image is asked for, and its visible points are checked against its size
    then."""

    def __init__(self, table: PartTable, root: Path, prefix: str = "") -> None:
        self.table = table
        self.root = Path(root)
        self.prefix = prefix
        self.part_names = table.part_names
        self.has_boxes = table.boxes is not None
        self._row = {key: i for i, key in enumerate(table.keys)}
        self._size = np.full((len(table.keys), 2), -1, dtype=np.int64)  # -1: not read yet

    def _rows(self, items: Sequence[Hashable]) -> np.ndarray:
        keys = [self.prefix + str(item) for item in items]
        rows = np.fromiter((self._row.get(key, -1) for key in keys), np.int64, len(keys))
        if (rows < 0).any():
            raise ValueError(f"image {keys[int(np.argmax(rows < 0))]!r} is not in the part table under "
                             f"{str(self.root)!r}; build the split and its part source from the same image list")
        return rows

    def _sizes(self, rows: np.ndarray) -> np.ndarray:
        """``(N, 2)`` image sizes; each image is read once (header only, threads) and its points checked then."""
        todo = np.unique(rows[self._size[rows, 0] < 0])
        if len(todo):
            paths = [self.root / self.table.keys[r] for r in todo]
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                sizes = np.array(list(pool.map(_image_size, paths)), dtype=np.int64).reshape(-1, 2)
            self._check_inside(todo, sizes)
            self._size[todo] = sizes
        return self._size[rows]

    def _check_inside(self, rows: np.ndarray, sizes: np.ndarray) -> None:
        t = self.table
        if t.part_names is None:
            return
        pts, vis = t.points[rows], t.visible[rows]
        out = vis & np.any((pts < -t.on_border) | (pts > sizes[:, None, :] + t.on_border), axis=2)
        if out.any():
            r, p = np.argwhere(out)[0]
            line = int(t.lines[rows[r], p])
            text = t.points_file.read_text().splitlines()[line - 1].strip()
            w, h = sizes[r]
            raise ValueError(f"{str(t.points_file)!r} line {line}: visible point {text!r} lies outside image "
                             f"{t.keys[rows[r]]!r} ({w} x {h} pixels); correct the row or mark the part invisible")

    def original(self, items: Sequence[Hashable]) -> OriginalParts:
        rows, t = self._rows(items), self.table
        sizes = self._sizes(rows)
        points = None if t.part_names is None else t.points[rows]
        visible = None if t.part_names is None else t.visible[rows]
        boxes = None if t.boxes is None else t.boxes[rows]
        return OriginalParts(points, visible, boxes, sizes)
