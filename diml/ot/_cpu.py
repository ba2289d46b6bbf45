"""Compiled CPU versions (numba) of the scaling phase (steps 2-3 of :mod:`diml.ot.sinkhorn`) and the Newton polish.

On a CPU the batched tensor iteration of :mod:`diml.ot._scaling` is bound by memory traffic and per-operation
overheads: every iteration streams the ``(B, n, m)`` kernel through two batched mat-vecs and a temporary, about
250 ns per problem and iteration at ``n = m = 16``.  Here :data:`LANES` problems iterate side by side in a
lane-last layout (``kb[i, j, lane]``, 64 KB at ``16 x 16``, cache resident), every update is a loop over lanes that
LLVM vectorises, each lane is checked on its own schedule and refilled with the next problem as soon as its problem
leaves: about 40-50 ns per problem and iteration (a per-problem kernel measured 130 ns: LLVM does not vectorise
16-long loops).  The Newton polish (float64, one problem at a time, its own small Cholesky) takes ``n + m``
``expm1`` per trial step instead of ``n m``; measured 17 us per near-duplicate problem against 75 us for the
batched tensor polish.  Both release the GIL and split large batches over torch's intra-op threads (outside the
per-thread blocks of :mod:`diml.ot._threads`, which run them in one thread each).

The algorithms are the tensor path's (same updates, same checks every ``check_every`` iterations, same switch rule,
same Newton steps and line search), so a problem takes the same number of iterations and Newton steps on both
paths up to a check decided by float rounding, and the plans agree to that rounding
(``tests/diml/ot/test_ot_cpu_kernel.py``).  One difference: a problem whose scalings leave ``[e^-30, e^30]`` goes to
the Newton polish instead of having its scalings absorbed (only degenerate marginals do that with the cosine
kernels this path serves).  The scaling kernel serves the non-differentiable solves of kernels that need no
stabilising shifts (``direct``: DIML's cosine costs at ``eps >= 1/30``), the polish every non-differentiable CPU
solve; autodiff and GPUs use the tensor path.

Similarity matrices (:func:`diml.ot.structural_similarity` and ``_candidates``, which keep no plans) use the same
scaling kernel fused with the rest of the pipeline (:func:`similarities`): the kernel ``exp((S - 1) / eps)`` is
taken as a problem is loaded into its lane and a converged problem leaves ``sum_ij T_ij S_ij`` instead of its plan,
which removes a dozen passes over ``(pairs, n, m)`` tensors (measured on all pairs of a 112-batch, one thread:
110-126 -> 70-76 ms).

Set ``DIML_OT_CPU_KERNEL=0`` to disable all three (then, as without numba installed, the tensor path runs).
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading

import numpy as np
import torch

from diml.ot._options import COSINE_LIMIT, check_cell_terms
from diml.ot._threads import over_ranges

# reassociation lets LLVM vectorise the row updates; no 'nnan'/'ninf' (zero-mass rows produce log(0) = -inf)
_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}
_COMPILE_LOCK = threading.Lock()

# numba is a declared dependency, but the library must keep working where it cannot be installed.  It is imported
# (and the kernels compiled, or loaded from numba's cache) on first use only: processes that never solve OT on a CPU
# (Ray drivers, GPU workers, embedding extraction) never load LLVM.
ENABLED = importlib.util.find_spec("numba") is not None and os.environ.get("DIML_OT_CPU_KERNEL", "1") != "0"
_COMPILED = False


def compile_kernels() -> None:
    """Import numba and replace the module's kernels by their compiled versions (idempotent, thread-safe)."""
    global _COMPILED, _load, _scale_problems, _cholesky_solve, _newton_problems, _polish_similarities
    with _COMPILE_LOCK:
        if _COMPILED:
            return
        import numba

        # the callees first: numba resolves a kernel's global callees when it compiles the caller
        _load = numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)(_load_py)
        _cholesky_solve = numba.njit(cache=True, nogil=True)(_cholesky_solve_py)
        _scale_problems = numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)(_scale_problems_py)
        _newton_problems = numba.njit(cache=True, nogil=True)(_newton_problems_py)
        _polish_similarities = numba.njit(cache=True, nogil=True)(_polish_similarities_py)
        _COMPILED = True


