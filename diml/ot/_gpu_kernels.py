"""Triton sources of :mod:`diml.ot._gpu` (imported only when the kernels are built; see there).

One program per problem; ``BN, BM`` are the powers of two (>= 16) that hold ``n, m``; padded rows and columns carry
zero mass and stay zero throughout.  The steps are those of :mod:`diml.ot._cpu` line by line.
"""

import triton
import triton.language as tl


@triton.jit
def scale_problems(K, A, B, U, V, PLAN, ITERS, STATUS, n, m, max_iter, half_tol, check_every, min_iters,
                   switch_iters, polish, hi, lo, tiny, BN: tl.constexpr, BM: tl.constexpr):
    """Scaling Sinkhorn of problem ``program_id`` until it converges (``STATUS`` 0) or is handed to the polish
    (1: out of iterations, a predicted slow convergence, or scalings beyond ``[lo, hi]``).  Writes the scalings
    ``U, V``, the plan ``u_i K_ij v_j`` and the iterations used."""
    p = tl.program_id(0).to(tl.int64)
    r = tl.arange(0, BN)
    c = tl.arange(0, BM)
    rmask = r < n
    cmask = c < m
    mask2 = rmask[:, None] & cmask[None, :]
    kern = tl.load(K + p * n * m + r[:, None] * m + c[None, :], mask=mask2, other=0.0)
    a = tl.load(A + p * n + r, mask=rmask, other=0.0)
    b = tl.load(B + p * m + c, mask=cmask, other=0.0)
    v = tl.where(cmask, 1.0, 0.0).to(kern.dtype)
    u = tl.zeros_like(a)
    kv = tl.sum(kern, axis=1)  # K v with v = 1
    ktu = tl.zeros_like(b)
    it = tl.full([], 0, tl.int32)
    nxt = tl.minimum(check_every, max_iter).to(tl.int32)
    status = tl.full([], -1, tl.int32)
    prev = tl.sum(a, axis=0) * 0.0
    have_prev = tl.full([], 0, tl.int32)
    while status < 0:
        u = a / tl.maximum(kv, tiny)
        ktu = tl.sum(u[:, None] * kern, axis=0)
        v = b / tl.maximum(ktu, tiny)
        kv = tl.sum(kern * v[None, :], axis=1)
        it += 1
        if it >= nxt:
            err = tl.sum(tl.abs(u * kv - a), axis=0) + tl.sum(tl.abs(v * ktu - b), axis=0)
            e = tl.maximum(err, tiny)
            rate = tl.log(e / tl.maximum(prev, tiny)) / check_every
            predicted = tl.log(half_tol / e) / rate
            slow = (polish != 0) & (it >= min_iters) & (have_prev != 0) & ((err >= prev) | (predicted > switch_iters))
            far_u = tl.sum(tl.where((a > 0) & ((u > hi) | (u < lo)), 1, 0), axis=0)
            far_v = tl.sum(tl.where((b > 0) & ((v > hi) | (v < lo)), 1, 0), axis=0)
            leave = (it >= max_iter) | slow | (far_u + far_v > 0)
            status = tl.where(err <= half_tol, 0, tl.where(leave, 1, -1)).to(tl.int32)
            prev = err
            have_prev = tl.full([], 1, tl.int32)
            nxt = tl.minimum(it + check_every, max_iter).to(tl.int32)
    tl.store(U + p * n + r, u, mask=rmask)
    tl.store(V + p * m + c, v, mask=cmask)
    tl.store(PLAN + p * n * m + r[:, None] * m + c[None, :], u[:, None] * kern * v[None, :], mask=mask2)
    tl.store(ITERS + p, it)
    tl.store(STATUS + p, status)


