"""Reading and checking part annotation files: CUB-200-2011's and the ``folder`` sidecar (docs/DATASETS.md).

Every problem is refused when the dataset is loaded, before any image is read, with one line naming the file, the
line and the fix: a wrong column count, a non-numeric value, an unknown image or part, a visible flag other than
0/1, a duplicate (image, part) row. Points are checked against their image's size when the sizes are read (the
first :meth:`~diml.data.base.SplitDataset.keypoints` call; :class:`~diml.data.keypoints.FilePartSource`).

Conventions (continuous pixels: pixel ``k`` spans ``[k, k + 1)``):

- CUB ``parts/part_locs.txt`` ``<image_id> <part_id> <x> <y> <visible>``: ``x, y`` are the 1-based indices of the
  clicked pixel, whose centre is ``x - 1 + 0.5 = x - 0.5`` (as CMR / CSM / ASIC, which subtract 1 for 0-based
  indices); invisible parts are ``0 0 0``. A visible point may lie up to half a pixel beyond the image (1-based
  ``0`` or ``w + 1``: a click rounded on the border); farther out it is refused.
- CUB ``bounding_boxes.txt`` ``<image_id> <x> <y> <width> <height>``: ``x, y`` the 1-based top-left pixel, so the
  box spans ``[x - 1, x - 1 + width] x [y - 1, y - 1 + height]``.
- ``folder``: ``parts.csv`` (``image,part,x,y,visible``) and ``boxes.csv`` (``image,x0,y0,x1,y1``) hold continuous
  0-based coordinates as above (a pixel centre is ``k + 0.5``), ``image`` the path relative to the folder root.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from diml.data.keypoints import PartTable
from diml.names import check_part_name

CUB_ON_BORDER = 0.5
FOLDER_PARTS_HEADER = ["image", "part", "x", "y", "visible"]
FOLDER_BOXES_HEADER = ["image", "x0", "y0", "x1", "y1"]


class _Rows:
    """The non-blank rows of an annotation file, their 1-based ``lines`` and (:meth:`numbers`) their values.

    ``header``: a CSV file with this header; else whitespace-separated fields, the last keeping its spaces with
    ``last_keeps_spaces``. ``numeric``: every field is a number (CUB's ``part_locs.txt``, ``bounding_boxes.txt``):
    the file is checked and converted with array operations, not line by line (177k rows in about a second).
    """

    def __init__(self, path: Path, columns: int, *, header: list[str] | None = None, last_keeps_spaces=False,
                 numeric=False):
        self.path, self.columns = path, columns
        self.text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the header
        raw = self.text.split("\n")
        self.values = None
        if numeric:
            counts = _fields_per_line(self.text, len(raw))
            self.lines = np.flatnonzero(counts) + 1
            bad = np.flatnonzero((counts != columns) & (counts != 0))
            if len(bad):
                self._check_counts([(bad[0] + 1, raw[bad[0]].split())])
            try:
                self.values = np.array(self.text.split(), dtype=np.float64).reshape(-1, columns)
            except ValueError:
                pass  # located cell by cell in numbers()
            self.fields = None
            if self.values is None:
                self.fields = [raw[n - 1].split() for n in self.lines]
                self._check_counts(zip(self.lines, self.fields))  # other Unicode spaces than the byte count's
            return
        if header is not None:
            first = next(csv.reader(raw[:1]), [])
            if [f.strip() for f in first] != header:
                self.fail(1, f"the header must be {','.join(header)!r}, got {(raw[0] if raw else '')!r}",
                          "write it as the first line")
            numbered = [(n, [f.strip() for f in row]) for n, row in enumerate(csv.reader(raw[1:]), 2) if row]
        else:
            split = (lambda s: s.split(maxsplit=columns - 1)) if last_keeps_spaces else str.split
            numbered = [(n, split(line)) for n, line in enumerate(raw, 1) if line.strip()]
        self._check_counts(numbered)
        self.lines = np.array([n for n, _ in numbered], dtype=np.int64)
        self.fields = [f for _, f in numbered]

    def _check_counts(self, numbered) -> None:
        for n, fields in numbered:
            if len(fields) != self.columns:
                self.fail(n, f"expected {self.columns} fields, got {len(fields)}", "write one row per line in the "
                          "documented columns")

    def field(self, row: int, column: int) -> str:
        if self.fields is not None:
            return self.fields[row][column]
        return self.text.split("\n")[self.lines[row] - 1].split()[column]

    def fail(self, line: int, problem: str, fix: str):
        raise ValueError(f"{str(self.path)!r} line {int(line)}: {problem}; {fix} (see docs/DATASETS.md)")

    def numbers(self, columns: Sequence[int], names: Sequence[str]) -> np.ndarray:
        """``(n, len(columns))`` float64 of the given columns; a non-numeric or non-finite value is refused."""
        columns = list(columns)
        values = None if self.values is None else self.values[:, columns]
        if values is None:
            cells = np.array([[row[c] for c in columns] for row in self.fields], dtype=object)
            try:
                values = cells.reshape(-1, len(columns)).astype(np.float64)
            except ValueError:
                values = np.array([[_number(cell) for cell in row] for row in cells]).reshape(-1, len(columns))
        bad = ~np.isfinite(values)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            self.fail(self.lines[r], f"{names[c]} {self.field(r, columns[c])!r} is not a finite number",
                      "fix the value")
        return values

    def integers(self, values: np.ndarray, names: Sequence[str]) -> np.ndarray:
        bad = values != np.round(values)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            self.fail(self.lines[r], f"{names[c]} {self.field(r, c)!r} is not an integer", "fix the value")
        return values.astype(np.int64)

    def lookup(self, keys: np.ndarray, column: int, known: dict, what: str, fix: str) -> np.ndarray:
        """Row index of each key (from field ``column``) in ``known`` (``{key: index}``); an unknown key is refused
        naming its line."""
        index = np.fromiter((known.get(k, -1) for k in keys.tolist()), np.int64, len(keys))
        if (index < 0).any():
            r = int(np.argmax(index < 0))
            self.fail(self.lines[r], f"unknown {what} {self.field(r, column)!r}", fix)
        return index

    def unique(self, keys: np.ndarray, what: str) -> None:
        """Refuse a repeated key (naming the line of the second occurrence)."""
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        if (counts > 1).any():
            seen = np.zeros(len(keys), dtype=bool)
            seen[first] = True
            r = int(np.argmax(~seen))
            self.fail(self.lines[r], f"duplicate {what}", "keep one row per " + what)


def _number(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return float("nan")


def _fields_per_line(text: str, num_lines: int) -> np.ndarray:
    """``(num_lines,)`` how many whitespace-separated fields each ``\\n``-separated line of ``text`` holds."""
    data = np.frombuffer(text.encode(), dtype=np.uint8)
    space = np.isin(data, np.frombuffer(b" \t\r\n\v\f", dtype=np.uint8))
    starts = ~space & np.concatenate([[True], space[:-1]])
    line = np.cumsum(data == 10) - (data == 10)
    return np.bincount(line[starts], minlength=num_lines)


def _points(rows: _Rows, image: np.ndarray, part: np.ndarray, xy: np.ndarray, visible: np.ndarray, num_images: int,
            num_parts: int, shift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scatter rows into ``points (M, P, 2)`` (``xy - shift``, 0 when invisible), ``visible (M, P)``, ``lines``."""
    if not np.isin(visible, (0.0, 1.0)).all():
        r = int(np.argmax(~np.isin(visible, (0.0, 1.0))))
        rows.fail(rows.lines[r], f"visible {rows.field(r, 4)!r} is not 0 or 1", "write 1 (visible) or 0")
    rows.unique(image * num_parts + part, "(image, part) row")
    points = np.zeros((num_images, num_parts, 2))
    seen = np.zeros((num_images, num_parts), dtype=bool)
    lines = np.zeros((num_images, num_parts), dtype=np.int64)
    on = visible == 1.0
    points[image[on], part[on]] = xy[on] - shift
    seen[image, part] = on
    lines[image, part] = rows.lines
    return points, seen, lines


def _check_name(rows: _Rows, line: int, name: str) -> None:
    """A part name becomes part of metric names (``test/interp/ot_argmax/part/<name>/cell_acc``): refused at load, with
    its file and line, when MLflow could not take it (:func:`diml.names.check_part_name`)."""
    try:
        check_part_name(name)
    except ValueError:
        rows.fail(line, f"part name {name!r} cannot name a metric", "use 1-64 ASCII letters, digits, spaces, '_', '.', "
                  "'-', starting with a letter or digit (e.g. 'left eye')")


def read_cub_parts(base: Path, images: dict[str, str]) -> PartTable | None:
    """CUB's ``parts/parts.txt``, ``parts/part_locs.txt`` and ``bounding_boxes.txt`` under ``base`` (next to
    ``images.txt``) for ``images`` (``{image id: path relative to images/}`` in ``images.txt`` order); ``None``
    when none of them is there. ``part_names`` is ``None`` without ``parts/``; boxes ``None`` without the box file.
    """
    names_file, locs_file, boxes_file = base / "parts" / "parts.txt", base / "parts" / "part_locs.txt", \
        base / "bounding_boxes.txt"
    if not (names_file.is_file() or locs_file.is_file() or boxes_file.is_file()):
        return None
    for have, need in ((names_file, locs_file), (locs_file, names_file)):
        if have.is_file() and not need.is_file():
            raise FileNotFoundError(f"{str(have)!r} is there but {str(need)!r} is missing; restore it from the "
                                    "CUB_200_2011 archive or remove the parts/ folder (see docs/DATASETS.md)")
    keys = list(images.values())
    try:
        image_row = {int(i): r for r, i in enumerate(images)}
    except ValueError:
        raise ValueError(f"{str(base / 'images.txt')!r}: image ids must be integers to match the part files; fix "
                         "images.txt") from None
    table = PartTable(None, keys, np.zeros((len(keys), 0, 2)), np.zeros((len(keys), 0), bool),
                      np.zeros((len(keys), 0), np.int64), None, None, CUB_ON_BORDER)
    if names_file.is_file():
        names = _Rows(names_file, 2, last_keeps_spaces=True)
        ids = names.integers(names.numbers([0], ["part id"]), ["part id"])[:, 0]
        names.unique(ids, "part id")
        order = np.argsort(ids, kind="stable")
        table.part_names = [names.fields[i][1].strip() for i in order]
        for i in order:
            _check_name(names, names.lines[i], names.fields[i][1].strip())
        locs = _Rows(locs_file, 5, numeric=True)
        values = locs.numbers(range(5), ["image id", "part id", "x", "y", "visible"])
        ids_in = locs.integers(values[:, :2], ["image id", "part id"])
        fix = "use the ids of images.txt and parts/parts.txt"
        image = locs.lookup(ids_in[:, 0], 0, image_row, "image id", fix)
        part = locs.lookup(ids_in[:, 1], 1, {int(p): k for k, p in enumerate(ids[order])}, "part id", fix)
        table.points, table.visible, table.lines = _points(locs, image, part, values[:, 2:4], values[:, 4],
                                                           len(keys), len(ids), shift=0.5)
        table.points_file = locs_file
    if boxes_file.is_file():
        boxes = _Rows(boxes_file, 5, numeric=True)
        values = boxes.numbers(range(5), ["image id", "x", "y", "width", "height"])
        row = boxes.lookup(boxes.integers(values[:, :1], ["image id"])[:, 0], 0, image_row, "image id",
                           "use the ids of images.txt")
        table.boxes = _boxes(boxes, row, values[:, 1:3] - 1.0, values[:, 1:3] - 1.0 + values[:, 3:5], keys)
    return table


def _boxes(rows: _Rows, row: np.ndarray, top_left: np.ndarray, bottom_right: np.ndarray, keys: list[str]):
    """``(M, 4)`` boxes from rows (one per image, every image, positive extent)."""
    rows.unique(row, "image")
    empty = np.any(bottom_right <= top_left, axis=1)
    if empty.any():
        rows.fail(rows.lines[int(np.argmax(empty))], "the box has no area", "give a positive width and height")
    if len(row) < len(keys):
        missing = sorted(set(range(len(keys))) - set(row.tolist()))
        raise ValueError(f"{str(rows.path)!r} has no box for {len(missing)} image(s), e.g. {keys[missing[0]]!r}; "
                         "add a row for every image or remove the file (see docs/DATASETS.md)")
    boxes = np.zeros((len(keys), 4))
    boxes[row] = np.concatenate([top_left, bottom_right], axis=1)
    return boxes


def read_folder_parts(root: Path, images: Sequence[str]) -> PartTable | None:
    """The ``folder`` sidecar files ``root/parts.csv`` and ``root/boxes.csv`` for ``images`` (every image path the
    loader lists, relative to ``root``); ``None`` when neither is there. Part names in order of first appearance;
    an image without rows has every part invisible; ``boxes.csv`` needs a row for every image."""
    parts_file, boxes_file = root / "parts.csv", root / "boxes.csv"
    if not (parts_file.is_file() or boxes_file.is_file()):
        return None
    keys = list(images)
    image_row = {key: r for r, key in enumerate(keys)}
    fix = "give the image path relative to the folder root, as the loader lists it (e.g. cat/001.jpg)"
    table = PartTable(None, keys, np.zeros((len(keys), 0, 2)), np.zeros((len(keys), 0), bool),
                      np.zeros((len(keys), 0), np.int64), None, None, 0.0)
    if parts_file.is_file():
        locs = _Rows(parts_file, 5, header=FOLDER_PARTS_HEADER)
        image = locs.lookup(np.array([f[0] for f in locs.fields], dtype=object), 0, image_row, "image", fix)
        column = {name: k for k, name in enumerate(dict.fromkeys(f[1] for f in locs.fields))}
        if "" in column:
            locs.fail(locs.lines[[f[1] for f in locs.fields].index("")], "empty part name", "name the part")
        part = np.fromiter((column[f[1]] for f in locs.fields), np.int64, len(locs.fields))
        for name in column:
            _check_name(locs, locs.lines[[f[1] for f in locs.fields].index(name)], name)
        values = locs.numbers([2, 3, 4], ["x", "y", "visible"])
        table.part_names = list(column)
        table.points, table.visible, table.lines = _points(locs, image, part, values[:, :2], values[:, 2],
                                                           len(keys), len(column), shift=0.0)
        table.points_file = parts_file
    if boxes_file.is_file():
        boxes = _Rows(boxes_file, 5, header=FOLDER_BOXES_HEADER)
        row = boxes.lookup(np.array([f[0] for f in boxes.fields], dtype=object), 0, image_row, "image", fix)
        values = boxes.numbers(range(1, 5), ["x0", "y0", "x1", "y1"])
        table.boxes = _boxes(boxes, row, values[:, :2], values[:, 2:], keys)
    return table
