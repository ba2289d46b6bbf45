"""Where a launch keeps its Ray results: a local folder or an object store URI (``s3://``, ``gs://``)."""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib


def is_local(path: str) -> bool:
    """Whether ``path`` is a local folder (a plain path or a ``file://`` URI)."""
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> pathlib.Path:
    return pathlib.Path(path.removeprefix("file://"))


def as_uri(path: str) -> str:
    """``path`` as a URI that ``pyarrow.fs.FileSystem.from_uri`` takes (local paths become ``file://``)."""
    return path if "://" in path else f"file://{path}"


def check_writable(folder: str | os.PathLike) -> None:
    """Raise ``OSError`` unless a file can be written in the local ``folder``: the folder is created if missing,
    a probe file written and removed, and the folders the check created are removed again."""
    folder = pathlib.Path(folder)
    created = []
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        created.append(ancestor)
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file is in the way", str(ancestor))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".diml-write-probe-{os.getpid()}"
        probe.write_bytes(b"probe")
        probe.unlink()
    finally:
        for made in created:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()
