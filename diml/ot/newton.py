r"""Batched damped Newton polish of the entropic-OT dual, in float64.

With scaled log-potentials :math:`x = f/\varepsilon`, :math:`y = g/\varepsilon` and :math:`\log K = -C/\varepsilon`
the plan is :math:`T_{ij} = \exp(\log K_{ij} + x_i + y_j)` and the (concave) dual objective is

.. math::
    D(x, y) = \langle x, a\rangle + \langle y, b\rangle - \sum_{ij} T_{ij}(x, y),
    \qquad \nabla D = (a - T\mathbf 1,\; b - T^\top \mathbf 1),
    \qquad -\nabla^2 D = \begin{pmatrix} \operatorname{diag}(r) & T \\ T^\top & \operatorname{diag}(c)\end{pmatrix},

with :math:`r = T\mathbf 1`, :math:`c = T^\top\mathbf 1`.  Eliminating :math:`\delta x = \operatorname{diag}(r)^{-1}
(g_x - T\delta y)` leaves an ``m x m`` system :math:`L\,\delta y = g_y - T^\top \operatorname{diag}(r)^{-1} g_x` whose
matrix :math:`L = \operatorname{diag}(c) - T^\top \operatorname{diag}(r)^{-1} T` is the graph Laplacian of the weights
:math:`W = T^\top \operatorname{diag}(r)^{-1} T` (because :math:`W\mathbf 1 = c`).  We build :math:`L` from the
off-diagonal weights only (``L_jj = sum_{k != j} W_jk``), which avoids the catastrophic cancellation of
``c_j - W_jj`` on near-duplicate images where the plan is almost a permutation.  The constant direction (the gauge
``x + t, y - t``) is removed by adding :math:`\mathbf 1_s \mathbf 1_s^\top` on the support ``s`` of ``b``: the right-hand
side sums to zero, so the solution is the minimum-norm Newton step.  Zero-mass rows/columns stay fixed.

Each step is capped to a trust region (no log-plan entry moves by more than 8) and followed by a batched
backtracking line search: the dual is evaluated at six step sizes at once and the best is taken (no host sync).
Measured on near-duplicate 4x4 grids (C=128, eps=0.05) after 100 Sinkhorn iterations, this reaches marginal errors
around ``1e-14`` in 10-14 steps in float64; without the trust region the line search needs steps as small as
``2^-15`` and a fixed ``1 .. 1/32`` search stalls at ``1e-2``.  In float32 the iteration stalls near ``1e-2``, which is
why the polish always runs in float64.
"""

from __future__ import annotations

import torch

_STEPS = 2.0 ** -torch.arange(6, dtype=torch.float64)  # relative candidate step sizes of the line search
_MAX_LOG_SHIFT = 8.0  # trust region: no log-plan entry moves by more than this in one step


def gibbs_plan(log_k: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``T = exp(log_k + x_i + y_j)``: ``log_k (B, n, m)``, ``x (B, n)``, ``y (B, m)`` -> ``(B, n, m)``."""
    return torch.exp(log_k + x.unsqueeze(2) + y.unsqueeze(1))


def marginal_error(plan: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|T 1 - a|_1 + |T^T 1 - b|_1`` per problem: ``plan (B, n, m)`` -> ``(B,)``."""
    return (plan.sum(2) - a).abs().sum(1) + (plan.sum(1) - b).abs().sum(1)


def newton_direction(plan: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """Newton ascent direction of the dual at the current plan.

    Args: ``plan (B, n, m)``, ``a (B, n)``, ``b (B, m)`` (float64).  Returns ``dx (B, n)``, ``dy (B, m)``.
    """
    r, c = plan.sum(2), plan.sum(1)
    gx, gy = a - r, b - c
    r_inv = torch.where(r > 0, 1.0 / torch.where(r > 0, r, torch.ones_like(r)), torch.zeros_like(r))
    weights = plan.transpose(1, 2) @ (plan * r_inv.unsqueeze(2))  # W = T^T diag(1/r) T, (B, m, m)
    m = weights.shape[-1]
    eye = torch.eye(m, dtype=plan.dtype, device=plan.device)
    weights = weights * (1.0 - eye)
    laplacian = torch.diag_embed(weights.sum(2)) - weights
    support = (b > 0).to(plan.dtype)
    system = laplacian + support.unsqueeze(2) * support.unsqueeze(1) + torch.diag_embed(1.0 - support)
    # A tiny ridge keeps the factorisation defined if underflow disconnects the support graph.
    system = system + eye * (1e-13 * system.diagonal(dim1=1, dim2=2).amax(1)).view(-1, 1, 1)
    rhs = gy - (plan.transpose(1, 2) @ (r_inv * gx).unsqueeze(2)).squeeze(2)
    chol, info = torch.linalg.cholesky_ex(system)
    dy = torch.cholesky_solve(rhs.unsqueeze(2), chol).squeeze(2)
    dy = torch.where((info == 0).unsqueeze(1), dy, torch.zeros_like(dy))  # never step along a failed solve
    dx = r_inv * (gx - (plan @ dy.unsqueeze(2)).squeeze(2))
    return dx, dy


def newton_step(plan, a, b, x, y):
    """One damped Newton step: returns updated ``x (B, n)``, ``y (B, m)`` (float64).

    Far from the optimum the Newton direction of a near-permutation plan is huge along almost flat directions of
    the dual (the exponential makes the quadratic model poor there), so the step is first capped so that no
    log-plan entry moves by more than ``_MAX_LOG_SHIFT`` (a trust region), then the best of ``t0 * 2^-k``,
    ``k = 0..5`` is taken per problem from one batched evaluation of the dual gain
    ``D(t) - D(0) = t (<dx, a> + <dy, b>) - sum_ij T_ij expm1(t (dx_i + dy_j))`` (no step if none increases it).
    """
    dx, dy = newton_direction(plan, a, b)
    linear = (dx * a).sum(1) + (dy * b).sum(1)  # (B,)
    shift = torch.where(plan > 0, dx.unsqueeze(2) + dy.unsqueeze(1), torch.zeros_like(plan))  # (B, n, m)
    t0 = (_MAX_LOG_SHIFT / shift.abs().amax((1, 2)).clamp_min(1e-300)).clamp(max=1.0)
    steps = t0.unsqueeze(1) * _STEPS.to(device=plan.device)  # (B, L)
    gain = steps * linear.unsqueeze(1) - (
        plan.unsqueeze(1) * torch.expm1(steps.view(*steps.shape, 1, 1) * shift.unsqueeze(1))
    ).sum((2, 3))
    best_gain, best = gain.max(1)
    t = torch.where(best_gain > 0, steps.gather(1, best.unsqueeze(1)).squeeze(1), torch.zeros_like(best_gain))
    return x + t.unsqueeze(1) * dx, y + t.unsqueeze(1) * dy
