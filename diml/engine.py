"""The training step and epoch loop, in plain PyTorch (the pipeline's Ray Train workers call these).

One :class:`TrainModule` holds the model and the loss, so that a single DDP wrapper all-reduces the gradients of
both (the loss may own parameters: the margin loss's per-class beta, proxies). The loss sees the global batch of
all workers (:func:`diml.distributed.gather_embeddings`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from diml.data.device_input import drop_unreadable_rows
from diml.distributed import gather_embeddings


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; ``epoch`` says when."""

    def __init__(self, epoch: int, value: float):
        self.epoch = epoch
        self.value = value
        super().__init__(
            f"training loss is {value} in epoch {epoch}: lower optimizer.lr, check the data, or use another loss"
        )


class TrainModule(nn.Module):
    """``(images (B, 3, H, W), labels (B,)) -> scalar loss`` of the model's embeddings over the global batch."""

    def __init__(self, model: nn.Module, loss: nn.Module, amp_dtype: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.loss = loss
        self.amp_dtype = amp_dtype

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.amp_dtype is not None:
            ctx = torch.autocast(device_type=images.device.type, dtype=self.amp_dtype)
        else:
            ctx = contextlib.nullcontext()
        with ctx:
            emb = self.model(images)
        global_emb, local_emb, all_labels = gather_embeddings(emb.global_emb.float(), emb.local_emb.float(), labels)
        return self.loss(global_emb, local_emb, all_labels)


@dataclass(frozen=True)
class EpochStats:
    """One epoch of :func:`train_epoch`. ``seconds``: its wall time; ``step_seconds``: time in training steps;
    ``wait_seconds``: time between steps, waiting for the next batch (``step_seconds + wait_seconds <= seconds``;
    on CUDA both are device time between events, see :class:`StepClock`)."""

    epoch: int
    loss: float
    batches: int
    images: int
    seconds: float
    lr: float
    skipped: tuple[int, ...] = ()  # dataset indices of unreadable images dropped from the batches (skipped_label)
    step_seconds: float = 0.0
    wait_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_epoch(
    step_module: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    device: torch.device,
    channels_last: bool = False,
) -> EpochStats:
    """Run one epoch of ``step_module`` (a :class:`TrainModule`, possibly DDP-wrapped) and return its statistics.

    The loss is accumulated on the device and read back once at the end of the epoch (no host sync per step);
    a non-finite mean loss raises :class:`NonFiniteLossError` naming the epoch.
    ``images`` counts this worker's images. ``batches`` yields ``(images (B, 3, H, W) float, labels (B,))``, on
    ``device`` or moved there; a uint8 loader goes through :func:`diml.data.device_input.device_batches` first
    (copy ahead on a side stream, flip and normalisation on the device; it drops unreadable images on the host).
    Images a split could not read (a negative label, :func:`diml.data.skipped_label`) in a batch still on the host
    are dropped before the forward pass and listed in ``skipped``; a batch left empty raises ``ValueError`` (under
    DDP every rank must take the step).
    """
    step_module.train()
    total = torch.zeros((), device=device, dtype=torch.float64)
    n_batches = n_images = 0
    skipped: list[int] = []
    start = time.perf_counter()
    clock = StepClock(device)
    for images, labels in batches:
        if labels.device.type == "cpu" and bool((labels < 0).any()):  # on the host: no device sync
            images, labels = drop_unreadable_rows(images, labels, skipped)
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        clock.step_started()
        optimizer.zero_grad(set_to_none=True)
        loss = step_module(images, labels)
        loss.backward()
        optimizer.step()
        total += loss.detach().double()
        clock.step_ended()
        n_batches += 1
        n_images += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    step_seconds, wait_seconds = clock.read()
    mean = float(total) / max(n_batches, 1)
    if not math.isfinite(mean):
        raise NonFiniteLossError(epoch, mean)
    lr = optimizer.param_groups[0]["lr"]
    return EpochStats(epoch=epoch, loss=mean, batches=n_batches, images=n_images, seconds=seconds, lr=lr,
                      skipped=tuple(skipped), step_seconds=step_seconds, wait_seconds=wait_seconds)


class StepClock:
    """Where an epoch's training time goes: in steps, or between them waiting for the next batch.

    One timeline, cut at each step's start and end: ``step`` sums ``end_i - start_i``, ``wait`` sums
    ``start_i - end_(i-1)`` (from the clock's creation for the first step), so ``step + wait`` is the span from the
    creation to the last step's end and never exceeds the epoch. On a CPU the timeline is the host's
    (``time.perf_counter``). On CUDA it is the device's: CUDA events recorded on the current stream (no host sync),
    read once by :meth:`read` after the epoch's synchronisation; a step is then device time from its first kernel to
    its last, and a wait is the device idle between steps (the batch was late, or the host).
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.marks: list = []  # creation, then start_0, end_0, start_1, end_1, ...
        self._mark()

    def _mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def step_started(self) -> None:
        self._mark()

    def step_ended(self) -> None:
        self._mark()

    def read(self) -> tuple[float, float]:
        """``(step seconds, wait seconds)``; on CUDA call it after the device is synchronised (it queries events)."""
        if self.cuda:
            gaps = [a.elapsed_time(b) / 1000.0 for a, b in zip(self.marks, self.marks[1:])]
        else:
            gaps = [b - a for a, b in zip(self.marks, self.marks[1:])]
        wait, step = sum(gaps[0::2]), sum(gaps[1::2])
        return step, wait