@triton.jit
def _expm1(z):
    """``exp(z) - 1`` without cancellation (float64): a Taylor polynomial for ``|z| < 0.01``."""
    poly = z * (1.0 + z * (0.5 + z * (1.0 / 6.0 + z * (1.0 / 24.0 + z * (1.0 / 120.0 + z * (1.0 / 720.0
                                                                                     + z * (1.0 / 5040.0)))))))
    return tl.where(tl.abs(z) < 0.01, poly, tl.exp(z) - 1.0)


@triton.jit
def _cholesky_solve(mat, rhs, BM: tl.constexpr):
    """Solve ``mat @ out = rhs`` (``mat (BM, BM)`` symmetric positive definite) by a right-looking Cholesky
    factorisation and two substitutions, loops over the ``BM`` columns (not unrolled: unrolled, the polish kernel
    was 30k lines of PTX and took 40 s to compile).  Returns ``(out, ok)``; ``ok`` is False
    if a pivot is not positive (as ``torch.linalg.cholesky_ex`` reports)."""
    j_idx = tl.arange(0, BM)
    rows = j_idx[:, None]
    cols = j_idx[None, :]
    rest = mat
    low = tl.zeros_like(mat)
    ok = tl.full([], 1, tl.int32)
    for j in range(BM):
        col = tl.sum(tl.where(cols == j, rest, 0.0), axis=1)  # column j of what is left
        d = tl.sum(tl.where(j_idx == j, col, 0.0), axis=0)
        ok = ok & (d > 0).to(tl.int32)
        lcol = tl.where(j_idx >= j, col / tl.sqrt(tl.maximum(d, 1e-300)), 0.0)
        low = tl.where(cols == j, lcol[:, None], low)
        rest = rest - lcol[:, None] * lcol[None, :]
    z = rhs
    for i in range(BM):  # L z = rhs, column by column
        lcol = tl.sum(tl.where(cols == i, low, 0.0), axis=1)
        zi = tl.sum(tl.where(j_idx == i, z, 0.0), axis=0) / tl.sum(tl.where(j_idx == i, lcol, 0.0), axis=0)
        z = tl.where(j_idx == i, zi, z - tl.where(j_idx > i, lcol * zi, 0.0))
    out = z
    for k in range(BM):  # L^T out = z, from the last row up
        i = BM - 1 - k
        lrow = tl.sum(tl.where(rows == i, low, 0.0), axis=0)
        oi = tl.sum(tl.where(j_idx == i, out, 0.0), axis=0) / tl.sum(tl.where(j_idx == i, lrow, 0.0), axis=0)
        out = tl.where(j_idx == i, oi, out - tl.where(j_idx < i, lrow * oi, 0.0))
    return out, ok


