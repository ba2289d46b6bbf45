"""How many classes the training split of a dataset holds, read from its annotations or folder names only (no
image is opened or decoded), so that a configuration can be checked against the data before anything starts.

The counts follow exactly the splits :func:`diml.data.build_splits` makes: CUB200 classes 1-100, Cars196 classes
1-98 (or the first half of the class folders), SOP's ``Ebay_train.txt``, a folder's ``train/`` or its seeded
``test_fraction`` split, the synthetic data's first half; then ``val_fraction`` of them move to validation.
"""

from __future__ import annotations

from pathlib import Path

from diml.data.files import list_class_folders


def train_class_count(dataset: str, root=None, *, test_fraction: float = 0.5, num_classes: int = 48,
                      **_unused) -> int | None:
    """Classes of ``dataset``'s training split before any validation split; ``None`` when ``root`` holds no layout
    this function recognises (the loader then reports the layout when the data is built)."""
    if dataset == "synthetic":
        return num_classes // 2
    root = Path(root) if root is not None else None
    if root is None or not root.is_dir():
        return None
    try:
        return _COUNTERS[dataset](root, test_fraction)
    except (KeyError, ValueError, OSError):
        return None


def validation_class_count(train_classes: int, val_fraction: float) -> int:
    """Classes :func:`diml.data.base.carve_validation` moves from ``train_classes`` to validation."""
    return 0 if val_fraction == 0 else max(1, int(round(val_fraction * train_classes)))


def _cub200(root: Path, _test_fraction: float) -> int | None:
    from diml.data.formats import _cub_records

    _, records, _, _ = _cub_records(root, parts=False)
    return len({label for _, label in records if label <= 100})


def _cars196(root: Path, _test_fraction: float) -> int | None:
    from diml.data.formats import _cars_mat_records

    if (root / "cars_annos.mat").is_file():
        records, _ = _cars_mat_records(root / "cars_annos.mat")
        return len({label for _, label in records if label <= 98})
    for folder in (root / "images", root / "car_ims", root):
        classes = list_class_folders(folder)
        if len(classes) >= 2:
            return len(classes) // 2
    return None


def _sop(root: Path, _test_fraction: float) -> int | None:
    from diml.data.formats import _read_table

    for base in (root, root / "Stanford_Online_Products"):
        if (base / "Ebay_train.txt").is_file():
            return len({row[1] for row in _read_table(base / "Ebay_train.txt", 4, skip_header=True)})
    return None


def _folder(root: Path, test_fraction: float) -> int | None:
    train, test = list_class_folders(root / "train"), list_class_folders(root / "test")
    if train and test:
        return len(train)
    n = len(list_class_folders(root))
    if n < 2:
        return None
    return n - min(n - 1, max(1, int(round(test_fraction * n))))


_COUNTERS = {"cub200": _cub200, "cars196": _cars196, "sop": _sop, "folder": _folder}
