"""Validation of the tensors and the chunk size of :mod:`diml.ot` (the OT options validate themselves:
:class:`diml.ot.OTOptions`).

Each check raises ``ValueError`` with a one-line message naming the argument and the fix.
"""

from __future__ import annotations

import math

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


COSINE_LIMIT = 1.0 + 1e-3  # the largest |cell cosine| accepted (rounding of L2-normalised vectors)


def check_cell_terms(cell_sim: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """DIML problems' cell similarities and marginals: finite, and cosines within [-1, 1] up to ``COSINE_LIMIT``
    (two reductions, one host sync)."""
    if not cell_sim.numel():
        return
    largest, total = torch.stack([cell_sim.abs().amax(), a.sum() + b.sum()]).tolist()
    if not (math.isfinite(largest) and math.isfinite(total)):
        raise ValueError("the local/global embeddings contain NaN or inf; check the model outputs")
    if largest > COSINE_LIMIT:
        raise ValueError(f"cell cosine similarities reach {largest:.3g}, beyond [-1, 1]: embeddings passed with "
                         "normalized=True must be L2-normalised along C; drop normalized=True")
