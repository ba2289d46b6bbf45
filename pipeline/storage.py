"""Where a launch keeps its Ray results: a local folder or an object store URI (``s3://``, ``gs://``)."""

from __future__ import annotations

import pathlib


def is_local(path: str) -> bool:
    """Whether ``path`` is a local folder (a plain path or a ``file://`` URI)."""
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> pathlib.Path:
    return pathlib.Path(path.removeprefix("file://"))


def as_uri(path: str) -> str:
    """``path`` as a URI that ``pyarrow.fs.FileSystem.from_uri`` takes (local paths become ``file://``)."""
    return path if "://" in path else f"file://{path}"
