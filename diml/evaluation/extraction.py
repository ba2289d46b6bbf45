"""Embedding extraction, sharded over the ranks of a ``torch.distributed`` group and gathered on rank 0."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from diml.distributed import unwrap_model
from diml.evaluation.storage import EmbeddingSet


def _unpack(output) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not hasattr(output, "global_emb"):
        raise ValueError(f"model must return diml.models.Embeddings(global_emb, local_emb), got {type(output).__name__}")
    local = getattr(output, "local_emb", None)
    return output.global_emb.float(), None if local is None else local.float()


def _embed_shard(model, dataset, indices, *, batch_size, device, num_workers, progress=False, augment=None):
    """Embed ``dataset[indices]`` in order. Returns ``(global (n, D), local (n, D, R) | None, labels (n,))`` on
    ``device``."""
    from tqdm.auto import tqdm

    from diml.data.device_input import device_batches

    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    loader = tqdm(loader, desc="embedding", unit="batch", disable=not progress, leave=False)
    globals_, locals_, labels = [], [], []
    module = unwrap_model(model)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for images, batch_labels in device_batches(loader, device, augment):
                glob, local = _unpack(module(images))
                globals_.append(glob)
                locals_.append(local)
                labels.append(batch_labels.to(torch.int64))
    finally:
        module.train(was_training)
    has_local = locals_[0] is not None
    return torch.cat(globals_), torch.cat(locals_) if has_local else None, torch.cat(labels)


def _gather_rank0(shard: torch.Tensor, num_images: int, rank: int, world: int, comm_device) -> torch.Tensor | None:
    """Gather strided shards (rank ``r`` holds images ``r, r + world, ...``) into dataset order on rank 0.

    Args:
        shard: ``(n_r, ...)`` this rank's rows; every rank has ``ceil`` or ``floor`` of ``num_images / world``.

    Returns:
        ``(num_images, ...)`` on rank 0 (CPU), None elsewhere.
    """
    rows = math.ceil(num_images / world)
    padded = torch.zeros((rows,) + tuple(shard.shape[1:]), dtype=shard.dtype, device=comm_device)
    padded[: shard.shape[0]] = shard.to(comm_device)
    bucket = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
    dist.gather(padded, bucket, dst=0)
    if rank != 0:
        return None
    stacked = torch.stack(bucket).cpu()
    index = torch.arange(num_images)
    return stacked[index % world, index // world]


def extract_embeddings(
    model: torch.nn.Module, dataset: Dataset, *, batch_size: int, device, num_workers: int = 0,
    progress: bool = False, augment=None,
) -> EmbeddingSet | None:
    """Embed every image of ``dataset`` with ``model`` in eval mode (the training mode is restored afterwards).

    Without ``torch.distributed`` (or with one rank) the whole dataset is embedded here. In an initialised process
    group of W ranks, rank ``r`` embeds images ``r, r + W, r + 2W, ...`` and rank 0 gathers them: **rank 0 returns
    the full set in dataset order, every other rank returns None**. Every rank must call this function (it holds a
    collective). A DDP wrapper is unwrapped (no synchronisation needed at inference).

    Args:
        model: ``model(images (B, 3, H, W)) -> Embeddings(global_emb (B, D), local_emb (B, D, R))``.
        dataset: yields ``(image, label)``: a ``(3, H, W)`` float image, or uint8 crops
            (:class:`diml.data.pixels.PixelCrops`, ``build_splits(..., input_format="uint8")``) that are copied to
            ``device`` ahead (pinned memory, a side stream on CUDA) and normalised there by ``augment``.
        batch_size: images per forward pass.
        device: where the model runs.
        num_workers: DataLoader workers.
        progress: show a progress bar of the batches on stderr (rank 0 only; off by default, e.g. in Ray workers).
        augment: the :class:`diml.data.device_input.DeviceAugment` of uint8 crops (default: ImageNet normalisation,
            contiguous layout); float images ignore it.

    Returns:
        :class:`~diml.evaluation.storage.EmbeddingSet` with CPU float32 embeddings, int64 labels and empty metadata
        (on rank 0 / single process), or None on the other ranks.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = torch.device(device)
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    num_images = len(dataset)
    if num_images < world or num_images == 0:
        raise ValueError(f"dataset has {num_images} images for {world} rank(s): every rank needs at least one image")
    glob, local, labels = _embed_shard(model, dataset, list(range(rank, num_images, world)), batch_size=batch_size,
                                       device=device, num_workers=num_workers, progress=progress and rank == 0,
                                       augment=augment)
    if not distributed:
        return EmbeddingSet(glob.cpu(), labels.cpu(), None if local is None else local.cpu(), {})
    comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    glob = _gather_rank0(glob, num_images, rank, world, comm_device)
    labels = _gather_rank0(labels, num_images, rank, world, comm_device)
    if local is not None:
        local = _gather_rank0(local, num_images, rank, world, comm_device)
    if rank != 0:
        return None
    return EmbeddingSet(glob, labels, local, {})


def drop_unreadable(embeddings: EmbeddingSet) -> tuple[EmbeddingSet, list[int]]:
    """``embeddings`` without the rows of images the split could not read (negative labels:
    :func:`diml.data.skipped_label`), and those rows' dataset indices.

    When rows are dropped, ``metadata["indices"]`` lists the dataset index of every kept row (the rows are then
    no longer in dataset order by position: pair them with ``dataset.subset(metadata["indices"])``)."""
    keep = embeddings.labels >= 0
    if bool(keep.all()):
        return embeddings, []
    skipped = [int(i) for i in torch.nonzero(~keep).flatten()]
    kept = torch.nonzero(keep).flatten()
    local = None if embeddings.local_emb is None else embeddings.local_emb[kept]
    metadata = {**embeddings.metadata, "indices": [int(i) for i in kept]}
    return EmbeddingSet(embeddings.global_emb[kept], embeddings.labels[kept], local, metadata), skipped
