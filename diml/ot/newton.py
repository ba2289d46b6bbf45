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
``x + t, y - t``) is removed by adding :math:`\mathbf 1_s \mathbf 1_s^\top` on the support ``s`` of ``b``: the
right-hand side sums to zero, so the solution is the Newton step with ``sum_j dy_j = 0``.  Zero-mass rows/columns
stay fixed.

Each step is capped to a trust region (no log-plan entry moves by more than 8) and followed by a backtracking
line search on the problems that need it (Armijo test on the dual).
Measured on near-duplicate 4x4 grids (C=128, eps=0.05) after 100 Sinkhorn iterations, this reaches marginal errors
around ``1e-14`` in 10-14 steps in float64; without the trust region the line search needs steps as small as
``2^-15`` and a fixed ``1 .. 1/32`` search stalls at ``1e-2``.  In float32 the iteration stalls near ``1e-2``, which is
why the polish always runs in float64.
"""

from __future__ import annotations

import torch

HALVINGS = 5  # backtracking rounds of the line search
MAX_LOG_SHIFT = 8.0  # trust region: no log-plan entry moves by more than this in one step
ARMIJO = 1e-4  # sufficient-increase constant of the line search


def gibbs_plan(log_k: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``T = exp(log_k + x_i + y_j)``: ``log_k (B, n, m)``, ``x (B, n)``, ``y (B, m)`` -> ``(B, n, m)``."""
    return torch.exp(log_k + x.unsqueeze(2) + y.unsqueeze(1))


def newton_direction(plan: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """Newton ascent direction of the dual at the current plan.

    Args: ``plan (B, n, m)`` with row sums ``rows (B, n)`` and column sums ``cols (B, m)``; ``a (B, n)``,
    ``b (B, m)`` (float64).  Returns ``dx (B, n)``, ``dy (B, m)``.
    """
    gx, gy = a - rows, b - cols
    r_inv = torch.where(rows > 0, 1.0 / torch.where(rows > 0, rows, torch.ones_like(rows)), torch.zeros_like(rows))
    weights = plan.transpose(1, 2) @ (plan * r_inv.unsqueeze(2))  # W = T^T diag(1/r) T, (B, m, m)
    m = weights.shape[-1]
    off = 1.0 - torch.eye(m, dtype=plan.dtype, device=plan.device)
    weights = weights * off  # the Laplacian only needs the off-diagonal weights
    support = (b > 0).to(plan.dtype)
    degree = weights.sum(2) + (1.0 - support)  # zero-mass columns get a unit diagonal and stay fixed
    ridge = 1e-13 * degree.amax(1, keepdim=True)  # keeps the factorisation defined if underflow disconnects it
    system = support.unsqueeze(2) * support.unsqueeze(1) - weights + torch.diag_embed(degree + ridge)
    rhs = gy - (plan.transpose(1, 2) @ (r_inv * gx).unsqueeze(2)).squeeze(2)
    chol, info = torch.linalg.cholesky_ex(system)
    dy = torch.cholesky_solve(rhs.unsqueeze(2), chol).squeeze(2)
    dy = torch.where((info == 0).unsqueeze(1), dy, torch.zeros_like(dy))  # never step along a failed solve
    dx = r_inv * (gx - (plan @ dy.unsqueeze(2)).squeeze(2))
    return dx, dy


def newton_step(plan, rows, cols, a, b, x, y):
    """One damped Newton step.  Returns updated ``x (B, n)``, ``y (B, m)`` and the plan at the new point.

    Far from the optimum the Newton direction of a near-permutation plan is huge along almost flat directions of
    the dual (the exponential makes the quadratic model poor there), so the step is first capped so that no
    log-plan entry moves by more than ``MAX_LOG_SHIFT`` (a trust region, step ``t0``).  The dual gain
    ``D(t) - D(0) = t (<dx, a> + <dy, b>) - sum_ij T_ij expm1(t (dx_i + dy_j))`` must pass the Armijo test
    (gain >= 1e-4 t slope); problems that fail halve their step, up to five times, on a shrinking subset (one host
    sync per round), else take no step.  The new plan is ``T * exp(t (dx_i + dy_j))``, reused by the next step.
    """
    dx, dy = newton_direction(plan, rows, cols, a, b)
    slope = (dx * (a - rows)).sum(1) + (dy * (b - cols)).sum(1)  # g . H^-1 g > 0
    linear = (dx * a).sum(1) + (dy * b).sum(1)  # (B,)
    shift = torch.where(plan > 0, dx.unsqueeze(2) + dy.unsqueeze(1), torch.zeros_like(plan))  # (B, n, m)
    t = (MAX_LOG_SHIFT / torch.linalg.vector_norm(shift, ord=float("inf"), dim=(1, 2)).clamp_min(1e-300)
         ).clamp(max=1.0)
    growth = plan * torch.expm1(t.view(-1, 1, 1) * shift)
    ok = t * linear - growth.sum((1, 2)) >= ARMIJO * t * slope
    new_plan = plan + growth * ok.view(-1, 1, 1)
    todo = (~ok).nonzero().squeeze(1)  # the host sync of the line search
    for halving in range(1, HALVINGS + 1):
        if len(todo) == 0:
            break
        t_todo, plan_todo = 0.5 * t[todo], plan[todo]
        growth = plan_todo * torch.expm1(t_todo.view(-1, 1, 1) * shift[todo])
        ok = t_todo * linear[todo] - growth.sum((1, 2)) >= ARMIJO * t_todo * slope[todo]
        new_plan = new_plan.index_copy(0, todo, plan_todo + growth * ok.view(-1, 1, 1))
        last = halving == HALVINGS
        t = t.index_copy(0, todo, torch.where(ok, t_todo, torch.zeros_like(t_todo) if last else t_todo))
        todo = todo[~ok] if not last else todo[:0]
    return x + t.unsqueeze(1) * dx, y + t.unsqueeze(1) * dy, new_plan
