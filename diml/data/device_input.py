"""The device half of the uint8 input path: batches to the device, then flip and normalisation as one batched op.

Loader workers return :class:`~diml.data.pixels.PixelCrops` batches (``pixels (B, S, S, 3)`` uint8, ``flip
(B,)``; :mod:`diml.data.pixels`). :func:`device_batches` moves each batch to the device and applies
:class:`DeviceAugment`; on CUDA it does so one batch ahead, non-blocking from pinned memory on a side stream, while
the current batch trains (timm's ``PrefetchLoader``). On a CPU the "device" step runs in the main process on the
batch. Float batches (the float transforms of :mod:`diml.data.transforms`) pass through, moved to the device.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from diml.data.pixels import PixelCrops
from diml.models.backbones import IMAGENET_MEAN, IMAGENET_STD


class DeviceAugment:
    """``pixels (B, S, S, 3)`` uint8 + ``flip (B,)`` bool -> ``(B, 3, S, S)`` normalised images, on their device.

    ``out = flip_b(pixels) * (1 / (255 std)) - mean / std`` per channel, over the whole batch: ``ToTensor`` +
    ``Normalize(mean, std)`` of the float path as one conversion and one multiply-add (within 1e-6 of it:
    ``tests/diml/data/test_data_uint8_input.py``), and ``RandomHorizontalFlip`` applied where ``flip`` says (on
    CUDA with ``torch.where``: no host sync; on a CPU, where the flags already are, while converting each sample).
    ``channels_last``: the output in channels-last memory (the layout the pixels arrive in: no transposition);
    ``dtype``: of the output.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, *, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={mean!r}, std={std!r}")
        mean64 = torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)
        std64 = torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
        self.scale = (1.0 / (255.0 * std64)).to(dtype)
        self.shift = (-mean64 / std64).to(dtype)
        self.channels_last = channels_last
        self.dtype = dtype
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, pixels: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"pixels must be (B, S, S, 3) uint8 (a PixelCrops batch), got {pixels.dtype} "
                             f"{tuple(pixels.shape)}")
        images = pixels.permute(0, 3, 1, 2)  # (B, 3, S, S), channels-last strides
        if pixels.device not in self._constants:
            self._constants[pixels.device] = (self.scale.to(pixels.device), self.shift.to(pixels.device))
        scale, shift = self._constants[pixels.device]
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty(images.shape, dtype=self.dtype, device=images.device, memory_format=layout)
        if flip is None:
            out.copy_(images)
        elif images.device.type == "cpu":  # the flags are on the host: mirror while converting, sample by sample
            for index, mirrored in enumerate(flip.tolist()):
                out[index].copy_(images[index].flip(-1) if mirrored else images[index])
        else:
            out.copy_(select_flipped(images, flip))
        return out.mul_(scale).add_(shift)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels_last={self.channels_last}, dtype={self.dtype})"


def select_flipped(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """``images (B, C, H, W)`` with sample ``b`` mirrored left-right where ``flip[b]``: both candidates and one
    ``torch.where``, no host sync (the device path of :class:`DeviceAugment`)."""
    return torch.where(flip.to(images.device).view(-1, 1, 1, 1), images.flip(-1), images)


def drop_unreadable_rows(images, labels: torch.Tensor, skipped: list[int]):
    """A host batch without the rows of images the split could not read (negative labels,
    :func:`diml.data.skipped_label`); their dataset indices are appended to ``skipped``. ``images``: a float tensor
    or a :class:`~diml.data.pixels.PixelCrops` batch. A batch left empty raises ``ValueError`` (under DDP every rank
    must take the step)."""
    keep = labels >= 0
    skipped.extend(int(-1 - label) for label in labels[~keep])
    if not bool(keep.any()):
        raise ValueError(f"every image of a training batch was unreadable (dataset indices {skipped[-8:]}): "
                         "replace or delete the bad files")
    if isinstance(images, PixelCrops):
        return PixelCrops(images.pixels[keep], images.flip[keep]), labels[keep]
    return images[keep], labels[keep]


def _to_device(batch, device: torch.device, augment: DeviceAugment,
               skipped: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = batch
    labels = torch.as_tensor(labels)
    if skipped is not None and labels.device.type == "cpu" and bool((labels < 0).any()):
        images, labels = drop_unreadable_rows(images, labels, skipped)
    labels = torch.as_tensor(labels).to(device, non_blocking=True)
    if isinstance(images, PixelCrops):
        pixels = images.pixels.to(device, non_blocking=True)
        return augment(pixels, images.flip.to(device, non_blocking=True)), labels
    return images.to(device, non_blocking=True), labels


def device_batches(loader: Iterable, device, augment: DeviceAugment | None = None, *,
                   skipped: list[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images (B, 3, S, S) float, labels (B,))`` on ``device`` for each ``(images, labels)`` batch of ``loader``.

    ``PixelCrops`` batches go through ``augment`` (default: ImageNet normalisation, :class:`DeviceAugment`);
    float batches are only moved. On CUDA each batch is copied and augmented on a side stream while the previous
    one is in use (give the DataLoader ``pin_memory=True`` so the copies are asynchronous), and the current stream
    waits for it with a stream dependency, not a host sync. Order and content are the loader's. With ``skipped`` (a
    list), rows of unreadable images are dropped on the host before the copy (:func:`drop_unreadable_rows`).
    """
    device = torch.device(device)
    augment = augment if augment is not None else DeviceAugment()
    if device.type != "cuda":
        for batch in loader:
            yield _to_device(batch, device, augment, skipped)
        return
    prepare = lambda batch: _to_device(batch, device, augment, skipped)  # noqa: E731
    yield from one_ahead(loader, prepare, torch.cuda.Stream(device), torch.cuda.current_stream(device),
                         torch.cuda.stream)


def one_ahead(loader: Iterable, prepare, side, current, on_stream) -> Iterator:
    """``prepare(batch)`` of each batch, issued on stream ``side`` one batch before it is handed out (the copy of
    batch i + 1 overlaps the use of batch i); ``current`` waits for ``side`` (a stream dependency, no host sync)
    before a batch is handed out, and each of its tensors is marked as used on ``current`` (``record_stream``) so
    the caching allocator does not give its memory back to ``side`` early. ``on_stream(side)``: the context that
    makes ``side`` current (``torch.cuda.stream``)."""
    ready = None
    for batch in loader:
        with on_stream(side):
            upcoming = prepare(batch)
        if ready is not None:
            yield ready
        current.wait_stream(side)
        for tensor in upcoming:
            tensor.record_stream(current)
        ready = upcoming
    if ready is not None:
        yield ready
