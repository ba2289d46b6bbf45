"""A one-time cache of decoded images: every epoch after the first crops from memory instead of decoding a JPEG.

Decoding is half of a loader worker's time on the uint8 path (:mod:`diml.data.pixels`: 0.64 of the 1.2 CPU ms per
500 x 375 JPEG on this project's CPU, ``benchmarks/bench_loader.py``), and a training split is decoded again every
epoch; from the cache a worker delivers 2.4x as many images. :func:`cache_pixels` decodes a split once, at full resolution (so the crops are exactly those of the uncached
path), into a few large arrays of ordinary memory before the DataLoader starts its workers: forked workers (the
Linux default) read the same pages, never written after the build, so nothing is copied (and nothing goes through
``/dev/shm``, which containers often cap: the clusters' ``--shm-size=32g``); a spawned worker would get a pickled
copy. A byte budget bounds it: images past the budget are decoded on every use, as without a cache. Sizes at full
resolution (RGB, 3 bytes per pixel): CUB-200 (500 x 375 at most) 0.56 MB per image, 3.3 GB for its 5,864 training
images. Each DDP rank of a trial holds its own copy.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK_IMAGES = 256  # images per block


class PixelCache:
    """Decoded ``(H, W, 3)`` uint8 images keyed by ``image_id``, in blocks of ``CHUNK_IMAGES`` images.

    Attach it as ``dataset.pixel_cache``: :meth:`diml.data.base.SplitDataset.load_pixels` asks it first. Keys are
    image ids, so views of the split (``eval_view``, ``select_classes``) find their images too.
    """

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []
        self.slots: dict[str, tuple[int, int, int, int]] = {}  # image id -> (block, offset, height, width)
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.slots)

    def add_block(self, ids: list[str], images: list[np.ndarray]) -> None:
        """Copy ``images`` (``(H, W, 3)`` uint8 each) into one new block."""
        sizes = [image.size for image in images]
        block = np.empty(sum(sizes), dtype=np.uint8)
        offset = 0
        for image_id, image, size in zip(ids, images, sizes):
            block[offset:offset + size] = image.reshape(-1)
            self.slots[image_id] = (len(self.blocks), offset, image.shape[0], image.shape[1])
            offset += size
        self.blocks.append(block)
        self.nbytes += offset

    def get(self, dataset, index: int) -> np.ndarray | None:
        """The cached pixels of ``dataset``'s image ``index`` (a view into the block: do not write to it), or None."""
        slot = self.slots.get(dataset.image_id(index))
        if slot is None:
            return None
        block, offset, height, width = slot
        return self.blocks[block][offset:offset + height * width * 3].reshape(height, width, 3)


def cache_pixels(dataset, max_bytes: float, *, threads: int | None = None) -> PixelCache:
    """Decode ``dataset``'s images (in index order) into a :class:`PixelCache` of at most ``max_bytes`` and attach
    it as ``dataset.pixel_cache``; returns it. ``threads`` decode in parallel (default: this process's CPUs)."""
    if not max_bytes > 0:
        raise ValueError(f"max_bytes must be > 0 (the cache's budget in bytes), got {max_bytes!r}")
    threads = max(1, threads or len(os.sched_getaffinity(0)))
    cache = PixelCache()
    dataset.pixel_cache = None  # decode from the files, not from an older cache
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(dataset), CHUNK_IMAGES):
            indices = range(start, min(start + CHUNK_IMAGES, len(dataset)))
            images = list(pool.map(dataset.load_pixels, indices))
            kept, ids, total = [], [], cache.nbytes
            for index, image in zip(indices, images):
                if total + image.size > max_bytes:
                    break
                kept.append(np.ascontiguousarray(image))
                ids.append(dataset.image_id(index))
                total += image.size
            if kept:
                cache.add_block(ids, kept)
            if len(kept) < len(images):
                break
    dataset.pixel_cache = cache
    return cache