def applies(kernel: torch.Tensor, *, direct: bool, differentiable: bool) -> bool:
    """Whether :func:`scale` serves this solve: numba present and enabled, CPU, no autograd, no stabilising shifts."""
    return (direct and kernel.dtype in (torch.float32, torch.float64)
            and applies_polish(kernel, differentiable=differentiable))


def applies_polish(kernel: torch.Tensor, *, differentiable: bool) -> bool:
    """Whether :func:`newton_polish` serves the polish: numba present and enabled, CPU, no autograd."""
    return ENABLED and not differentiable and kernel.device.type == "cpu"


def scale(kernel, a, b, outputs, *, max_iter, tol, check_every, min_iters, switch_iters, polish, absorb_log):
    """Run the scaling phase on every problem of ``kernel (B, n, m)`` (contiguous, CPU) with marginals ``a, b``.

    Converged problems get their potentials ``x = log u``, ``y = log v`` and plan ``u_i K_ij v_j`` written into
    ``outputs``' buffers with their iteration counts.  Returns the problems left for the Newton polish as
    ``(idx, x, y, iterations)`` (``None`` if none), as :func:`diml.ot._scaling.scaling_phase` does.
    """
    compile_kernels()
    B = kernel.shape[0]
    status = np.empty(B, dtype=np.int8)
    arrays = (kernel.contiguous().numpy()[None], a.contiguous().numpy()[None], b.contiguous().numpy()[None])
    options = (int(max_iter), float(tol), int(check_every), int(min_iters), float(switch_iters), bool(polish),
               float(absorb_log), False, 1.0, 0.0)
    outs = (outputs.x.numpy(), outputs.y.numpy(), outputs.plan.numpy(), np.empty(1, dtype=outputs.plan.numpy().dtype),
            outputs.iterations.numpy(), status)
    over_ranges(lambda lo, hi: _scale_problems(*arrays, lo, hi, *options, *outs), B, 4 * LANES)
    neg = torch.finfo(outputs.x.dtype).min / 4  # log(0) held as a large finite negative number, as the tensor path
    for scalings, marginal in ((outputs.x, a), (outputs.y, b)):
        scalings.copy_(torch.where(marginal > 0, scalings.log(), neg))
    left = torch.from_numpy(status).nonzero().squeeze(1)
    if len(left) == 0:
        return None
    return left, outputs.x[left], outputs.y[left], outputs.iterations[left]


