"""Validation of the keyword options shared by every function of :mod:`diml.ot`.

Each check raises ``ValueError`` with a one-line message naming the argument and the fix.
"""

from __future__ import annotations

import math

import torch

# Defaults shared by every public function (one place).
EPS = 0.05
MAX_ITER = 300  # Sinkhorn iterations at most before the float64 Newton polish (slow problems switch earlier)
TOL = 1e-6  # marginal error |T1 - a|_1 + |T^T 1 - b|_1
NEWTON_STEPS = 30
CHECK_EVERY = 5
GRAD = "plan_constant"
MARGINALS = "cross_attention"

GRAD_MODES = ("plan_constant", "autodiff")
MARGINAL_MODES = ("cross_attention", "uniform")


def check_solver_options(*, eps, max_iter, tol, grad, newton_steps, check_every) -> None:
    """Validate the solver options (see :func:`diml.ot.sinkhorn` for their meaning)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0 (got {eps!r}); pass e.g. eps=0.05")
    _check_int("max_iter", max_iter, minimum=1, example="max_iter=200")
    _check_int("newton_steps", newton_steps, minimum=0, example="newton_steps=30 (0 disables the polish)")
    _check_int("check_every", check_every, minimum=1, example="check_every=5")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0 (got {tol!r}); pass e.g. tol=1e-6")
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES} (got {grad!r})")


def check_marginals(marginals) -> None:
    if marginals not in MARGINAL_MODES:
        raise ValueError(f"marginals must be one of {MARGINAL_MODES} (got {marginals!r})")


def check_chunk_size(chunk_size) -> None:
    _check_int("chunk_size", chunk_size, minimum=1, example="chunk_size=16384 (pairs per chunk)")


def _check_int(name, value, *, minimum, example) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} (got {value!r}); pass e.g. {example}")


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
