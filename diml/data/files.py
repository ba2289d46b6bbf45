"""Image files on disk: the file-backed split, missing/corrupt image handling and layout errors.

Loaders of the real formats (:mod:`diml.data.formats`) turn their annotation files into records ``(relative path,
class key)`` and call :func:`make_file_split`, which checks the files, optionally drops unreadable ones, and
relabels the classes ``0..C-1`` in sorted key order.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Hashable, Sequence

import numpy as np
from PIL import Image

from diml.data.base import SplitDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
DOCS_HINT = "see docs/DATASETS.md for where to obtain the data and the expected layout"


class BadImageError(ValueError):
    """An image file that exists but cannot be decoded."""


def skipped_label(index: int) -> int:
    """The label a split built with ``skip_bad_images`` yields for image ``index`` when it cannot read it (a file
    that went bad after the scan of :func:`make_file_split`, or one the scan passed): ``-1 - index``, negative, so
    that whoever collates the batch can drop it (:func:`skipped_indices`) and still tell which image it was, even
    from a DataLoader worker process."""
    return -1 - index


def skipped_indices(labels) -> list[int]:
    """The dataset indices of the images a batch's ``labels`` (a tensor or array) mark as unreadable."""
    return [-1 - int(label) for label in labels if int(label) < 0]


def require_root(dataset: str, root) -> Path:
    """``root`` as a ``Path``; ``None`` raises ``ValueError``, a missing directory ``FileNotFoundError``."""
    if root is None:
        raise ValueError(f"dataset {dataset!r} needs root (the dataset directory); set root; {DOCS_HINT}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset} root {str(path)!r} does not exist or is not a directory; {DOCS_HINT}")
    return path


def layout_error(dataset: str, root: Path, layouts: Sequence[str]) -> FileNotFoundError:
    """The error for a root that matches none of the known layouts (names the path and every layout tried)."""
    return FileNotFoundError(
        f"{dataset}: no known layout found under {str(root)!r}; looked for: {' | '.join(layouts)}; {DOCS_HINT}"
    )


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_class_folders(directory: Path, name_filter: Callable[[str], bool] | None = None) -> dict[str, list[str]]:
    """``{class folder name: sorted image paths relative to directory}`` for sub-folders holding images (searched
    recursively inside each class folder; only folders whose name passes ``name_filter``); folders without images
    are ignored."""
    classes = {}
    if not directory.is_dir():
        return classes
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and (name_filter is None or name_filter(p.name))):
        images = sorted(p.relative_to(directory).as_posix() for p in sub.rglob("*") if is_image_file(p))
        if images:
            classes[sub.name] = images
    return classes


def read_image(path: Path) -> Image.Image:
    """Decode ``path`` as RGB; an unreadable file raises ``BadImageError`` naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {str(path)!r} is missing; restore it or rebuild the dataset") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImageError(f"cannot read image {str(path)!r} ({err}); replace or delete the file, or set "
                            "skip_bad_images=True") from None


def _is_readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads every byte
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any failure to decode means "bad image"
        return False


class ImageFileDataset(SplitDataset):
    """A split backed by image files: ``items[i]`` is the path of image ``i`` relative to ``root``.

    ``skip_bad_images``: an image that cannot be read when it is loaded yields a blank image with the label
    :func:`skipped_label` (and a warning naming the file, once per file and process) instead of raising;
    ``skipped_at_load``: the relative paths the scan of :func:`make_file_split` dropped."""

    def __init__(self, root: Path, relpaths: Sequence[str], labels, class_names: Sequence[str],
                 transform: Callable | None, eval_transform: Callable | None = None, *, skip_bad_images: bool = False,
                 skipped_at_load: Sequence[str] = ()) -> None:
        super().__init__(list(relpaths), labels, class_names, transform, eval_transform)
        self.root = Path(root)
        self.skip_bad_images = skip_bad_images
        self.skipped_at_load = list(skipped_at_load)
        self._warned: set[str] = set()

    def __getitem__(self, index: int):
        if not self.skip_bad_images:
            return super().__getitem__(index)
        try:
            return super().__getitem__(index)
        except (BadImageError, FileNotFoundError) as err:
            if self.items[index] not in self._warned:
                self._warned.add(self.items[index])
                warnings.warn(f"skipped image {str(self.path(index))!r}: {err}", stacklevel=2)
            blank = Image.new("RGB", (8, 8))
            return (self.transform(blank) if self.transform is not None else blank), skipped_label(index)

    def path(self, index: int) -> Path:
        return self.root / self.items[index]

    def load_image(self, index: int) -> Image.Image:
        return read_image(self.path(index))

    def _decode_pixels(self, index: int) -> np.ndarray:
        from diml.data.pixels import decode_file

        return decode_file(self.path(index))

    def image_id(self, index: int) -> str:
        return self.items[index]


def _drop_missing_and_bad(root: Path, relpaths: list[str], skip_bad_images: bool, split_name: str) -> np.ndarray:
    """Boolean keep-mask. Missing files raise unless skipping; with skipping, unreadable files are found by
    decoding every image once (threads) and dropped with a warning that gives the count (an image that goes bad
    later is skipped when it is read: :class:`ImageFileDataset`)."""
    exists = np.array([os.path.isfile(root / p) for p in relpaths], dtype=bool)
    if not skip_bad_images:
        if not exists.all():
            missing = [relpaths[i] for i in np.flatnonzero(~exists)]
            raise FileNotFoundError(
                f"{split_name}: {len(missing)} listed image file(s) missing under {str(root)!r}, e.g. "
                f"{str(root / missing[0])!r}; restore them or set skip_bad_images=True"
            )
        return exists
    keep = exists.copy()
    candidates = np.flatnonzero(exists)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        readable = list(pool.map(lambda i: _is_readable(root / relpaths[i]), candidates))
    keep[candidates] = readable
    if not keep.all():
        dropped = [relpaths[i] for i in np.flatnonzero(~keep)]
        warnings.warn(f"{split_name}: skipped {len(dropped)} missing or unreadable image(s) under {str(root)!r}, "
                      f"e.g. {', '.join(dropped[:3])}", stacklevel=3)
    return keep


def make_file_split(root: Path, relpaths: Sequence[str], class_keys: Sequence[Hashable], class_names: dict,
                    transform: Callable | None, eval_transform: Callable | None, *, skip_bad_images: bool,
                    split_name: str) -> ImageFileDataset:
    """Build a split from records: image ``relpaths[i]`` (relative to ``root``) belongs to ``class_keys[i]``.

    Classes are relabelled ``0..C-1`` in sorted key order; ``class_names[key]`` names each. An empty split raises
    ``ValueError``.
    """
    relpaths = list(relpaths)
    keys = list(class_keys)
    keep = _drop_missing_and_bad(root, relpaths, skip_bad_images, split_name)
    dropped = [p for p, k in zip(relpaths, keep) if not k]
    relpaths = [p for p, k in zip(relpaths, keep) if k]
    keys = [c for c, k in zip(keys, keep) if k]
    if not relpaths:
        raise ValueError(f"{split_name}: no images under {str(root)!r}; check root and the class split; {DOCS_HINT}")
    order = sorted(set(keys))
    index = {key: i for i, key in enumerate(order)}
    labels = np.array([index[k] for k in keys], dtype=np.int64)
    return ImageFileDataset(root, relpaths, labels, [str(class_names[k]) for k in order], transform, eval_transform,
                            skip_bad_images=skip_bad_images, skipped_at_load=dropped)
