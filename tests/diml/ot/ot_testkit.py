"""Shared helpers of the diml.ot tests: feature generators and the POT float64 reference."""

from __future__ import annotations

import numpy as np
import ot
import torch
import torch.nn.functional as F


def random_images(n: int, channels: int = 32, cells: int = 16, *, seed: int = 0):
    """``n`` images with independent Gaussian cells: ``local (n, C, R)``, ``global (n, C)`` (unnormalised)."""
    gen = torch.Generator().manual_seed(seed)
    local = torch.randn(n, channels, cells, generator=gen, dtype=torch.float64)
    return local, local.mean(2) + 0.3 * torch.randn(n, channels, generator=gen, dtype=torch.float64)


def near_duplicates(images, noise: float = 0.03, *, seed: int = 1):
    """A near-duplicate of every image: each cell and the global vector perturbed by ``noise`` (relative)."""
    local, glob = images
    gen = torch.Generator().manual_seed(seed)
    scale_l = local.norm(dim=1, keepdim=True) / local.shape[1] ** 0.5
    scale_g = glob.norm(dim=1, keepdim=True) / glob.shape[1] ** 0.5
    return (local + noise * scale_l * torch.randn(local.shape, generator=gen, dtype=local.dtype),
            glob + noise * scale_g * torch.randn(glob.shape, generator=gen, dtype=glob.dtype))


def correlated_images(n: int, channels: int = 32, cells: int = 16, *, seed: int = 0):
    """Images whose cells share an image-level component (cosines between cells of one image around 0.5)."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, channels, 1, generator=gen, dtype=torch.float64)
    local = shared + torch.randn(n, channels, cells, generator=gen, dtype=torch.float64)
    return local, local.mean(2)


def reference_terms(q_local, q_global, r_local, r_global, marginals: str = "cross_attention"):
    """Hand-written float64 loop over pairs: ``S (Nq, Nr, R, R)``, ``a (Nq, Nr, R)``, ``b (Nq, Nr, R)``."""
    nq, nr, r = q_local.shape[0], r_local.shape[0], q_local.shape[2]
    S = torch.zeros(nq, nr, r, r, dtype=torch.float64)
    a = torch.zeros(nq, nr, r, dtype=torch.float64)
    b = torch.zeros(nq, nr, r, dtype=torch.float64)
    for p in range(nq):
        for q in range(nr):
            qc = F.normalize(q_local[p].double(), dim=0)
            rc = F.normalize(r_local[q].double(), dim=0)
            S[p, q] = qc.T @ rc
            if marginals == "uniform":
                a[p, q] = b[p, q] = 1.0 / r
                continue
            att_a = torch.relu(F.normalize(r_global[q].double(), dim=0) @ qc)
            att_b = torch.relu(F.normalize(q_global[p].double(), dim=0) @ rc)
            a[p, q] = att_a / att_a.sum() if att_a.sum() > 0 else torch.full((r,), 1.0 / r, dtype=torch.float64)
            b[p, q] = att_b / att_b.sum() if att_b.sum() > 0 else torch.full((r,), 1.0 / r, dtype=torch.float64)
    return S, a, b


def pot_plan(cost, a, b, eps: float, stop: float = 1e-10, max_iter: int = 200_000) -> np.ndarray:
    """POT's float64 log-domain Sinkhorn on one problem (zero-mass rows/columns removed, then put back)."""
    cost, a, b = (np.asarray(t.detach().double().numpy() if torch.is_tensor(t) else t, dtype=np.float64)
                  for t in (cost, a, b))
    rows, cols = a > 0, b > 0
    plan = np.zeros_like(cost)
    sub = ot.sinkhorn(a[rows] / a.sum(), b[cols] / b.sum(), cost[np.ix_(rows, cols)], eps, method="sinkhorn_log",
                      numItermax=max_iter, stopThr=stop)
    plan[np.ix_(rows, cols)] = sub * a.sum()
    return plan


def pot_plans_batched(cost, a, b, eps: float, tol: float = 1e-10) -> torch.Tensor:
    """POT's batched float64 log-domain solver (``ot.batch.solve_batch``) run to a tight tolerance: ``(B, n, m)``.

    Used for near-duplicate problems, which need thousands of Sinkhorn iterations: one batched call is much
    faster than ``ot.sinkhorn`` per problem.
    """
    res = ot.batch.solve_batch(cost.double(), eps, a=a.double(), b=b.double(), max_iter=500_000, tol=tol,
                               method="log_sinkhorn", grad="detach")
    return res.plan


def certified_plan(cost, a, b, eps: float) -> torch.Tensor:
    """A float64 plan whose optimality is verified independently of the solver that produced it.

    For near-permutation problems (near-duplicate images with uniform marginals) POT's Sinkhorn needs more than
    10^5 iterations, too slow for a test.  The entropic problem is strictly convex, so a plan of Gibbs form
    ``exp((f_i + g_j - C_ij) / eps)`` with exact marginals is *the* optimum: we obtain candidate potentials from
    ``diml.ot.sinkhorn`` in float64, rebuild the plan from them with the formula, check its marginals to 1e-11,
    and let POT's own log-domain Sinkhorn, warm-started at those potentials, confirm the fixed point.
    """
    from diml.ot import OTOptions, sinkhorn

    cost, a, b = cost.double(), a.double(), b.double()
    res = sinkhorn(cost, a, b, ot=OTOptions(eps=eps, tol=1e-13, max_iter=200, newton_steps=60))
    plans = []
    for k in range(cost.shape[0]):
        rows, cols = a[k] > 0, b[k] > 0
        f, g = res.f[k][rows], res.g[k][cols]
        sub = torch.exp((f[:, None] + g[None, :] - cost[k][rows][:, cols]) / eps)
        assert float((sub.sum(1) - a[k][rows]).abs().sum() + (sub.sum(0) - b[k][cols]).abs().sum()) <= 1e-11
        pot, log = ot.sinkhorn(a[k][rows].numpy(), b[k][cols].numpy(), cost[k][rows][:, cols].numpy(), eps,
                               method="sinkhorn_log", warmstart=((f / eps).numpy(), (g / eps).numpy()),
                               numItermax=1000, stopThr=1e-11, log=True)
        assert log["niter"] <= 10 and np.abs(pot - sub.numpy()).max() <= 1e-11
        plan = torch.zeros_like(cost[k])
        plan[torch.outer(rows, cols)] = sub.reshape(-1)
        plans.append(plan)
    return torch.stack(plans)
