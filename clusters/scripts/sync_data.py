"""Copy the datasets to this node once: ``python sync_data.py SOURCE DEST``.

SOURCE is an object-store URI (``s3://bucket/datasets``, ``gs://bucket/datasets``) or a folder; DEST a local folder
(the ``$DIML_DATA`` the specs read, e.g. ``$DIML_DATA/CUB_200_2011``). pyarrow (a project dependency) does the
copying with the node's own credentials (AWS instance profile, GCP service account). A marker file records the
source of a finished copy, so setup can run again (every ``ray up``) without copying again; an interrupted copy
has no marker and is redone. A progress bar (bytes) goes to stderr, redrawn at most every 5 s when that is a log file.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MARKER = ".diml-synced-from"
THREADS = 16  # concurrent file copies (object stores serve many small images faster in parallel)


def sync(source: str, dest: str | Path) -> bool:
    """Copy ``source`` into ``dest`` unless a finished copy of the same source is there; True when copied."""
    import pyarrow.fs as pafs

    dest = Path(dest).expanduser().resolve()
    marker = dest / MARKER
    if marker.is_file() and marker.read_text().strip() == source:
        return False
    src_fs, src_path = pafs.FileSystem.from_uri(source if "://" in source else Path(source).resolve().as_uri())
    info = src_fs.get_file_info(src_path)
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"dataset source {source!r} is not a folder: upload the dataset folders "
                                "(CUB_200_2011/, cars196/, Stanford_Online_Products/) there first")
    dest.mkdir(parents=True, exist_ok=True)
    _copy_tree(src_fs, src_path, dest)
    marker.write_text(source + "\n")
    return True


def _copy_tree(src_fs, src_path: str, dest: Path) -> None:
    """Copy every file under ``src_path`` of ``src_fs`` to the same relative path under ``dest``, with a progress
    bar in bytes."""
    import pyarrow.fs as pafs
    from tqdm import tqdm

    files = [f for f in src_fs.get_file_info(pafs.FileSelector(src_path, recursive=True))
             if f.type == pafs.FileType.File]
    root = src_path.rstrip("/") + "/"
    with tqdm(total=sum(f.size for f in files), unit="B", unit_scale=True, desc="sync_data",
              mininterval=0.5 if sys.stderr.isatty() else 5.0) as bar:
        def copy(info) -> None:
            target = dest / info.path[len(root):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with src_fs.open_input_stream(info.path) as reader, open(target, "wb") as writer:
                while chunk := reader.read(1 << 20):
                    writer.write(chunk)
                    bar.update(len(chunk))

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(copy, files))  # list(): re-raise the first failed copy


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    started = time.perf_counter()
    copied = sync(argv[0], argv[1])
    print(f"sync_data: {argv[0]} -> {argv[1]}: "
          + (f"copied in {time.perf_counter() - started:.0f} s" if copied else "already there"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
