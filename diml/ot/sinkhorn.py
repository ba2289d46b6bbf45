r"""Batched entropic optimal transport: stabilised Sinkhorn with an active set, then a float64 Newton polish.

For ``B`` problems with costs :math:`C_b \in \mathbb R^{n\times m}` and marginals :math:`a_b, b_b` (equal masses) we
solve (Cuturi 2013, eq. 2)

.. math::
    T^\star = \arg\min_{T \ge 0,\; T\mathbf 1 = a,\; T^\top \mathbf 1 = b} \langle T, C\rangle - \varepsilon H(T),
    \qquad T^\star_{ij} = \exp\big((f_i + g_j - C_{ij})/\varepsilon\big),

where ``f, g`` are the dual potentials.  Numerics, in order:

1. One log-domain half-step pair (``x = log a - LSE_j(log K + y)``, ``y = log b - LSE_i(log K + x)``) gives a
   normalised kernel ``K~ = exp(log K + x + y)`` whose entries are at most 1.
2. Scaling (matrix-vector) Sinkhorn iterations ``u = a / (K~ v)``, ``v = b / (K~^T u)`` in the working precision
   (float32 unless the input is float64): two tiny batched mat-vecs per iteration and no ``exp``.  The kernel is a
   fixed rounding of the problem, so the iteration converges to the precision of the working dtype instead of
   stalling on the rounding of ``exp(log K + x + y)`` with large potentials.  Scalings that leave ``[e^-15, e^15]``
   are absorbed into ``x, y`` and ``K~`` is recomputed for those problems only (stabilised Sinkhorn, Schmitzer 2019).
3. Every ``check_every`` iterations the row-marginal error ``|u * (K~ v) - a|_1`` (columns are exact after the
   ``v`` update) is compared with ``tol / 2``; problems that converged leave the active set (the tensors are
   compacted), so they stop costing work.  That check is the only host synchronisation of the loop.
4. Problems still active after ``max_iter`` iterations (typically near-duplicate images, whose plan is almost a
   permutation and whose Sinkhorn contraction is slow at small ``eps``) get up to ``newton_steps`` damped Newton steps
   on the dual in float64 (:mod:`diml.ot.newton`), checked and compacted after every step.

Zero-mass rows/columns (``a_i = 0``) are supported: their potential is ``-inf`` (stored internally as a large finite
negative number so that no ``inf - inf`` can appear) and their plan row/column is exactly zero.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from diml.ot import _options
from diml.ot.newton import gibbs_plan, marginal_error, newton_step

_ABSORB_LOG = 15.0  # absorb scalings into the potentials once |log u| or |log v| exceeds this


class SinkhornResult(NamedTuple):
    """Result of :func:`sinkhorn` for ``B`` problems of size ``n x m``.

    Attributes:
        plan: ``(B, n, m)`` transport plans :math:`T`.
        f: ``(B, n)`` row potentials (cost units; ``-inf`` where ``a_i = 0``).
        g: ``(B, m)`` column potentials (cost units; ``-inf`` where ``b_j = 0``); ``T = exp((f_i + g_j - C_ij)/eps)``.
        iterations: largest number of Sinkhorn iterations any problem used.
        newton_steps: largest number of Newton steps any problem used (0 if none needed the polish).
        converged: ``(B,)`` bool, ``marginal_error <= tol``.
        marginal_error: ``(B,)`` ``|T 1 - a|_1 + |T^T 1 - b|_1`` of the returned plan (computed in float64).
        problem_iterations: ``(B,)`` int64 Sinkhorn iterations used by each problem.
    """

    plan: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    iterations: int
    newton_steps: int
    converged: torch.Tensor
    marginal_error: torch.Tensor
    problem_iterations: torch.Tensor


def sinkhorn(
    cost: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    eps: float,
    max_iter: int = 100,
    tol: float = 1e-6,
    newton_steps: int = 30,
    check_every: int = 10,
    grad: str = "plan_constant",
) -> SinkhornResult:
    """Solve ``B`` entropic OT problems at once (see the module docstring for the method).

    Args:
        cost: ``(B, n, m)`` cost matrices :math:`C`.
        a: ``(B, n)`` non-negative row marginals; ``b``: ``(B, m)`` column marginals with the same mass per problem
            (to 1e-3 relative, 8 machine epsilons for bfloat16; ``b`` is rescaled to the mass of ``a`` so that tight tolerances are reachable).
        eps: entropic regularisation :math:`\\varepsilon` (kernel ``exp(-C / eps)``).
        max_iter: Sinkhorn iterations before the unconverged problems switch to the Newton polish.
        tol: target marginal error ``|T 1 - a|_1 + |T^T 1 - b|_1`` per problem.
        newton_steps: maximal float64 Newton steps for problems Sinkhorn did not converge (0 disables).
        check_every: iterations between two convergence checks (each check is one host sync).
        grad: ``"plan_constant"`` (the returned plan carries no gradient) or ``"autodiff"`` (differentiate through
            every iteration, the compaction and the Newton steps).

    Returns: :class:`SinkhornResult`.  Half-precision inputs are solved and returned in float32, float64 in float64.
    """
    _options.check_solver_options(
        eps=eps, max_iter=max_iter, tol=tol, grad=grad, newton_steps=newton_steps, check_every=check_every
    )
    _check_problem(cost, a, b)
    dtype = _options.working_dtype(cost, a, b)
    with torch.set_grad_enabled(grad == "autodiff" and torch.is_grad_enabled()):
        if grad == "plan_constant":
            cost, a, b = cost.detach(), a.detach(), b.detach()
        return _solve(cost.to(dtype), a.to(dtype), b.to(dtype), eps=float(eps), max_iter=max_iter, tol=float(tol),
                      newton_steps=newton_steps, check_every=check_every)


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
    if bool((a64 < 0).any()) or bool((b64 < 0).any()) or not bool(torch.isfinite(a64).all() & torch.isfinite(b64).all()):
        raise ValueError("a and b must be finite and non-negative; clamp them with .clamp_min(0)")
    sa, sb = a64.sum(1), b64.sum(1)
    rel = max(1e-3, 8 * torch.finfo(a.dtype).eps, 8 * torch.finfo(b.dtype).eps)  # half inputs round their sums
    if bool((sa <= 0).any()) or bool(((sa - sb).abs() > rel * sa).any()):
        raise ValueError("a and b must have the same positive mass per problem; normalise both to sum to 1")


def _solve(cost, a, b, *, eps, max_iter, tol, newton_steps, check_every) -> SinkhornResult:
    B, n, m = cost.shape
    b = b * (a.sum(1, keepdim=True) / b.sum(1, keepdim=True))  # equal masses to the last bit
    if B == 0:
        empty = cost.new_zeros((0,))
        return SinkhornResult(cost.clone(), a.clone(), b.clone(), 0, 0, empty.bool(), empty.double(), empty.long())
    log_k = cost / (-eps)
    groups, rest = _scaling_phase(log_k, a, b, max_iter=max_iter, tol=tol, check_every=check_every)
    newton_used = 0
    if rest is not None:
        idx, x, y, plan, iters = rest
        if newton_steps > 0:
            a64, b64 = a[idx].double(), b[idx].double()
            b64 = b64 * (a64.sum(1, keepdim=True) / b64.sum(1, keepdim=True))
            done, newton_used = _newton_phase(log_k[idx].double(), a64, b64, x.double(), y.double(), idx, iters,
                                              steps=newton_steps, tol=tol)
            groups.extend(done)
        else:
            groups.append((idx, x, y, plan, iters))
    idx = torch.cat([g[0] for g in groups])
    order = torch.argsort(idx)
    x = torch.cat([g[1].to(cost.dtype) for g in groups])[order]
    y = torch.cat([g[2].to(cost.dtype) for g in groups])[order]
    plan = torch.cat([g[3].to(cost.dtype) for g in groups])[order]
    iters = torch.cat([torch.full((len(g[0]),), g[4], dtype=torch.int64, device=cost.device) for g in groups])[order]
    with torch.no_grad():
        a64, b64 = a.detach().double(), b.detach().double()
        err = marginal_error(plan.detach().double(), a64, b64 * (a64.sum(1, keepdim=True) / b64.sum(1, keepdim=True)))
    neg_inf = torch.tensor(float("-inf"), dtype=cost.dtype, device=cost.device)
    f = torch.where(a > 0, eps * x, neg_inf)
    g = torch.where(b > 0, eps * y, neg_inf)
    return SinkhornResult(plan, f, g, int(iters.max()) if B else 0, newton_used, err <= tol, err, iters)


def _safe_log(value: torch.Tensor, support: torch.Tensor, neg: float) -> torch.Tensor:
    """``log(value)`` on the support and ``neg`` elsewhere, with finite gradients everywhere."""
    return torch.where(support, torch.log(torch.where(support, value, torch.ones_like(value))), neg)


def _scaling_phase(log_k, a, b, *, max_iter, tol, check_every):
    """Steps 1-3 of the module docstring.

    Returns ``(groups, rest)``: ``groups`` is a list of finished ``(idx, x, y, plan, iterations)`` and ``rest`` the
    same tuple for the problems still unconverged after ``max_iter`` iterations (or ``None``).
    """
    B = log_k.shape[0]
    neg = torch.finfo(log_k.dtype).min / 4
    tiny = torch.finfo(log_k.dtype).tiny
    pos_a, pos_b = a > 0, b > 0
    x = _safe_log(a, pos_a, neg) - torch.logsumexp(log_k, dim=2)
    y = _safe_log(b, pos_b, neg) - torch.logsumexp(log_k + x.unsqueeze(2), dim=1)
    kernel = gibbs_plan(log_k, x, y)
    idx = torch.arange(B, device=log_k.device)
    u = torch.ones_like(a)
    v = torch.ones_like(b)
    kv = kernel.sum(2)
    iters, groups = 1, []
    while True:
        err = (u * kv - a).abs().sum(1)
        done = err <= 0.5 * tol
        n_done = int(done.sum())  # the one host sync of this check
        if n_done or iters >= max_iter:
            state = _absorb(x, y, u, v, pos_a, pos_b, neg)
            plan = u.unsqueeze(2) * kernel * v.unsqueeze(1)
            if n_done:
                groups.append((idx[done], state[0][done], state[1][done], plan[done], iters))
            if iters >= max_iter or n_done == len(idx):
                keep = ~done
                rest = (idx[keep], state[0][keep], state[1][keep], plan[keep], iters) if bool(keep.any()) else None
                return groups, rest
            keep = ~done
            idx, log_k, a, b, pos_a, pos_b = idx[keep], log_k[keep], a[keep], b[keep], pos_a[keep], pos_b[keep]
            x, y, u, v, kernel, kv = x[keep], y[keep], u[keep], v[keep], kernel[keep], kv[keep]
        x, y, u, v, kernel, kv = _maybe_absorb(log_k, x, y, u, v, kernel, kv, pos_a, pos_b, neg)
        for _ in range(min(check_every, max_iter - iters)):
            u = a / kv.clamp_min(tiny)
            v = b / (u.unsqueeze(1) @ kernel).squeeze(1).clamp_min(tiny)
            kv = (kernel @ v.unsqueeze(2)).squeeze(2)
            iters += 1


def _absorb(x, y, u, v, pos_a, pos_b, neg):
    """Potentials with the scalings folded in: ``x + log u``, ``y + log v`` (``neg`` off the support)."""
    return (torch.where(pos_a, x + _safe_log(u, pos_a, neg), neg), torch.where(pos_b, y + _safe_log(v, pos_b, neg), neg))


def _maybe_absorb(log_k, x, y, u, v, kernel, kv, pos_a, pos_b, neg):
    """Absorb the scalings of the problems whose ``|log u|`` or ``|log v|`` exceeds ``_ABSORB_LOG``."""
    lu = _safe_log(u, pos_a, 0.0).abs().amax(1)
    lv = _safe_log(v, pos_b, 0.0).abs().amax(1)
    need = (lu > _ABSORB_LOG) | (lv > _ABSORB_LOG)
    if not bool(need.any()):
        return x, y, u, v, kernel, kv
    sel = need.nonzero().squeeze(1)
    xs, ys = _absorb(x[sel], y[sel], u[sel], v[sel], pos_a[sel], pos_b[sel], neg)
    ks = gibbs_plan(log_k[sel], xs, ys)
    x, y = x.index_copy(0, sel, xs), y.index_copy(0, sel, ys)
    u, v = u.index_fill(0, sel, 1.0), v.index_fill(0, sel, 1.0)
    kernel = kernel.index_copy(0, sel, ks)
    kv = kv.index_copy(0, sel, ks.sum(2))
    return x, y, u, v, kernel, kv


def _newton_phase(log_k, a, b, x, y, idx, iters, *, steps, tol):
    """Step 4 of the module docstring (all float64).  Returns finished groups and the largest step count used."""
    groups, used = [], 0
    for step in range(steps + 1):
        plan = gibbs_plan(log_k, x, y)
        done = marginal_error(plan, a, b) <= 0.5 * tol
        if step == steps:
            done = torch.ones_like(done)
        if bool(done.any()):
            used = max(used, step)
            groups.append((idx[done], x[done], y[done], plan[done], iters))
            keep = ~done
            if not bool(keep.any()):
                break
            idx, log_k, a, b, x, y, plan = idx[keep], log_k[keep], a[keep], b[keep], x[keep], y[keep], plan[keep]
        x, y = newton_step(plan, a, b, x, y)
    return groups, used
