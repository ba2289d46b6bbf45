"""Validation of the tensors and the chunk size of :mod:`diml.ot` (the OT options validate themselves:
:class:`diml.ot.OTOptions`).

Each check raises ``ValueError`` with a one-line message naming the argument and the fix.
"""

from __future__ import annotations

import torch

from diml.options import _check_int


def check_chunk_size(chunk_size) -> None:
    _check_int("chunk_size", chunk_size, minimum=1, example="chunk_size=16384 (pairs per chunk)")


def check_tensor(name: str, value, ndim: int, shape_doc: str, batch_dims: int = 1) -> None:
    """Check that ``value`` is a floating tensor with ``ndim`` dimensions and non-empty cell/channel axes.

    The ``batch_dims`` leading (batch) axes may be empty; the others may not.
    """
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {shape_doc} (got {type(value).__name__})")
    if value.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_doc} (got shape {tuple(value.shape)})")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor (got dtype {value.dtype}); convert it with .float()")
    if any(size == 0 for size in value.shape[batch_dims:]):
        raise ValueError(f"{name} must not have an empty cell/channel axis (got shape {tuple(value.shape)})")


def working_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half and bfloat16 inputs are computed in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
