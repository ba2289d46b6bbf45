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
    epoch: int
    loss: float
    batches: int
    images: int
    seconds: float
    lr: float
    skipped: tuple[int, ...] = ()  # dataset indices of unreadable images dropped from the batches (skipped_label)

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
    ``images`` counts this worker's images. Images a split could not read (a negative label,
    :func:`diml.data.skipped_label`) are dropped from their batch before the forward pass and listed in
    ``skipped``; a batch left empty raises ``ValueError`` (under DDP every rank must take the step).
    """
    step_module.train()
    total = torch.zeros((), device=device, dtype=torch.float64)
    n_batches = n_images = 0
    skipped: list[int] = []
    start = time.perf_counter()
    for images, labels in batches:
        if bool((labels < 0).any()):  # on the host, before the copy to the device: no sync
            images, labels = _drop_unreadable(images, labels, skipped)
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = step_module(images, labels)
        loss.backward()
        optimizer.step()
        total += loss.detach().double()
        n_batches += 1
        n_images += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    mean = float(total) / max(n_batches, 1)
    if not math.isfinite(mean):
        raise NonFiniteLossError(epoch, mean)
    lr = optimizer.param_groups[0]["lr"]
    return EpochStats(epoch=epoch, loss=mean, batches=n_batches, images=n_images, seconds=seconds, lr=lr,
                      skipped=tuple(skipped))


def _drop_unreadable(images: torch.Tensor, labels: torch.Tensor, skipped: list[int]):
    """The batch without the rows labelled unreadable (negative labels); their dataset indices go to ``skipped``."""
    keep = labels >= 0
    skipped.extend(int(-1 - label) for label in labels[~keep])
    if not bool(keep.any()):
        raise ValueError(f"every image of a training batch was unreadable (dataset indices {skipped[-8:]}): "
                         "replace or delete the bad files")
    return images[keep], labels[keep]