def applies_similarity(*terms: torch.Tensor, eps: float) -> bool:
    """Whether :func:`similarities` serves ``terms`` (cell similarities and marginals, or the unit inputs they are
    computed from): numba present and enabled, all on the CPU in float32 or float64, no gradient needed, and a
    kernel ``exp((S - 1) / eps)`` that needs no stabilising shifts."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in terms)
    return (ENABLED and all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in terms)
            and 2.0 / float(eps) <= 60.0 and not needs_grad)


def similarities(cell_sim, a, b, *, eps, max_iter, tol, check_every, min_iters, switch_iters, newton_steps,
                 absorb_log, trust, armijo, halvings) -> torch.Tensor:
    """DIML similarities ``sum_ij T_ij S_ij`` of ``cell_sim (Q, K, n, m)`` (any strides) with marginals
    ``a (Q, K, n)``, ``b (Q, K, m)``, solved as :func:`diml.ot.sinkhorn.solve` solves them but fused: the kernel
    ``exp((S - 1) / eps)`` is taken while a problem is loaded into its lane, and a problem that converges leaves
    its similarity, not its plan.  The pipeline of :func:`diml.ot.matching.solve_pairs` makes a dozen passes over
    ``(Q K, n, m)`` tensors (a contiguous copy of ``S``, its checks, the kernel, the plan, the final error, the
    similarity); here the cell similarities are read once more per problem, from cache, as it converges.  The few
    problems left for the Newton polish get it as in the tensor pipeline.

    Returns ``(Q, K)`` similarities in ``cell_sim``'s dtype.  Raises the ValueError of ``solve_pairs``
    (:func:`diml.ot._options.check_cell_terms`) when a cell similarity or marginal is not finite or a cosine leaves
    [-1, 1] (those problems are skipped, not solved).
    """
    compile_kernels()
    Q, K, n, m = cell_sim.shape
    B = Q * K
    src, a_np, b_np = cell_sim.detach().numpy(), a.detach().numpy(), b.detach().numpy()
    dt = src.dtype
    x, y = np.empty((B, n), dtype=dt), np.empty((B, m), dtype=dt)
    sim, iters, status = np.empty(B, dtype=dt), np.empty(B, dtype=np.int64), np.empty(B, dtype=np.int8)
    options = (int(max_iter), float(tol), int(check_every), int(min_iters), float(switch_iters), newton_steps > 0,
               float(absorb_log), True, 1.0 / float(eps), -1.0 / float(eps))
    outs = (x, y, np.empty((1, 1, 1), dtype=dt), sim, iters, status)
    over_ranges(lambda lo, hi: _scale_problems(src, a_np, b_np, lo, hi, *options, *outs), B, 4 * LANES)
    worst = int(status.max()) if B else 0
    if worst == 2:  # the kernel skipped invalid problems; the check says which rule they broke
        check_cell_terms(cell_sim, a, b)
        raise ValueError("the cell similarities or marginals are invalid (NaN, inf or cosines beyond [-1, 1])")
    if worst == 1:  # the polish, in float64, on the few slow problems: gathered, solved and reduced compiled
        options = (1.0 / float(eps), -1.0 / float(eps), int(newton_steps), float(tol), float(trust), float(armijo),
                   int(halvings))
        over_ranges(lambda lo, hi: _polish_similarities(src, a_np, b_np, x, y, status, lo, hi, *options, sim),
                    B, 4 * LANES)
    out = torch.from_numpy(sim)
    return out.view(Q, K)


def _polish_similarities_py(src, a, b, x, y, status, lo, hi, scale, shift, steps, tol, trust, armijo, halvings,
                            sim_out):
    """Numba source: the float64 Newton polish (:func:`_newton_problems`) of the problems ``p`` in ``[lo, hi)`` with
    ``status[p] == 1``, started from the scalings ``x[p] = u``, ``y[p] = v`` that :func:`_scale_problems` left, with
    ``log K = S * scale + shift`` and ``b`` rescaled to the mass of ``a``; writes ``sum_ij T_ij S_ij`` to
    ``sim_out[p]``.  (The tensor pipeline's steps: gather, logs, polish, similarity, without a dozen small tensor
    operators per block.)"""
    K, n, m = src.shape[1], src.shape[2], src.shape[3]
    count = 0
    for p in range(lo, hi):
        if status[p] == 1:
            count += 1
    if count == 0:
        return
    idx = np.empty(count, dtype=np.int64)
    log_k = np.empty((count, n, m))
    a64 = np.empty((count, n))
    b64 = np.empty((count, m))
    x64 = np.empty((count, n))
    y64 = np.empty((count, m))
    neg = np.finfo(np.float64).min / 4  # log(0) held as a large finite negative number, as the tensor path
    c = 0
    for p in range(lo, hi):
        if status[p] != 1:
            continue
        q, k = p // K, p % K
        idx[c] = p
        mass_a, mass_b = 0.0, 0.0
        for i in range(n):
            a64[c, i] = a[q, k, i]
            mass_a += a64[c, i]
            x64[c, i] = math.log(float(x[p, i])) if a64[c, i] > 0 else neg
            for j in range(m):
                log_k[c, i, j] = float(src[q, k, i, j]) * scale + shift
        for j in range(m):
            b64[c, j] = b[q, k, j]
            mass_b += b64[c, j]
        for j in range(m):
            b64[c, j] *= mass_a / mass_b
            y64[c, j] = math.log(float(y[p, j])) if b64[c, j] > 0 else neg
        c += 1
    plan = np.empty((count, n, m))
    used = np.zeros(count, dtype=np.int64)
    _newton_problems(log_k, a64, b64, x64, y64, plan, used, steps, tol, trust, armijo, halvings)
    for c in range(count):
        p = idx[c]
        q, k = p // K, p % K
        total = 0.0
        for i in range(n):
            for j in range(m):
                total += plan[c, i, j] * float(src[q, k, i, j])
        sim_out[p] = total


LANES = 64  # problems iterated side by side (the innermost, vectorised axis); measured 64 > 48 > 128 >> 16, 32


def _scale_problems_py(src, a, b, lo, hi, max_iter, tol, check_every, min_iters, switch_iters, polish, absorb_log,
                       fused, scale, shift, x_out, y_out, plan_out, sim_out, iters_out, status_out):
    """Numba source: problems ``p`` in ``[lo, hi)`` of ``src (Q, K, n, m)``, ``a (Q, K, n)``, ``b (Q, K, m)``
    (``p = q K + k``; any strides).  ``status_out[p]``: 0 converged, 1 for the Newton polish, 2 invalid input
    (``fused`` only: a non-finite value or a cosine beyond ``COSINE_LIMIT``; not solved).

    ``fused=False``: ``src`` is the kernel; a converged problem writes its plan ``u_i K_ij v_j`` to ``plan_out[p]``
    and ``b`` is used as given (the caller equalised the masses).  ``fused=True``: ``src`` holds the cell
    similarities ``S``, the kernel is ``exp(S * scale + shift)``, ``b`` is rescaled to the mass of ``a`` on loading,
    and a converged problem writes ``sum_ij u_i K_ij v_j S_ij`` (accumulated in float64) to ``sim_out[p]``.
    Both write the scalings ``u, v`` to ``x_out, y_out`` and the iterations to ``iters_out``.

    ``LANES`` problems are iterated in lock step in a lane-last layout (``kb[i, j, lane]``), so every update is a
    loop over lanes that LLVM vectorises; each lane keeps its own iteration count, is checked every
    ``check_every`` of its own iterations, and is refilled with the next problem as soon as its problem leaves.
    Idle lanes hold a harmless uniform problem.
    """
    K, n, m = src.shape[1], src.shape[2], src.shape[3]
    dt = src.dtype
    kb = np.ones((n, m, LANES), dtype=dt)
    ab = np.full((n, LANES), 1.0 / n, dtype=dt)
    bb = np.full((m, LANES), 1.0 / m, dtype=dt)
    u = np.ones((n, LANES), dtype=dt)
    v = np.ones((m, LANES), dtype=dt)
    kv = np.full((n, LANES), float(m), dtype=dt)
    ktu = np.ones((m, LANES), dtype=dt)
    lane_p = np.full(LANES, -1, dtype=np.int64)
    lane_it = np.zeros(LANES, dtype=np.int64)
    lane_next = np.zeros(LANES, dtype=np.int64)  # the lane's next check (no integer modulo per iteration)
    lane_prev = np.full(LANES, np.inf)
    tiny = np.finfo(dt).tiny
    half_tol = 0.5 * tol
    hi_scaling, lo_scaling = math.exp(absorb_log), math.exp(-absorb_log)
    first_check = min(check_every, max_iter)
    nxt = lo
    busy = 0
    for lane in range(LANES):  # fill the lanes
        nxt = _load(src, a, b, nxt, hi, lane, fused, scale, shift, kb, ab, bb, v, kv, lane_p, lane_it, lane_prev,
                    lane_next, first_check, status_out)
        if lane_p[lane] >= 0:
            busy += 1
    while busy > 0:
        for i in range(n):  # one scaling iteration of every lane
            for lane in range(LANES):
                u[i, lane] = ab[i, lane] / max(kv[i, lane], tiny)
        for j in range(m):
            for lane in range(LANES):
                ktu[j, lane] = 0.0
        for i in range(n):
            for j in range(m):
                for lane in range(LANES):
                    ktu[j, lane] += u[i, lane] * kb[i, j, lane]
        for j in range(m):
            for lane in range(LANES):
                v[j, lane] = bb[j, lane] / max(ktu[j, lane], tiny)
        for i in range(n):
            for lane in range(LANES):
                kv[i, lane] = 0.0
            for j in range(m):
                for lane in range(LANES):
                    kv[i, lane] += kb[i, j, lane] * v[j, lane]
        for lane in range(LANES):  # per-lane checks, on each lane's own schedule
            p = lane_p[lane]
            if p < 0:
                continue
            lane_it[lane] += 1
            it = lane_it[lane]
            if it < lane_next[lane]:
                continue
            err = 0.0
            for i in range(n):
                err += abs(u[i, lane] * kv[i, lane] - ab[i, lane])
            for j in range(m):
                err += abs(v[j, lane] * ktu[j, lane] - bb[j, lane])
            status = -1
            if err <= half_tol:
                status = 0
            elif it >= max_iter:
                status = 1
            elif polish and it >= min_iters:  # the tensor path's rule: predicted iterations at the observed rate
                prev = lane_prev[lane]
                if err >= prev:
                    status = 1
                else:
                    rate = math.log(max(err, tiny) / max(prev, tiny)) / check_every
                    if math.log(half_tol / max(err, tiny)) / rate > switch_iters:
                        status = 1
            if status < 0:  # the tensor path would absorb far scalings into the kernel: the polish takes them
                for i in range(n):
                    if ab[i, lane] > 0 and (u[i, lane] > hi_scaling or u[i, lane] < lo_scaling):
                        status = 1
                for j in range(m):
                    if bb[j, lane] > 0 and (v[j, lane] > hi_scaling or v[j, lane] < lo_scaling):
                        status = 1
            if status < 0:
                lane_prev[lane] = err
                lane_next[lane] = min(it + check_every, max_iter)
                continue
            iters_out[p] = it
            status_out[p] = status
            for i in range(n):  # the scalings; the caller takes their logarithms in one vectorised pass
                x_out[p, i] = u[i, lane]
            for j in range(m):
                y_out[p, j] = v[j, lane]
            if status == 0 and fused:
                q, k = p // K, p % K
                total = 0.0
                for i in range(n):
                    row = 0.0
                    for j in range(m):
                        row += (kb[i, j, lane] * v[j, lane]) * src[q, k, i, j]
                    total += u[i, lane] * row
                sim_out[p] = total
            elif status == 0:
                for i in range(n):
                    for j in range(m):
                        plan_out[p, i, j] = u[i, lane] * kb[i, j, lane] * v[j, lane]
            nxt = _load(src, a, b, nxt, hi, lane, fused, scale, shift, kb, ab, bb, v, kv, lane_p, lane_it,
                        lane_prev, lane_next, first_check, status_out)
            if lane_p[lane] < 0:  # idle: a harmless uniform problem
                busy -= 1
                for i in range(n):
                    ab[i, lane] = 1.0 / n
                    kv[i, lane] = m
                    for j in range(m):
                        kb[i, j, lane] = 1.0
                for j in range(m):
                    bb[j, lane] = 1.0 / m
                    v[j, lane] = 1.0


def _load_py(src, a, b, nxt, hi, lane, fused, scale, shift, kb, ab, bb, v, kv, lane_p, lane_it, lane_prev,
             lane_next, first_check, status_out):
    """Put the next valid problem from ``nxt`` on into ``lane`` with ``v = 1`` (so ``K v`` is the row sums), or
    mark the lane idle (``lane_p = -1``) if none is left.  Returns the problem after it.  ``fused``: the kernel is
    ``exp(src * scale + shift)``, the masses are equalised, and invalid problems get status 2 and are skipped."""
    K, n, m = src.shape[1], src.shape[2], src.shape[3]
    while nxt < hi:
        p = nxt
        nxt += 1
        q, k = p // K, p % K
        ratio = 1.0
        if fused:
            valid = True
            mass_a, mass_b = 0.0, 0.0
            for i in range(n):
                valid = valid and math.isfinite(a[q, k, i])
                mass_a += a[q, k, i]
                for j in range(m):
                    valid = valid and abs(src[q, k, i, j]) <= COSINE_LIMIT
            for j in range(m):
                valid = valid and math.isfinite(b[q, k, j])
                mass_b += b[q, k, j]
            if not valid:
                status_out[p] = 2
                continue
            ratio = mass_a / mass_b
        for i in range(n):
            ab[i, lane] = a[q, k, i]
            total = 0.0
            for j in range(m):
                value = src[q, k, i, j]
                if fused:
                    value = math.exp(value * scale + shift)
                kb[i, j, lane] = value
                total += value
            kv[i, lane] = total
        for j in range(m):
            bb[j, lane] = b[q, k, j] * ratio if fused else b[q, k, j]
            v[j, lane] = 1.0
        lane_p[lane] = p
        lane_it[lane] = 0
        lane_next[lane] = first_check
        lane_prev[lane] = np.inf
        return nxt
    lane_p[lane] = -1
    return nxt


_load, _scale_problems = _load_py, _scale_problems_py  # pure Python until compile_kernels()


# ------------------------------------------------------------------------------------------------- Newton polish
def newton_polish(log_k, a, b, x, y, outputs, idx, iters, *, steps, tol, trust, armijo, halvings) -> int:
    """The float64 damped Newton polish of :mod:`diml.ot.newton`, compiled, one problem at a time.

    Args: ``log_k (P, n, m)``, ``a (P, n)``, ``b (P, m)`` (same masses), potentials ``x (P, n)``, ``y (P, m)``, all
    float64; ``idx (P,)`` the problems' rows in ``outputs``; ``iters (P,)`` their Sinkhorn iterations.  Results are
    written into ``outputs``.  Returns the largest number of Newton steps used.

    Same steps as :func:`diml.ot.newton.newton_step` (Laplacian from the off-diagonal weights, gauge fixed by
    ``1_s 1_s^T``, trust region, Armijo backtracking); the dual gain uses
    ``expm1(s + t) = expm1(s) + expm1(t) + expm1(s) expm1(t)`` so that a step takes ``n + m`` ``expm1`` instead of
    ``n m``.
    """
    compile_kernels()
    P, n, m = log_k.shape
    x, y = x.contiguous().numpy().copy(), y.contiguous().numpy().copy()
    plan = np.empty((P, n, m), dtype=np.float64)
    used = np.zeros(P, dtype=np.int64)
    arrays = (log_k.contiguous().numpy(), a.contiguous().numpy(), b.contiguous().numpy(), x, y, plan, used)
    options = (int(steps), float(tol), float(trust), float(armijo), int(halvings))
    over_ranges(lambda lo, hi: _newton_problems(*(t[lo:hi] for t in arrays), *options), P, 64)
    outputs.add(idx, torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(plan), iters, 0)
    used_t = torch.from_numpy(used)
    outputs.newton_steps.index_copy_(0, idx, used_t)
    return int(used_t.max()) if P else 0


def _newton_problems_py(log_k, a, b, x, y, plan, used, steps, tol, trust, armijo, halvings):
    P, n, m = log_k.shape
    rows = np.empty(n)
    cols = np.empty(m)
    r_inv = np.empty(n)
    gx = np.empty(n)
    gy = np.empty(m)
    w = np.empty((m, m))
    chol = np.empty((m, m))
    rhs = np.empty(m)
    dx = np.empty(n)
    dy = np.empty(m)
    ea = np.empty(n)
    eb = np.empty(m)
    for p in range(P):
        t_plan = plan[p]
        for i in range(n):
            for j in range(m):
                t_plan[i, j] = math.exp(log_k[p, i, j] + x[p, i] + y[p, j])
        for step in range(steps + 1):
            for j in range(m):
                cols[j] = 0.0
            err = 0.0
            for i in range(n):
                total = 0.0
                for j in range(m):
                    total += t_plan[i, j]
                    cols[j] += t_plan[i, j]
                rows[i] = total
                gx[i] = a[p, i] - total
                err += abs(gx[i])
            for j in range(m):
                gy[j] = b[p, j] - cols[j]
                err += abs(gy[j])
            if err <= 0.5 * tol or step == steps:
                used[p] = step
                break
            # Newton direction (diml.ot.newton.newton_direction)
            for i in range(n):
                r_inv[i] = 1.0 / rows[i] if rows[i] > 0 else 0.0
            for j in range(m):
                for k in range(m):
                    w[j, k] = 0.0
            for i in range(n):
                ri = r_inv[i]
                for j in range(m):
                    tij = t_plan[i, j] * ri
                    for k in range(m):
                        w[j, k] += tij * t_plan[i, k]
            top = 0.0
            for j in range(m):
                w[j, j] = 0.0
                degree = 0.0
                for k in range(m):
                    degree += w[j, k]
                if b[p, j] <= 0:
                    degree += 1.0
                chol[j, j] = degree  # the diagonal, before the ridge and the gauge term
                top = max(top, degree)
            ridge = 1e-13 * top
            for j in range(m):
                sj = 1.0 if b[p, j] > 0 else 0.0
                for k in range(m):
                    sk = 1.0 if b[p, k] > 0 else 0.0
                    if k == j:
                        chol[j, j] = chol[j, j] + ridge + sj * sk
                    else:
                        chol[j, k] = sj * sk - w[j, k]
            for j in range(m):
                total = gy[j]
                for i in range(n):
                    total -= t_plan[i, j] * r_inv[i] * gx[i]
                rhs[j] = total
            ok_chol = _cholesky_solve(chol, rhs, dy)
            if not ok_chol:  # never step along a failed solve
                for j in range(m):
                    dy[j] = 0.0
            for i in range(n):
                total = gx[i]
                for j in range(m):
                    total -= t_plan[i, j] * dy[j]
                dx[i] = r_inv[i] * total
            # damped step (diml.ot.newton.newton_step)
            slope = 0.0
            linear = 0.0
            for i in range(n):
                slope += dx[i] * gx[i]
                linear += dx[i] * a[p, i]
            for j in range(m):
                slope += dy[j] * gy[j]
                linear += dy[j] * b[p, j]
            big = 0.0
            for i in range(n):
                for j in range(m):
                    if t_plan[i, j] > 0:
                        big = max(big, abs(dx[i] + dy[j]))
            t = min(1.0, trust / max(big, 1e-300))
            accepted = False
            for halving in range(halvings + 1):
                for i in range(n):
                    ea[i] = math.expm1(t * dx[i])
                for j in range(m):
                    eb[j] = math.expm1(t * dy[j])
                growth = 0.0
                for i in range(n):
                    for j in range(m):
                        growth += t_plan[i, j] * (ea[i] + eb[j] + ea[i] * eb[j])
                if t * linear - growth >= armijo * t * slope:
                    accepted = True
                    break
                t *= 0.5
            if accepted:
                for i in range(n):
                    x[p, i] += t * dx[i]
                    for j in range(m):
                        t_plan[i, j] += t_plan[i, j] * (ea[i] + eb[j] + ea[i] * eb[j])
                for j in range(m):
                    y[p, j] += t * dy[j]


def _cholesky_solve_py(mat, rhs, out):
    """Solve ``mat @ out = rhs`` for a symmetric positive definite ``mat`` (overwritten by its Cholesky factor).
    Returns False (``out`` undefined) if a pivot is not positive, as ``torch.linalg.cholesky_ex`` reports."""
    m = mat.shape[0]
    for j in range(m):
        d = mat[j, j]
        for k in range(j):
            d -= mat[j, k] * mat[j, k]
        if not d > 0:
            return False
        d = math.sqrt(d)
        mat[j, j] = d
        for i in range(j + 1, m):
            s = mat[i, j]
            for k in range(j):
                s -= mat[i, k] * mat[j, k]
            mat[i, j] = s / d
    for i in range(m):  # L z = rhs
        s = rhs[i]
        for k in range(i):
            s -= mat[i, k] * out[k]
        out[i] = s / mat[i, i]
    for i in range(m - 1, -1, -1):  # L^T out = z
        s = out[i]
        for k in range(i + 1, m):
            s -= mat[k, i] * out[k]
        out[i] = s / mat[i, i]
    return True


_cholesky_solve, _newton_problems = _cholesky_solve_py, _newton_problems_py  # pure Python until compile_kernels()
_polish_similarities = _polish_similarities_py
