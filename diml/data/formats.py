"""Loaders for the real on-disk formats: CUB200-2011, Cars196, Stanford Online Products and any image folder.

Each loader finds its layout under ``root``, turns the annotations into ``(relative path, class key)`` records for
the train and test classes (disjoint, as in the deep-metric-learning protocol) and returns ``(train, test)``.
Nothing is downloaded; docs/DATASETS.md explains where to obtain each dataset.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from diml.data.files import layout_error, list_class_folders, make_file_split, require_root
from diml.data.keypoints import FilePartSource
from diml.data.part_files import read_cub_parts, read_folder_parts
from diml.data.splits import register_dataset

_CUB_FOLDER = re.compile(r"^(\d+)\.(.+)$")


def _read_table(path: Path, columns: int, skip_header: bool = False) -> list[list[str]]:
    """Whitespace-separated rows with at least ``columns`` fields (the last field keeps any spaces)."""
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines[1:] if skip_header else lines, start=2 if skip_header else 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=columns - 1)
        if len(fields) < columns:
            raise ValueError(f"{str(path)!r} line {number}: expected {columns} fields, got {line!r}; is the file "
                             "complete?")
        rows.append(fields)
    return rows


def _two_splits(root: Path, records, names: dict, is_train, opts: dict, dataset: str):
    """``records``: (relpath, class key) pairs; ``is_train(key) -> bool`` picks the training classes."""
    splits = []
    for want, split in ((True, "train"), (False, "test")):
        chosen = [(p, k) for p, k in records if bool(is_train(k)) == want]
        transform = opts["train_transform"] if want else opts["eval_transform"]
        splits.append(make_file_split(root, [p for p, _ in chosen], [k for _, k in chosen], names, transform,
                                      opts["eval_transform"], skip_bad_images=opts["skip_bad_images"],
                                      split_name=f"{dataset} {split}"))
    return tuple(splits)


def _options(kw: dict, dataset: str, allowed: tuple[str, ...] = ()) -> dict:
    base = ("image_size", "seed", "train_transform", "eval_transform", "skip_bad_images")
    unknown = sorted(set(kw) - set(base) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for dataset {dataset!r}; allowed: {list(allowed) or 'none'}")
    return kw


# --- CUB200-2011 -----------------------------------------------------------------------------------------------

CUB_LAYOUTS = ("CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, images/} (official archive)",
               "images/NNN.Name/*.jpg (bare folders)", "NNN.Name/*.jpg")


def _cub_records(root: Path, *, parts: bool = True):
    """``(images folder, records, class names, part table or None)``; with ``parts``, the part files (official
    layout only) are read and checked here, before any image file is touched."""
    for base in (root, root / "CUB_200_2011"):
        files = [base / n for n in ("images.txt", "image_class_labels.txt", "classes.txt")]
        if all(f.is_file() for f in files) and (base / "images").is_dir():
            paths = {i: p for i, p in _read_table(files[0], 2)}
            labels = {i: int(c) for i, c in _read_table(files[1], 2)}
            names = {int(c): n for c, n in _read_table(files[2], 2)}
            missing = sorted(set(paths) - set(labels))
            if missing:
                raise ValueError(f"{str(files[1])!r} has no class for image id(s) {missing[:5]}; is it complete?")
            table = read_cub_parts(base, paths) if parts else None
            return base / "images", [(paths[i], labels[i]) for i in paths], names, table
    for folder in (root / "images", root / "CUB_200_2011" / "images", root):
        classes = list_class_folders(folder, name_filter=_CUB_FOLDER.match)
        if classes:
            names = {int(_CUB_FOLDER.match(n).group(1)): n for n in classes}
            records = [(p, int(_CUB_FOLDER.match(n).group(1))) for n, imgs in classes.items() for p in imgs]
            return folder, records, names, None
    raise layout_error("cub200", root, CUB_LAYOUTS)


def _with_parts(splits, table, root: Path, prefixes=("", "")):
    """Give each split the part source of ``table`` (its items relative to ``root / prefix``); ``None``: none."""
    if table is not None:
        for split, prefix in zip(splits, prefixes):
            split.part_source = FilePartSource(table, root, prefix)
    return splits


def load_cub200(root, **kw):
    """CUB200-2011: classes 1-100 train, 101-200 test (class ids from ``classes.txt`` or the ``NNN.`` prefix);
    with the official layout, ``parts/`` and ``bounding_boxes.txt`` give the splits' keypoints and boxes."""
    opts = _options(kw, "cub200")
    base, records, names, parts = _cub_records(require_root("cub200", root))
    return _with_parts(_two_splits(base, records, names, lambda c: c <= 100, opts, "cub200"), parts, base)


# --- Cars196 ---------------------------------------------------------------------------------------------------

CARS_LAYOUTS = ("cars_annos.mat + car_ims/ (official)", "images/<class name>/*.jpg or <class name>/*.jpg "
                "(one folder per class)")


