"""The images a trial skipped with ``data.skip_bad_images``: dropped by the scan when its splits were built, or
found unreadable when read (in a training batch on any worker, in an evaluation), each counted once.

Logged as the metric ``data/skipped_images`` (every epoch and with the final metrics) and the tag
``skipped_images`` (their names, the first :data:`SHOWN`).
"""

from __future__ import annotations

from typing import Any, Iterable

METRIC = "data/skipped_images"
TAG = "skipped_images"
SHOWN = 20


class SkippedImages:
    """The image ids (``dataset.image_id``: paths relative to the data root) a trial skipped so far."""

    def __init__(self, splits):
        self.names: set[str] = set()
        for split in (splits.train, splits.test):  # a validation split is carved from train: same scan
            self.names.update(getattr(split, "skipped_at_load", ()))
        self._tagged = -1

    def add(self, dataset, indices: Iterable[int]) -> None:
        self.names.update(dataset.image_id(i) for i in indices)

    def after_epoch(self, dataset, indices: Iterable[int], world_size: int) -> dict[str, float]:
        """Add an epoch's unreadable training images (``dataset`` indices), gather every worker's names and return
        :meth:`metrics` (a collective: every rank calls it)."""
        self.add(dataset, indices)
        self.gather(world_size)
        return self.metrics()

    def gather(self, world_size: int) -> None:
        """Every worker's names on every worker (a collective: all ranks call it at the same point)."""
        import torch.distributed as dist

        if world_size > 1 and dist.is_initialized():
            everyone: list[Any] = [None] * world_size
            dist.all_gather_object(everyone, sorted(self.names))
            self.names = set().union(*map(set, everyone))

    def metrics(self) -> dict[str, float]:
        return {METRIC: float(len(self.names))}

    def new_tags(self) -> dict[str, str]:
        """The tag naming the skipped images when their number changed since the last call, else nothing."""
        if len(self.names) == self._tagged:
            return {}
        self._tagged = len(self.names)
        names = sorted(self.names)
        more = f" ... ({len(names)} in all)" if len(names) > SHOWN else ""
        return {TAG: ", ".join(names[:SHOWN]) + more}
