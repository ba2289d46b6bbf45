"""Class-balanced batches (P classes x M images) for DDP training.

Every epoch, each class's images are shuffled and cut into chunks of M; each batch takes one chunk from each of P
distinct classes, classes drawn in proportion to their remaining chunks. So within an epoch an image is used at
most once (the ``len % M`` leftover images of a class sit the epoch out, differently every epoch), except for
classes with fewer than M images: their single chunk is filled up by sampling the class with replacement.

``replacement=True`` draws batches as the authors' ``ClassRandomSampler`` does (Roth et al.'s code base): every batch
picks its P classes uniformly *with* replacement (a class can appear twice) and each class's M images with
replacement (an image can repeat, a zero-distance positive), ``N // (batch_size * num_replicas)`` batches per rank
and epoch, so an epoch sees about as many images as the dataset holds but not each image once.

The epoch's batch list is a function of ``(labels, seed, epoch)`` only and is dealt round-robin to the ranks
(``rank, rank + num_replicas, ...``), so ranks draw disjoint batches, and every rank gets the same number of
batches (required by DDP, whose collectives would otherwise hang).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Yields lists of ``batch_size`` dataset indices: ``P = batch_size // images_per_class`` classes x
    ``M = images_per_class`` images each (consecutive groups of M share a class).

    ``labels: (N,)`` ints. ``drop_last=True`` drops the leftover chunks that cannot fill P distinct classes and
    truncates the batch list to a multiple of ``num_replicas``; ``drop_last=False`` yields the leftovers as
    final, smaller batches (one chunk of M images from each class that has chunks left) and pads the list by
    repeating its first batches so that all ranks get the same count. Call :meth:`set_epoch` before each epoch.
    Classes with fewer than M images contribute one chunk per epoch, filled by sampling with replacement.
    ``replacement=True``: the authors' sampling (module docstring); ``drop_last`` then has nothing to drop.
    """

    def __init__(self, labels, batch_size: int, images_per_class: int, *, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, drop_last: bool = True, replacement: bool = False) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
        if images_per_class < 1:
            raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
        if batch_size < 1 or batch_size % images_per_class:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of images_per_class "
                             f"({images_per_class}); change one of them")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas), got rank={rank}, num_replicas={num_replicas}")
        self.classes, inverse = np.unique(labels, return_inverse=True)
        self.batch_size = batch_size
        self.images_per_class = images_per_class
        self.classes_per_batch = batch_size // images_per_class
        if not isinstance(replacement, bool):
            raise ValueError(f"replacement must be True or False (got {replacement!r})")
        self.replacement = replacement
        if self.classes_per_batch > len(self.classes) and not replacement:
            raise ValueError(f"batch_size // images_per_class = {self.classes_per_batch} classes per batch, but the "
                             f"labels hold only {len(self.classes)} classes; lower batch_size")
        self.indices_by_class = [np.flatnonzero(inverse == k) for k in range(len(self.classes))]
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches are drawn next (batches are a function of ``(seed, epoch)``)."""
        self.epoch = int(epoch)

    def _chunks(self, rng: np.random.Generator) -> list[list[np.ndarray]]:
        """Per class, its shuffled images cut into chunks of M (one chunk filled with replacement if < M)."""
        m = self.images_per_class
        chunks = []
        for idx in self.indices_by_class:
            idx = rng.permutation(idx)
            if len(idx) < m:
                idx = np.concatenate([idx, rng.choice(idx, size=m - len(idx), replace=True)])
            chunks.append([idx[j:j + m] for j in range(0, len(idx) - m + 1, m)])
        return chunks

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` across ranks, before dealing them out."""
        rng = np.random.default_rng([self.seed, epoch, 0xBA7C])
        if self.replacement:
            return self._batches_with_replacement(rng)
        chunks = self._chunks(rng)
        remaining = np.array([len(c) for c in chunks], dtype=np.float64)
        batches: list[list[int]] = []
        p = self.classes_per_batch
        while np.count_nonzero(remaining) >= p:
            picked = rng.choice(len(chunks), size=p, replace=False, p=remaining / remaining.sum())
            batches.append([int(i) for k in picked for i in chunks[k][int(remaining[k]) - 1]])
            remaining[picked] -= 1
        while not self.drop_last and remaining.sum() > 0:
            # Fewer than P classes still have chunks: one smaller batch of one chunk per such class.
            picked = np.flatnonzero(remaining)
            batches.append([int(i) for k in picked for i in chunks[k][int(remaining[k]) - 1]])
            remaining[picked] -= 1
        return batches

    def _batches_with_replacement(self, rng: np.random.Generator) -> list[list[int]]:
        """The authors' batches: P classes uniformly with replacement, M images of each with replacement."""
        total = sum(len(idx) for idx in self.indices_by_class)
        count = max(1, total // (self.batch_size * self.num_replicas)) * self.num_replicas
        m, batches = self.images_per_class, []
        for _ in range(count):
            classes = rng.integers(0, len(self.indices_by_class), size=self.classes_per_batch)
            batches.append([int(i) for k in classes for i in rng.choice(self.indices_by_class[k], size=m)])
        return batches

    def _rank_batches(self) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        batches = self.epoch_batches(self.epoch)
        r = self.num_replicas
        if self.drop_last:
            batches = batches[: len(batches) - len(batches) % r]
        elif len(batches) % r:
            batches = batches + batches[: r - len(batches) % r]
        mine = batches[self.rank::r]
        self._cache = (self.epoch, mine)
        return mine

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._rank_batches())

    def __len__(self) -> int:
        return len(self._rank_batches())
