r"""Batched entropic optimal transport: stabilised Sinkhorn with an active set, then a float64 Newton polish.

For ``B`` problems with costs :math:`C_b \in \mathbb R^{n\times m}` and marginals :math:`a_b, b_b` (equal masses) we
solve (Cuturi 2013, eq. 2)

.. math::
    T^\star = \arg\min_{T \ge 0,\; T\mathbf 1 = a,\; T^\top \mathbf 1 = b} \langle T, C\rangle - \varepsilon H(T),
    \qquad T^\star_{ij} = \exp\big((f_i + g_j - C_{ij})/\varepsilon\big),

where ``f, g`` are the dual potentials.  Numerics, in order:

1. A kernel ``K~ = exp(log K + x + y)`` with ``log K = -C / eps``, where the shifts ``x, y`` make the maximum of
   every row and column 0 (skipped when the caller knows ``log K`` spans less than ~60, as for cosine costs).
2. Scaling (matrix-vector) Sinkhorn iterations ``u = a / (K~ v)``, ``v = b / (K~^T u)`` in the working precision
   (float32 unless the input is float64): two tiny batched mat-vecs per iteration and no ``exp``.  The kernel is a
   fixed rounding of the problem, so the iteration converges to the precision of the working dtype instead of
   stalling on the rounding of ``exp(log K + x + y)`` with large potentials, as a float32 log-domain iteration does.
   Scalings that leave ``[e^-30, e^30]`` are absorbed into ``x, y`` and ``K~`` is recomputed for those problems
   only (stabilised Sinkhorn, Schmitzer 2019).
3. Every ``check_every`` iterations the marginal error ``|u * (K~ v) - a|_1 + |v * (K~^T u) - b|_1`` is
   compared with ``tol / 2``.  A problem is recorded at the check where it first converges (so its result does not
   depend on the rest of the batch, e.g. on the chunking), and once a quarter of the active problems has left, the
   tensors are compacted, so converged problems stop costing work.  That check is the one host synchronisation
   of the loop.
4. Problems whose error decreases so slowly that more than 50 further iterations are predicted (from the rate
   observed between two checks, after at least 20 iterations), and those still active after ``max_iter``
   iterations, get up to ``newton_steps`` damped Newton steps on the dual in float64 (:mod:`diml.ot.newton`),
   checked and compacted after every step.  These are typically near-duplicate images, whose plan is almost a
   permutation and whose Sinkhorn contraction is slow at small ``eps``.  On this 2-core CPU one Newton step costs
   about as much as 50-100 Sinkhorn iterations of the same problem and 5-10 steps reach 1e-12.

On a CPU, without autograd and for kernels that need no shifts (DIML's cosine costs), steps 2-3 run compiled
(:mod:`diml.ot._cpu`, numba): the same updates, checks and switch rule, one problem per vector lane, each problem
leaving at its own check; about 4x faster per iteration than the tensor loop on this 2-core CPU.

Zero-mass rows/columns (``a_i = 0``) are supported: their potential is ``-inf`` (held internally as a large finite
negative number so that no ``inf - inf`` can appear) and their plan row/column is exactly zero.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from diml.ot import _cpu, _gpu, _options, newton
from diml.ot._scaling import (
    ABSORB_LOG,
    MIN_ITERS,
    SWITCH_ITERS,
    LogKernel,
    Outputs,
    initial_kernel,
    scaling_phase,
)
from diml.ot.newton import gibbs_plan, newton_step
from diml.options import OTOptions, as_options


class SinkhornResult(NamedTuple):
    """Result of :func:`sinkhorn` for ``B`` problems of size ``n x m``.

    Attributes:
        plan: ``(B, n, m)`` transport plans :math:`T`.
        f: ``(B, n)`` row potentials (cost units; ``-inf`` where ``a_i = 0``).
        g: ``(B, m)`` column potentials (cost units; ``-inf`` where ``b_j = 0``); ``T = exp((f_i + g_j - C_ij)/eps)``.
        iterations: largest number of Sinkhorn iterations any problem used.
        newton_steps: largest number of Newton steps any problem used (0 if none needed the polish).
        converged: ``(B,)`` bool, ``marginal_error <= tol``.
        marginal_error: ``(B,)`` ``|T 1 - a|_1 + |T^T 1 - b|_1`` of the returned plan (accumulated in float64).
        problem_iterations: ``(B,)`` int64 Sinkhorn iterations used by each problem (counted at the check where it
            left the active set).
        problem_newton_steps: ``(B,)`` int64 Newton steps used by each problem (0: Sinkhorn alone).
    """

    plan: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    iterations: int
    newton_steps: int
    converged: torch.Tensor
    marginal_error: torch.Tensor
    problem_iterations: torch.Tensor
    problem_newton_steps: torch.Tensor


def sinkhorn(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, ot: OTOptions = OTOptions()) -> SinkhornResult:
    """Solve ``B`` entropic OT problems at once (see the module docstring for the method).

    Args:
        cost: ``(B, n, m)`` cost matrices :math:`C`.
        a: ``(B, n)`` non-negative row marginals; ``b``: ``(B, m)`` column marginals with the same mass per problem
            (to 1e-3 relative, 8 machine epsilons for bfloat16; ``b`` is rescaled to the mass of ``a`` so that tight
            tolerances are reachable).
        ot: :class:`~diml.ot.OTOptions`: ``eps`` (kernel ``exp(-C / eps)``), ``max_iter`` (Sinkhorn iterations
            before the unconverged problems switch to the Newton polish), ``tol`` (target marginal error
            ``|T 1 - a|_1 + |T^T 1 - b|_1`` per problem), ``newton_steps`` (0 disables the polish),
            ``check_every`` (iterations between two convergence checks, each one host sync) and ``grad``
            (``"plan_constant"``: the plan carries no gradient; ``"autodiff"``: differentiate through every
            iteration, the compaction and the Newton steps).  ``ot.marginals`` is not used (``a`` and ``b`` are).

    Returns: :class:`SinkhornResult`.  Half-precision inputs are solved and returned in float32, float64 in float64.
    """
    ot = as_options(ot)
    _check_problem(cost, a, b)
    dtype = _options.working_dtype(cost, a, b)
    lk = LogKernel(cost.to(dtype), -1.0 / float(ot.eps), 0.0)
    return solve(lk, a.to(dtype), b.to(dtype), ot, direct=False)


def _check_problem(cost, a, b) -> None:
    _options.check_tensor("cost", cost, 3, "(B, n, m)")
    _options.check_tensor("a", a, 2, "(B, n)")
    _options.check_tensor("b", b, 2, "(B, m)")
    B, n, m = cost.shape
    if tuple(a.shape) != (B, n) or tuple(b.shape) != (B, m):
        raise ValueError(
            f"a and b must have shapes (B, n) = {(B, n)} and (B, m) = {(B, m)} to match cost {tuple(cost.shape)} "
            f"(got {tuple(a.shape)} and {tuple(b.shape)})"
        )
    if B == 0:
        return
    a64, b64 = a.detach().double(), b.detach().double()
    if not bool(torch.isfinite(cost).all()):
        raise ValueError("cost must be finite; replace inf/nan entries (e.g. clamp the cost) before calling sinkhorn")
    if bool((a64 < 0).any() | (b64 < 0).any()) or not bool(torch.isfinite(a64).all() & torch.isfinite(b64).all()):
        raise ValueError("a and b must be finite and non-negative; clamp them with .clamp_min(0)")
    sa, sb = a64.sum(1), b64.sum(1)
    rel = max(1e-3, 8 * torch.finfo(a.dtype).eps, 8 * torch.finfo(b.dtype).eps)  # half inputs round their sums
    if bool((sa <= 0).any()) or bool(((sa - sb).abs() > rel * sa).any()):
        raise ValueError("a and b must have the same positive mass per problem; normalise both to sum to 1")


def solve(lk: LogKernel, a, b, ot: OTOptions, *, direct: bool) -> SinkhornResult:
    """Validated-input core shared by :func:`sinkhorn` and :mod:`diml.ot.matching` (``lk``: the log-kernel source).

    ``direct=True`` promises that ``log K`` spans less than ~60 so the kernel is ``exp(log K)`` without shifts.
    """
    eps, tol = float(ot.eps), float(ot.tol)
    max_iter, newton_steps, check_every = ot.max_iter, ot.newton_steps, ot.check_every
    differentiable = ot.grad == "autodiff" and torch.is_grad_enabled()
    with torch.set_grad_enabled(differentiable):
        if not differentiable:
            lk, a, b = LogKernel(lk.source.detach(), lk.scale, lk.shift), a.detach(), b.detach()
        B, n, m = lk.source.shape
        b = b * (a.sum(1, keepdim=True) / b.sum(1, keepdim=True))  # equal masses to the last bit
        outputs = Outputs(B, n, m, lk.source.dtype, lk.source.device, differentiable)
        newton_used = 0
        if B:
            kernel, x, y = initial_kernel(lk, direct)
            if _gpu.applies(kernel, direct=direct, differentiable=differentiable):  # Triton: both phases, 2 launches
                newton_used = _gpu.solve(lk, kernel, a, b, outputs, max_iter=max_iter, tol=tol,
                                         check_every=check_every, min_iters=MIN_ITERS, switch_iters=SWITCH_ITERS,
                                         newton_steps=newton_steps, absorb_log=ABSORB_LOG,
                                         trust=newton.MAX_LOG_SHIFT, armijo=newton.ARMIJO, halvings=newton.HALVINGS)
                rest = None
            elif _cpu.applies(kernel, direct=direct, differentiable=differentiable):  # compiled, one problem at a time
                rest = _cpu.scale(kernel, a, b, outputs, max_iter=max_iter, tol=tol, check_every=check_every,
                                  min_iters=MIN_ITERS, switch_iters=SWITCH_ITERS, polish=newton_steps > 0,
                                  absorb_log=ABSORB_LOG)
            else:
                rest = scaling_phase(lk, kernel, x, y, a, b, outputs, max_iter=max_iter, tol=tol,
                                     check_every=check_every, polish=newton_steps > 0)
            if rest is not None:
                newton_used = _newton_phase(lk, a, b, *rest, outputs, steps=newton_steps, tol=tol,
                                            compiled=_cpu.applies_polish(kernel, differentiable=differentiable))
        x, y, plan = outputs.finish() if B else (a.clone(), b.clone(), lk.source.clone())
        err = _final_error(plan, a, b)
        neg_inf = torch.tensor(float("-inf"), dtype=plan.dtype, device=plan.device)
        f, g = torch.where(a > 0, eps * x, neg_inf), torch.where(b > 0, eps * y, neg_inf)
        iters = outputs.iterations
        most = outputs.max_iterations if outputs.max_iterations is not None else int(iters.max()) if B else 0
        return SinkhornResult(plan, f, g, most, newton_used, err <= tol, err, iters,
                              outputs.newton_steps)


def _final_error(plan, a, b) -> torch.Tensor:
    """Marginal error of the returned plan (row/column sums in the plan's dtype, differences in float64)."""
    with torch.no_grad():
        a64, b64 = a.detach().double(), b.detach().double()
        rows, cols = plan.detach().sum(2).double(), plan.detach().sum(1).double()
        return (rows - a64).abs().sum(1) + (cols - b64 * (a64.sum(1, keepdim=True) / b64.sum(1, keepdim=True))
                                            ).abs().sum(1)


def _newton_phase(lk: LogKernel, a, b, idx, x, y, iters, outputs: Outputs, *, steps, tol, compiled) -> int:
    """Step 4 of the module docstring (all float64).  Returns the largest number of steps used.

    ``compiled``: the same steps in :func:`diml.ot._cpu.newton_polish` (CPU, no autograd)."""
    log_k = lk.log_kernel(idx, torch.float64)
    a64, b64 = a[idx].double(), b[idx].double()
    b64 = b64 * (a64.sum(1, keepdim=True) / b64.sum(1, keepdim=True))
    x, y, used = x.double(), y.double(), 0
    if steps == 0:  # no polish: report the Sinkhorn iterate as it is
        outputs.add(idx, x, y, gibbs_plan(log_k, x, y), iters)
        return 0
    if compiled:
        return _cpu.newton_polish(log_k, a64, b64, x, y, outputs, idx, iters, steps=steps, tol=tol,
                                  trust=newton.MAX_LOG_SHIFT, armijo=newton.ARMIJO, halvings=newton.HALVINGS)
    plan = gibbs_plan(log_k, x, y)
    for step in range(steps + 1):
        rows, cols = plan.sum(2), plan.sum(1)
        done = (rows - a64).abs().sum(1) + (cols - b64).abs().sum(1) <= 0.5 * tol
        if step == steps:
            done = torch.ones_like(done)
        finished = done.nonzero().squeeze(1)  # one host sync per step; gathers by index below do not sync
        if len(finished):
            used = max(used, step)
            outputs.add(*(t.index_select(0, finished) for t in (idx, x, y, plan, iters)), step)
            if len(finished) == len(done):
                break
            keep = (~done).nonzero().squeeze(1)
            idx, a64, b64, x, y, plan, iters, rows, cols = (
                t.index_select(0, keep) for t in (idx, a64, b64, x, y, plan, iters, rows, cols))
        x, y, plan = newton_step(plan, rows, cols, a64, b64, x, y)
    return used
