"""Where a trial's time goes, per epoch: the ``time/*`` metrics rank 0 logs (issue 26).

One epoch's wall time (``time/epoch_s``: from the start of its training to its checkpoint, and for the last epoch
to the end of the trial's final phase: test evaluation, artifacts, explanation figures) is cut into disjoint parts:

- ``time/train_step_s``: training steps; ``time/data_wait_s``: between steps, waiting for the next batch
  (:class:`diml.engine.StepClock`: host time on a CPU; on CUDA device time from CUDA events read once per epoch, so
  the wait is the device idle between steps);
- ``time/eval_s``: evaluation (the selection split; the last epoch adds the final test evaluation);
- ``time/checkpoint_s``: writing and reporting the Ray checkpoint (``ray.train.report`` is also a barrier of the
  workers);
- ``time/tracking_s``: MLflow calls of this worker (metrics; the last epoch adds the logged model and artifacts);
- ``time/explanations_s``: explanation figures (drawn in the final phase: 0 in the other epochs).

They never add up to more than ``time/epoch_s``; the rest is the loop's own work (scheduler, metrics, the time
before the first step).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

PARTS = ("train_step", "data_wait", "eval", "checkpoint", "tracking", "explanations")
EPOCH_KEY = "time/epoch_s"


def metric_key(part: str) -> str:
    return f"time/{part}_s"


@dataclass
class EpochTimes:
    """The parts of one epoch, in seconds; ``tracking_start``: the logger's MLflow seconds when the epoch began."""

    started: float
    tracking_start: float
    train_step: float = 0.0
    data_wait: float = 0.0
    eval: float = 0.0
    checkpoint: float = 0.0
    explanations: float = 0.0

    @classmethod
    def start(cls, tracking_seconds: float) -> "EpochTimes":
        return cls(started=time.perf_counter(), tracking_start=tracking_seconds)

    @contextlib.contextmanager
    def timing(self, part: str):
        """Add the time spent in the ``with`` block to ``part``."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, part, getattr(self, part) + time.perf_counter() - begin)

    def metrics(self, tracking_seconds: float) -> dict[str, float]:
        """``time/*`` metrics of the epoch so far; ``tracking_seconds``: the logger's MLflow seconds now."""
        out = {metric_key(part): getattr(self, part) for part in PARTS if part != "tracking"}
        out[metric_key("tracking")] = tracking_seconds - self.tracking_start
        out[EPOCH_KEY] = time.perf_counter() - self.started
        return out