@triton.jit
def newton_problems(SRC, scale, shift, A, B, X, Y, PLAN, STATUS, STEPS, n, m, steps, half_tol, trust, armijo,
                    BN: tl.constexpr, BM: tl.constexpr, HALVINGS: tl.constexpr):
    """The float64 damped Newton polish (:func:`diml.ot._cpu.newton_polish`) of problem ``program_id`` if its
    ``STATUS`` is 1: from the potentials ``X, Y`` (updated in place) to the plan ``PLAN`` and the steps used.
    Computed in float64 and stored in the outputs' dtype, so no float64 copy of all problems is needed."""
    p = tl.program_id(0).to(tl.int64)
    if tl.load(STATUS + p) == 1:
        r = tl.arange(0, BN)
        c = tl.arange(0, BM)
        rmask = r < n
        cmask = c < m
        mask2 = rmask[:, None] & cmask[None, :]
        log_k = tl.load(SRC + p * n * m + r[:, None] * m + c[None, :], mask=mask2, other=0.0).to(tl.float64)
        log_k = log_k * scale + shift
        a = tl.load(A + p * n + r, mask=rmask, other=0.0).to(tl.float64)
        b = tl.load(B + p * m + c, mask=cmask, other=0.0).to(tl.float64)
        b = b * (tl.sum(a, axis=0) / tl.sum(b, axis=0))
        x = tl.load(X + p * n + r, mask=rmask, other=0.0).to(tl.float64)
        y = tl.load(Y + p * m + c, mask=cmask, other=0.0).to(tl.float64)
        plan = tl.where(mask2, tl.exp(log_k + x[:, None] + y[None, :]), 0.0)
        support = tl.where(b > 0, 1.0, 0.0).to(tl.float64)
        diag = c[:, None] == c[None, :]
        step = tl.full([], 0, tl.int32)
        go = tl.full([], 1, tl.int32)
        while go != 0:
            rows_sum = tl.sum(plan, axis=1)
            cols_sum = tl.sum(plan, axis=0)
            gx = a - rows_sum
            gy = b - cols_sum
            err = tl.sum(tl.abs(gx), axis=0) + tl.sum(tl.abs(gy), axis=0)
            if (err <= half_tol) | (step >= steps):
                go = tl.full([], 0, tl.int32)
            else:
                r_inv = tl.where(rows_sum > 0, 1.0 / tl.where(rows_sum > 0, rows_sum, 1.0), 0.0)
                w = tl.zeros([BM, BM], dtype=tl.float64)
                for i in range(BN):  # W = T^T diag(1/r) T, one row of the plan at a time
                    row = tl.sum(tl.where(r[:, None] == i, plan, 0.0), axis=0)
                    ri = tl.sum(tl.where(r == i, r_inv, 0.0), axis=0)
                    w += (row * ri)[:, None] * row[None, :]
                w = tl.where(diag, 0.0, w)
                degree = tl.sum(w, axis=1) + (1.0 - support)
                ridge = 1e-13 * tl.max(tl.where(cmask, degree, 0.0), axis=0)
                gauge = support[:, None] * support[None, :]
                system = tl.where(diag, degree[:, None] + ridge + gauge, gauge - w)
                rhs = gy - tl.sum(plan * (r_inv * gx)[:, None], axis=0)
                dy, ok = _cholesky_solve(system, rhs, BM)
                dy = tl.where(ok != 0, dy, 0.0)  # never step along a failed solve
                dx = r_inv * (gx - tl.sum(plan * dy[None, :], axis=1))
                slope = tl.sum(dx * gx, axis=0) + tl.sum(dy * gy, axis=0)
                linear = tl.sum(dx * a, axis=0) + tl.sum(dy * b, axis=0)
                big = tl.max(tl.where(plan > 0, tl.abs(dx[:, None] + dy[None, :]), 0.0))
                t = tl.minimum(trust / tl.maximum(big, 1e-300), 1.0)
                t_ok = t * 0.0
                accepted = tl.full([], 0, tl.int32)
                for h in range(HALVINGS + 1):  # Armijo backtracking: the first step size that passes
                    ea = _expm1(t * dx)
                    eb = _expm1(t * dy)
                    growth = tl.sum(tl.sum(plan * (ea[:, None] + eb[None, :] + ea[:, None] * eb[None, :]), axis=1),
                                    axis=0)
                    passes = (t * linear - growth >= armijo * t * slope) & (accepted == 0)
                    t_ok = tl.where(passes, t, t_ok)
                    accepted = accepted | passes.to(tl.int32)
                    t = t * 0.5
                ea = _expm1(t_ok * dx)
                eb = _expm1(t_ok * dy)
                x = x + t_ok * dx
                y = y + t_ok * dy
                plan = plan + plan * (ea[:, None] + eb[None, :] + ea[:, None] * eb[None, :])
                step += 1
        tl.store(X + p * n + r, x.to(X.dtype.element_ty), mask=rmask)
        tl.store(Y + p * m + c, y.to(Y.dtype.element_ty), mask=cmask)
        tl.store(PLAN + p * n * m + r[:, None] * m + c[None, :], plan.to(PLAN.dtype.element_ty), mask=mask2)
        tl.store(STEPS + p, step)
