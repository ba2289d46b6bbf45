"""Validation and conversion of the arguments of :func:`diml.evaluation.evaluate`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch


class Inputs(NamedTuple):
    global_emb: torch.Tensor  # (N, D) float32 on the compute device
    labels: torch.Tensor  # (N,) int64 on the compute device
    local_emb: torch.Tensor | None  # (N, D, R) float32 on the compute device
    depths: tuple[int, ...]  # sorted, unique
    ks: tuple[int, ...]  # sorted, unique


def as_tensor(value, name: str) -> torch.Tensor:
    """A torch tensor from a tensor or a numpy array (no copy where possible)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise ValueError(f"{name} must be a torch.Tensor or a numpy array, got {type(value).__name__}")


def _positive_ints(values: Sequence[int], name: str, limit: int) -> tuple[int, ...]:
    if isinstance(values, (int, np.integer)):
        values = (int(values),)
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must hold integers, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        if value > limit:
            raise ValueError(
                f"{name} value {value} exceeds the gallery size {limit} (N - 1 images besides the query): "
                f"use values <= {limit}"
            )
        out.append(int(value))
    return tuple(sorted(set(out)))


def chunk_option(name: str, value) -> None:
    """A chunk size is None (automatic) or an integer >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise ValueError(f"{name} must be an integer >= 1 or None (automatic), got {value!r}")


def _floats(x: torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    if not (x.is_floating_point()):
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    x = x.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf: check the model output before evaluating")
    return x


def prepare(global_emb, labels, local_emb, depths, ks, device) -> Inputs:
    """Check shapes, types and ranges; move everything to ``device`` (default: ``global_emb``'s device)."""
    global_emb = as_tensor(global_emb, "global_emb")
    labels = as_tensor(labels, "labels")
    device = torch.device(device) if device is not None else global_emb.device
    if global_emb.ndim != 2:
        raise ValueError(f"global_emb must be (N, D), got shape {tuple(global_emb.shape)}")
    n, dim = global_emb.shape
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be (N,) with N = {n} (rows of global_emb), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if n < 2:
        raise ValueError(f"global_emb must hold at least 2 images to rank, got {n}")
    if local_emb is not None:
        local_emb = as_tensor(local_emb, "local_emb")
        if local_emb.ndim != 3 or local_emb.shape[:2] != (n, dim):
            raise ValueError(
                f"local_emb must be (N, D, R) = ({n}, {dim}, R) to match global_emb, got shape {tuple(local_emb.shape)}"
            )
        local_emb = _floats(local_emb, "local_emb", device)
    return Inputs(
        global_emb=_floats(global_emb, "global_emb", device),
        labels=labels.to(device=device, dtype=torch.int64),
        local_emb=local_emb,
        depths=_positive_ints(depths, "depths", n - 1) if local_emb is not None else (),
        ks=_positive_ints(ks, "ks", n - 1),
    )