def _cars_mat_records(mat_path: Path):
    from scipy.io import loadmat

    try:
        mat = loadmat(mat_path, squeeze_me=True)
        annotations = np.atleast_1d(mat["annotations"])
        paths = [str(p) for p in annotations["relative_im_path"]]
        classes = [int(c) for c in annotations["class"]]
        class_names = [str(n) for n in np.atleast_1d(mat["class_names"])]
    except (KeyError, ValueError, TypeError, OSError, NotImplementedError) as err:  # v7.3 (HDF5) raises the last
        raise ValueError(f"cannot read {str(mat_path)!r} as the Cars196 cars_annos.mat (fields annotations"
                         f"[relative_im_path, class] and class_names): {err}") from None
    names = {c: (class_names[c - 1] if 0 < c <= len(class_names) else f"class_{c}") for c in set(classes)}
    return list(zip(paths, classes)), names


def load_cars196(root, **kw):
    """Cars196: classes 1-98 train, 99-196 test (``cars_annos.mat``), or the first half of the sorted class folders
    train and the second half test (one-folder-per-class layout)."""
    opts = _options(kw, "cars196")
    root = require_root("cars196", root)
    if (root / "cars_annos.mat").is_file():
        records, names = _cars_mat_records(root / "cars_annos.mat")
        return _two_splits(root, records, names, lambda c: c <= 98, opts, "cars196")
    for folder in (root / "images", root / "car_ims", root):
        classes = list_class_folders(folder)
        if len(classes) >= 2:
            order = sorted(classes)
            records = [(p, k) for k, n in enumerate(order) for p in classes[n]]
            half = len(order) // 2
            return _two_splits(folder, records, dict(enumerate(order)), lambda c: c < half, opts, "cars196")
    raise layout_error("cars196", root, CARS_LAYOUTS)


# --- Stanford Online Products ----------------------------------------------------------------------------------

SOP_LAYOUTS = ("Ebay_train.txt + Ebay_test.txt + <super>_final/ (official)",
               "Stanford_Online_Products/Ebay_train.txt ...")


def _sop_split(base: Path, name: str, transform, opts: dict):
    rows = _read_table(base / f"Ebay_{name}.txt", 4, skip_header=True)
    records = [(path, int(class_id)) for _, class_id, _, path in rows]
    names = {int(c): f"{p.split('/')[0]}:{c}" for _, c, _, p in rows}
    return make_file_split(base, [p for p, _ in records], [k for _, k in records], names, transform,
                           opts["eval_transform"], skip_bad_images=opts["skip_bad_images"], split_name=f"sop {name}")


def load_sop(root, **kw):
    """Stanford Online Products: the train/test split of ``Ebay_train.txt`` / ``Ebay_test.txt``."""
    opts = _options(kw, "sop")
    root = require_root("sop", root)
    for base in (root, root / "Stanford_Online_Products"):
        if (base / "Ebay_train.txt").is_file() and (base / "Ebay_test.txt").is_file():
            return (_sop_split(base, "train", opts["train_transform"], opts),
                    _sop_split(base, "test", opts["eval_transform"], opts))
    raise layout_error("sop", root, SOP_LAYOUTS)


# --- Any image folder ------------------------------------------------------------------------------------------

FOLDER_LAYOUTS = ("train/<class>/* + test/<class>/* (given split)",
                  "<class>/* (class-disjoint split by a seeded test_fraction)")


def load_folder(root, *, test_fraction: float = 0.5, **kw):
    """One sub-folder per class: ``train/`` and ``test/`` sub-trees as given, or else a class-disjoint split where
    a seeded ``test_fraction`` of the classes (at least one, at most all but one) is held out for testing.
    ``parts.csv`` / ``boxes.csv`` at the root give keypoints and boxes (docs/DATASETS.md)."""
    opts = _options(kw, "folder")
    root = require_root("folder", root)
    train_classes, test_classes = list_class_folders(root / "train"), list_class_folders(root / "test")
    if train_classes and test_classes:
        parts = read_folder_parts(root, [f"{sub}/{p}" for sub, classes in (("train", train_classes),
                                         ("test", test_classes)) for imgs in classes.values() for p in imgs])
        splits = []
        for sub, classes, transform in (("train", train_classes, opts["train_transform"]),
                                        ("test", test_classes, opts["eval_transform"])):
            records = [(p, n) for n in classes for p in classes[n]]
            splits.append(make_file_split(root / sub, [p for p, _ in records], [n for _, n in records],
                                          {n: n for n in classes}, transform, opts["eval_transform"],
                                          skip_bad_images=opts["skip_bad_images"], split_name=f"folder {sub}"))
        return _with_parts(tuple(splits), parts, root, ("train/", "test/"))
    classes = list_class_folders(root)
    if len(classes) < 2:
        raise layout_error("folder", root, FOLDER_LAYOUTS)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = sorted(classes)
    n_test = min(len(order) - 1, max(1, int(round(test_fraction * len(order)))))
    held_out = set(np.random.default_rng([opts["seed"], 4242]).permutation(len(order))[:n_test].tolist())
    test_names = {order[i] for i in held_out}
    records = [(p, n) for n in order for p in classes[n]]
    parts = read_folder_parts(root, [p for p, _ in records])
    return _with_parts(_two_splits(root, records, {n: n for n in order}, lambda n: n not in test_names, opts,
                                   "folder"), parts, root)


register_dataset("cub200", load_cub200)
register_dataset("cars196", load_cars196)
register_dataset("sop", load_sop)
register_dataset("folder", load_folder)
