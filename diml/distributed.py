"""Small pure-torch helpers for DDP training (any backend; no-ops without ``torch.distributed``).

The metric losses mine pairs inside the batch, so under DDP each rank gathers the embeddings of all ranks and
computes the loss of the *global* batch.  :func:`gather_embeddings` is autograd-aware: in the backward pass the
gradients that every rank computed for the gathered tensor are summed (one ``all_reduce``) and each rank keeps the
rows of its own samples.  So each rank's embedding gradient is ``sum_r dL_r / d(own rows)``, and after DDP averages
the parameter gradients over the ``W`` ranks the model receives exactly ``d/dtheta (1/W) sum_r L_r`` -- the
single-process gradient on the concatenated batch, since every rank computes the same ``L`` (same gathered batch,
miners with equal seeds draw equal tuples).  Loss parameters (the margin's per-class beta, proxies) get the same
exact gradient, because every rank computes their full gradient and DDP averages it.  No loss scaling is needed::

    g, l, y = gather_embeddings(global_emb, local_emb, labels)
    loss_fn(g, l, y).backward()  # every rank must backpropagate (the backward pass holds a collective)

(PML's ``DistributedLossWrapper`` instead keeps only the own rows' gradient and multiplies the loss by ``W``, which
fixes the model's gradient but makes loss parameters' gradients ``W`` times too large.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The inner module of a DDP / DataParallel wrapper, else ``model``: evaluation and explanations need no gradient
    synchronisation, and a DDP forward on shards of unequal length could wait on a collective that the other ranks
    never reach."""
    if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return model.module
    return model


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
    """Concatenate every rank's batch in rank order, differentiably (see the module docstring).

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
    gathered_local = None if local_emb is None else _GatherRows.apply(local_emb, sizes)
    return _GatherRows.apply(global_emb, sizes), gathered_local, _all_gather_rows(labels, sizes)


def _all_sizes(size: int, device: torch.device) -> tuple[int, ...]:
    """Every rank's batch size (one all_gather of a scalar)."""
    mine = torch.tensor([size], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(sizes, mine)
    return tuple(int(s.item()) for s in sizes)


def _all_gather_rows(x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """All-gather ``x (B_r, ...)`` along dim 0 (no autograd), padding every rank to the largest batch."""
    longest = max(sizes)
    padded = x.detach()
    if len(x) < longest:
        padded = torch.cat([padded, padded.new_zeros((longest - len(x), *x.shape[1:]))])
    buffers = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(buffers, padded.contiguous())
    return torch.cat([buffer[:size] for buffer, size in zip(buffers, sizes)])


class _GatherRows(torch.autograd.Function):
    """Forward: all-gather rows.  Backward: sum the gathered tensor's gradient over ranks, keep the own rows."""

    @staticmethod
    def forward(ctx, x, sizes):
        ctx.sizes, ctx.rank = sizes, rank()
        return _all_gather_rows(x, sizes)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None
