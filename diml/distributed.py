"""Small pure-torch helpers for DDP training (any backend; no-ops without ``torch.distributed``).

The metric losses mine pairs inside the batch, so under DDP each rank gathers the embeddings of all ranks and
computes the loss of the *global* batch (as PML's ``DistributedLossWrapper``).  Only this rank's slice keeps its
autograd history, so the backward pass reaches this rank's samples only; DDP then **averages** the parameter
gradients over ranks, which gives ``1 / world_size`` of the single-process gradient.  Multiply the loss by
:func:`world_size` before ``backward()`` to train exactly as one process on the concatenated batch::

    g, l, y = gather_embeddings(global_emb, local_emb, labels)
    (loss_fn(g, l, y) * world_size()).backward()

Every rank then also sees the same loss value, and miners with a seeded generator draw the same tuples on every
rank (see :mod:`diml.losses.miners`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0 (and when not distributed): the one process that logs, saves and reports."""
    return rank() == 0


def gather_embeddings(
    global_emb: torch.Tensor, local_emb: torch.Tensor | None, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Concatenate every rank's batch in rank order; this rank's slice keeps its gradient.

    Args:
        global_emb: ``(B_r, D)``; local_emb: ``(B_r, D, R)`` or ``None``; labels: ``(B_r,)``.  Ranks may hold
            different ``B_r`` (one extra small collective exchanges the sizes).
    Returns:
        ``(global_all (B, D), local_all (B, D, R) | None, labels_all (B,))`` with ``B = sum_r B_r``; the inputs
        themselves when not distributed or with one rank.  Tensors must live on the backend's device (CPU for gloo,
        this rank's GPU for NCCL).
    """
    if world_size() == 1:
        return global_emb, local_emb, labels
    if len(labels) != len(global_emb) or (local_emb is not None and len(local_emb) != len(global_emb)):
        raise ValueError("global_emb, local_emb and labels must have the same batch size on each rank")
    sizes = _all_sizes(len(global_emb), global_emb.device)
    gathered_local = None if local_emb is None else _all_gather_rows(local_emb, sizes)
    return _all_gather_rows(global_emb, sizes), gathered_local, _all_gather_rows(labels, sizes)


def _all_sizes(size: int, device: torch.device) -> list[int]:
    """Every rank's batch size (one all_gather of a scalar)."""
    mine = torch.tensor([size], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(sizes, mine)
    return [int(s.item()) for s in sizes]


def _all_gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All-gather ``x (B_r, ...)`` along dim 0, padding to the largest batch; this rank's rows stay ``x`` itself."""
    longest = max(sizes)
    padded = x.detach()
    if len(x) < longest:
        padded = torch.cat([padded, padded.new_zeros((longest - len(x), *x.shape[1:]))])
    buffers = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(buffers, padded.contiguous())
    parts = [buffer[:size] for buffer, size in zip(buffers, sizes)]
    parts[rank()] = x
    return torch.cat(parts)
