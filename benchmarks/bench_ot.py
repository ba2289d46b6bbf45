"""OT benchmark (issue 3): the DIML structural similarity, end to end, four ways, side by side in one run.

Cases (4x4 grid, C = 128, eps = 0.05, cross-attention marginals), each with i.i.d. random features and with
near-duplicate features:

(a) all pairs of a 112-image batch (12,544 pairs); "near-duplicate": 28 classes x 4 images, each image a noisy copy
    (noise 0.1) of its class prototype, so 448 of the pairs (positives and self-pairs) are near-duplicates;
(b) 1,000 queries x their own 100 candidates (100,000 pairs); "near-duplicate": every candidate is a noisy copy of
    its query (noise from 0.05 to 0.5), as the top of a ranking is.

Methods, all stopped at matched accuracy (marginal error ``|T1 - a|_1 + |T^T 1 - b|_1 <= 1e-4``), all timed from
raw features to the similarity matrix:

* ``ours``: :func:`diml.ot.structural_similarity` / ``_candidates`` with ``tol=1e-4`` (and ``ours@1e-6``, the
  library default);
* ``loop``: a per-pair loop that syncs every iteration to test convergence (the approach of the authors' margin
  loss, with their ``|r - r0|.mean() < 0.1`` test replaced by the marginal error); timed on a subset of pairs
  (stratified: near-duplicate and other pairs separately) and extrapolated linearly;
* ``pot``: POT ``ot.sinkhorn`` per pair (float64 numpy, ``stopThr = 2.5e-5`` on POT's L2 column error, so that the
  L1 error is <= 1e-4), subset, extrapolated;
* ``pot_batch``: POT's batched solver ``ot.batch.solve_batch(method="sinkhorn", tol=2.5e-5)`` on float32 torch
  tensors, cell similarities and marginals from our batched matrix products (timed with it).  Where
  ``measured_pairs < pairs`` it runs on whole query rows (same share of near-duplicates) and is extrapolated
  linearly, which favours it (its iteration count is that of the slowest problem of its batch).

Timings are medians of repeats (ours) on a machine shared with other processes; ``speedup`` is ours' pairs/s over
the method's, measured in the same run.  Use ``--threads 1`` on a shared machine (two contending threads were
measured several times slower on these small batched ops).

``--thread-scaling`` measures only ours at 1 and 2 intra-op threads, interleaved run by run in one process, and POT
batched on 2 threads (the thread rows of ``run_all.py``): medians, the spread of the per-run ratio, the load, and
the same ratio for a control kernel of pure vectorised arithmetic timed in the same runs (the machine's ceiling).

Usage::

    python benchmarks/bench_ot.py [--quick] [--threads 1]
    python benchmarks/bench_ot.py --thread-scaling [--quick] [--repeats 15] [--cases a]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import ot
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere: `diml` importable

from diml.ot import (  # noqa: E402
    TRIAL_TRAINING_OT,
    OTOptions,
    _threads,
    structural_similarity,
    structural_similarity_candidates,
)
from diml.ot.matching import _prepare, pair_terms_all, pair_terms_candidates  # noqa: E402

EPS, TOL, C, R = OTOptions.eps, TRIAL_TRAINING_OT.tol, 128, 16  # the paper's eps; the training runs' tolerance
POT_STOP = TOL / 4  # POT stops on an L2 marginal error; L1 <= sqrt(R) * L2 = 4 * L2


# ----------------------------------------------------------------------------------------------------- features
def _images(n, gen):
    local = torch.randn(n, C, R, generator=gen, device=gen.device)
    return local, local.mean(2) + 0.5 * torch.randn(n, C, generator=gen, device=gen.device)


def _noisy(local, noise, gen):
    """Noisy copies: ``noise`` is relative to the cell norms (a tensor broadcastable to ``(N, 1, 1)`` or a float)."""
    scale = local.norm(dim=-2, keepdim=True) / C ** 0.5
    noisy = local + noise * scale * torch.randn(local.shape, generator=gen, device=gen.device)
    return noisy, noisy.mean(-1) + 0.05 * torch.randn(noisy.shape[:-1], generator=gen, device=gen.device)


def batch_case(kind: str, seed: int = 0, device: str = "cpu"):
    """112 images; returns ``(local, global, near_duplicate_pair_mask (112, 112))``."""
    gen = torch.Generator(device).manual_seed(seed)
    if kind == "random":
        local, glob = _images(112, gen)
        return local, glob, torch.eye(112, dtype=torch.bool, device=device)
    proto, _ = _images(28, gen)
    local, glob = _noisy(proto.repeat_interleave(4, 0), 0.1, gen)
    labels = torch.arange(112, device=device) // 4
    return local, glob, labels[:, None] == labels[None, :]


def candidate_case(kind: str, n_queries: int, k: int = 100, seed: int = 1, device: str = "cpu"):
    """``(q_local, q_global, c_local (Nq, K, C, R), c_global (Nq, K, C))``."""
    gen = torch.Generator(device).manual_seed(seed)
    q_local, q_global = _images(n_queries, gen)
    if kind == "random":
        c_local, c_global = _images(n_queries * k, gen)
    else:
        noise = torch.linspace(0.05, 0.5, k, device=device).repeat(n_queries).view(-1, 1, 1)
        c_local, c_global = _noisy(q_local.repeat_interleave(k, 0), noise, gen)
    return q_local, q_global, c_local.view(n_queries, k, C, R), c_global.view(n_queries, k, C)


# ---------------------------------------------------------------------------------------------------- baselines
def loop_pair(ql, qg, rl, rg, max_iter: int = 20_000):
    """One pair the straightforward way: build everything, iterate, sync every iteration.  -> (sim, iterations)."""
    x, y = F.normalize(ql, dim=0), F.normalize(rl, dim=0)
    S = x.T @ y
    a = F.relu(F.normalize(rg, dim=0) @ x)
    b = F.relu(F.normalize(qg, dim=0) @ y)
    a = a / a.sum() if float(a.sum()) > 0 else torch.full_like(a, 1.0 / R)
    b = b / b.sum() if float(b.sum()) > 0 else torch.full_like(b, 1.0 / R)
    K = torch.exp(-(1.0 - S) / EPS)
    u, v = torch.ones_like(a), torch.ones_like(b)
    for it in range(1, max_iter + 1):
        u = a / (K @ v)
        v = b / (K.T @ u)
        if float((u * (K @ v) - a).abs().sum()) <= TOL:  # the host sync of every iteration
            break
    return float(((u[:, None] * K * v[None, :]) * S).sum()), it


def pot_pair(ql, qg, rl, rg):
    """POT ``ot.sinkhorn`` (float64 numpy) on one pair, zero-mass cells removed.  -> (sim, marginal L1 error)."""
    x = ql / np.linalg.norm(ql, axis=0, keepdims=True)
    y = rl / np.linalg.norm(rl, axis=0, keepdims=True)
    S = x.T @ y
    a = np.maximum(rg / np.linalg.norm(rg) @ x, 0.0)
    b = np.maximum(qg / np.linalg.norm(qg) @ y, 0.0)
    a = a / a.sum() if a.sum() > 0 else np.full(R, 1.0 / R)
    b = b / b.sum() if b.sum() > 0 else np.full(R, 1.0 / R)
    rows, cols = a > 0, b > 0
    sub = S[np.ix_(rows, cols)]
    T = ot.sinkhorn(a[rows], b[cols], 1.0 - sub, EPS, numItermax=200_000, stopThr=POT_STOP)
    err = np.abs(T.sum(1) - a[rows]).sum() + np.abs(T.sum(0) - b[cols]).sum()
    return float((T * sub).sum()), float(err)


def pot_batch(S, a, b):
    """POT's batched solver on ``S (B, R, R)``, ``a, b (B, R)``.  -> (similarities (B,), max L1 error, iterations)."""
    # POT 0.9.7's batched Bregman projection creates its scalings with nx.ones (no device): on a CUDA input they
    # land on the CPU unless the default device is the input's
    with torch.device(S.device):
        res = ot.batch.solve_batch(1.0 - S, EPS, a=a, b=b, max_iter=200_000, tol=POT_STOP, method="sinkhorn",
                                   grad="detach")
    T = res.plan
    err = (T.sum(2) - a).abs().sum(1) + (T.sum(1) - b).abs().sum(1)
    return (T * S).sum((1, 2)), float(err.max())


# ------------------------------------------------------------------------------------------------------- timing
def _timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _loop_on(pairs, fetch):
    """Per-pair loop and POT on the listed pairs: seconds per pair for each, their similarities, iterations."""
    start = time.perf_counter()
    loop = [loop_pair(*fetch(p)) for p in pairs]
    loop_s = (time.perf_counter() - start) / len(pairs)
    start = time.perf_counter()
    pot = [pot_pair(*(t.double().numpy() for t in fetch(p))) for p in pairs]
    pot_s = (time.perf_counter() - start) / len(pairs)
    return loop_s, pot_s, [s for s, _ in loop], [it for _, it in loop], [s for s, _ in pot], [e for _, e in pot]


def _stratified(mask: torch.Tensor, n_each: int, gen) -> list[torch.Tensor]:
    """Up to ``n_each`` random flat indices from each stratum (True / False entries of ``mask``)."""
    flat = mask.reshape(-1)
    groups = [flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)]
    return [g[torch.randperm(len(g), generator=gen)[:n_each]] for g in groups if len(g)]


def _ours_rows(case, features, n_pairs, full, default, solve_stats, repeats):
    """Rows for ours at the matched tolerance and at the library default (timed ``repeats`` times each)."""
    t_ours, sim = _timed(full, repeats)
    t_default, _ = _timed(default, repeats)
    it, newton, err = solve_stats
    base = {"case": case, "features": features, "pairs": n_pairs, "measured_pairs": n_pairs}
    rows = [{**base, "method": "ours", "seconds": t_ours, "max_marginal_err": err,
             "iterations": f"mean {it.float().mean():.1f} / max {int(it.max())} + Newton on "
                           f"{newton[0]} pairs (<= {newton[1]} steps)"},
            {**base, "method": "ours@1e-6", "seconds": t_default}]
    return rows, sim


def _solve_stats(S, a, b):
    """Sinkhorn iterations per pair, Newton usage and the marginal error of ours on the same terms (not timed)."""
    from diml.ot._scaling import LogKernel
    from diml.ot.sinkhorn import solve

    res = solve(LogKernel(S.reshape(-1, R, R), 1 / EPS, -1 / EPS), a.reshape(-1, R), b.reshape(-1, R),
                OTOptions(eps=EPS, tol=TOL), direct=True)
    polished = (int((res.problem_newton_steps > 0).sum()), res.newton_steps)
    return res.problem_iterations, polished, float(res.marginal_error.max())


def _baseline_rows(case, features, counts, sample_sets, fetch, ours_flat):
    """Per-pair loop and POT per pair on stratified samples, extrapolated with the stratum sizes ``counts``."""
    totals = {"loop": 0.0, "pot": 0.0}
    iters, errs, diff = [], [], {"loop": 0.0, "pot": 0.0}
    for count, pairs in zip(counts, sample_sets):
        loop_s, pot_s, loop_sim, loop_it, pot_sim, pot_err = _loop_on(pairs.tolist(), fetch)
        totals["loop"] += count * loop_s
        totals["pot"] += count * pot_s
        iters += loop_it
        errs += pot_err
        ref = ours_flat[pairs].double()
        diff["loop"] = max(diff["loop"], float((torch.tensor(loop_sim, dtype=torch.float64) - ref).abs().max()))
        diff["pot"] = max(diff["pot"], float((torch.tensor(pot_sim, dtype=torch.float64) - ref).abs().max()))
    measured = sum(len(p) for p in sample_sets)
    base = {"case": case, "features": features, "pairs": sum(counts), "measured_pairs": measured}
    its = torch.tensor(iters, dtype=torch.float64)
    return [{**base, "method": "loop", "seconds": totals["loop"], "max_abs_sim_diff_vs_ours": diff["loop"],
             "iterations": f"mean {its.mean():.1f} / max {int(its.max())}"},
            {**base, "method": "pot", "seconds": totals["pot"], "max_abs_sim_diff_vs_ours": diff["pot"],
             "max_marginal_err": max(errs)}]


def _pot_batch_row(case, features, n_pairs, subset, terms, ours_flat):
    """POT batched, end to end on ``subset`` (flat pair indices; ``terms()`` computes their cell similarities and
    marginals from the features with our matrix products), extrapolated linearly to ``n_pairs``."""
    def run_it():
        S, a, b = terms()
        return pot_batch(S.reshape(-1, R, R), a.reshape(-1, R), b.reshape(-1, R))

    seconds, (sim, err) = _timed(run_it, 1)
    return {"case": case, "features": features, "method": "pot_batch", "pairs": n_pairs,
            "measured_pairs": len(subset), "seconds": seconds * n_pairs / len(subset), "max_marginal_err": err,
            "max_abs_sim_diff_vs_ours": (None if ours_flat is None else
                                         float((sim.double() - ours_flat[subset].double()).abs().max()))}


def bench_batch(features: str, quick: bool) -> list[dict]:
    """Case (a): all 12,544 pairs of a 112-image batch."""
    local, glob, dup = batch_case(features)
    n = local.shape[0]
    gen = torch.Generator().manual_seed(2)
    rows, sim = _ours_rows("a: 112-batch all pairs", features, n * n,
                           lambda: structural_similarity(local, glob, local, glob, ot=OTOptions(tol=TOL)),
                           lambda: structural_similarity(local, glob, local, glob), _solve_stats(
                               *pair_terms_all(*_prepare(local, glob, local, glob, candidates=False),
                                               "cross_attention")), 3 if quick else 7)
    flat = sim.reshape(-1)
    counts = [int(dup.sum()), int((~dup).sum())]
    samples = _stratified(dup, 8 if quick else 40, gen)
    rows += _baseline_rows(rows[0]["case"], features, counts, samples, lambda p: (
        local[p // n], glob[p // n], local[p % n], glob[p % n]), flat)
    # POT batched on whole query rows (each row holds the same share of near-duplicate pairs as the batch).
    q = n if features == "random" else (3 if quick else 9)
    terms = lambda: pair_terms_all(*_prepare(local[:q], glob[:q], local, glob, candidates=False),  # noqa: E731
                                   "cross_attention")
    rows.append(_pot_batch_row(rows[0]["case"], features, n * n, torch.arange(q * n), terms, flat))
    return rows


def bench_candidates(features: str, quick: bool) -> list[dict]:
    """Case (b): 1,000 queries x top-100 candidates (200 queries in quick mode)."""
    nq, k = (200, 100) if quick else (1000, 100)
    ql, qg, cl, cg = candidate_case(features, nq, k)
    gen = torch.Generator().manual_seed(3)
    rows, sim = _ours_rows(f"b: {nq} queries x top-{k}", features, nq * k,
                           lambda: structural_similarity_candidates(ql, qg, cl, cg, ot=OTOptions(tol=TOL)),
                           lambda: structural_similarity_candidates(ql, qg, cl, cg), _solve_stats(
                               *pair_terms_candidates(*_prepare(ql, qg, cl, cg, candidates=True),
                                                      "cross_attention")), 3 if quick else 5)
    flat = sim.reshape(-1)
    samples = _stratified(torch.ones(nq, k, dtype=torch.bool), 10 if quick else 60, gen)
    rows += _baseline_rows(rows[0]["case"], features, [nq * k], samples, lambda p: (
        ql[p // k], qg[p // k], cl[p // k, p % k], cg[p // k, p % k]), flat)
    q = 20 if quick else 100  # POT batched on the first q queries (every query has the same kind of candidates)
    terms = lambda: pair_terms_candidates(*_prepare(ql[:q], qg[:q], cl[:q], cg[:q], candidates=True),  # noqa: E731
                                          "cross_attention")
    rows.append(_pot_batch_row(rows[0]["case"], features, nq * k, torch.arange(q * k), terms, flat))
    return rows


def run(quick: bool = False) -> list[dict]:
    """Rows for the unified benchmark runner (``seconds`` extrapolated to all pairs, ``speedup`` of ours)."""
    warnings.filterwarnings("ignore", module="ot")
    rows = []
    for bench in (bench_batch, bench_candidates):
        for features in ("random", "near_duplicate"):
            case_rows = bench(features, quick)
            ours = case_rows[0]["pairs"] / case_rows[0]["seconds"]
            for row in case_rows:
                row["pairs_per_s"] = row["pairs"] / row["seconds"]
                row["speedup"] = ours / row["pairs_per_s"]
                row["bench"] = "ot"
            rows += case_rows
    return rows


def _scaling_cases(quick: bool, cases: str):
    """``(case, features, pairs, ours(), pot_row())`` for the thread-scaling rows, the cases of :func:`run` (POT
    batched on the same subsets); each tuple is used before the next is made (the closures read the loop's data)."""
    for features in ("random", "near_duplicate") if "a" in cases else ():
        local, glob, _ = batch_case(features)
        n, q = local.shape[0], (112 if features == "random" else (3 if quick else 9))
        terms = lambda: pair_terms_all(*_prepare(local[:q], glob[:q], local, glob, candidates=False),  # noqa: E731
                                       "cross_attention")
        yield ("a: 112-batch all pairs", features, n * n,
               lambda: structural_similarity(local, glob, local, glob, ot=OTOptions(tol=TOL)),
               lambda: _pot_batch_row("", "", n * n, torch.arange(q * n), terms, None))
    nq, k = (200, 100) if quick else (1000, 100)
    q = 20 if quick else 100
    for features in ("random", "near_duplicate") if "b" in cases else ():
        ql, qg, cl, cg = candidate_case(features, nq, k)
        terms = lambda: pair_terms_candidates(*_prepare(ql[:q], qg[:q], cl[:q], cg[:q], candidates=True),  # noqa: E731
                                              "cross_attention")
        yield (f"b: {nq} queries x top-{k}", features, nq * k,
               lambda: structural_similarity_candidates(ql, qg, cl, cg, ot=OTOptions(tol=TOL)),
               lambda: _pot_batch_row("", "", nq * k, torch.arange(q * k), terms, None))


@contextlib.contextmanager
def _cpu_critical_path():
    """Yields ``cpu()``: ``(busiest, even)``: CPU seconds of the caller outside the blocks of
    :func:`diml.ot._threads.map_blocks` plus those of the busiest thread within them (the caller is one of the
    block threads), or plus the block threads' total over their number (the blocks evenly shared, as on idle
    cores).  On a machine shared with other work the wall-time ratio of 1 and 2 threads says how much CPU the
    scheduler granted; these say what the threads would do alone (up to cache and memory contention; ``busiest``
    also counts the blocks a thread took while the other was descheduled)."""
    per_thread, lock, original = {}, threading.Lock(), _threads.map_blocks
    caller = threading.current_thread().name

    def timed_map(fn, blocks, n_threads):
        def timed(block):
            start = time.thread_time()
            out = fn(block)
            with lock:
                name = threading.current_thread().name
                per_thread[name] = per_thread.get(name, 0.0) + time.thread_time() - start
            return out
        return original(timed, blocks, n_threads)

    main_start = time.thread_time()
    _threads.map_blocks = timed_map
    try:
        yield lambda: (outside + max(per_thread.values(), default=0.0),
                       outside + sum(per_thread.values()) / max(len(per_thread), 1))
    finally:
        _threads.map_blocks = original
        outside = time.thread_time() - main_start - per_thread.get(caller, 0.0)


_CONTROL = None


def _control_kernel():
    """A compiled kernel of independent vectorised multiply-adds on 512 bytes of registers and L1 (no memory traffic,
    no synchronisation): ``control(iterations)``.  Two threads running it can be at most 2x one thread; what this
    machine's two vCPUs give, measured interleaved with the solver's runs, is the ceiling the solver can reach."""
    global _CONTROL
    if _CONTROL is None:
        import numba

        @numba.njit(nogil=True, fastmath=True, cache=False)
        def control(iterations):
            acc = np.zeros(64, dtype=np.float32)
            step = np.full(64, 0.5, dtype=np.float32)
            for _ in range(iterations):
                for lane in range(64):
                    acc[lane] = acc[lane] * np.float32(0.9999) + step[lane]
            return acc.sum()

        control(10)
        _CONTROL = control
    return _CONTROL


def _control_run(threads: int, iterations: int) -> float:
    """Seconds for ``iterations`` of the control kernel on ``threads`` threads (equal shares through
    :func:`diml.ot._threads.map_blocks`, as the solver's blocks)."""
    control = _control_kernel()
    start = time.perf_counter()
    if threads == 1:
        control(iterations)
    else:
        _threads.map_blocks(control, [iterations // threads] * threads, threads)
    return time.perf_counter() - start


def thread_scaling(quick: bool = False, repeats: int = 0, threads: tuple[int, int] = (1, 2),
                   cases: str = "ab") -> list[dict]:
    """Ours at 1 and 2 intra-op threads, interleaved run by run in one process (``repeats`` each; by default 15,
    45 for the short case (a), 5 with ``quick``), and POT batched on 2 threads: per case (``cases``: "a", "b" or
    "ab") the medians, the spread of the per-run ratio, and the machine load (1-minute average before and after).
    ``control_ratio_2t_1t``: the same ratio for :func:`_control_kernel` (pure vectorised arithmetic), timed right
    after each of ours' runs: the machine's own 2-thread gain at that moment."""
    warnings.filterwarnings("ignore", module="ot")
    saved, rows = torch.get_num_threads(), []
    try:
        for case, features, pairs, ours, pot_row in _scaling_cases(quick, cases):
            # (a) takes 30-60 ms a run: 3x the runs spread its medians over seconds, not one burst of the host
            case_repeats = repeats or (5 if quick else 15) * (3 if case.startswith("a") else 1)
            load = os.getloadavg()[0]
            sims = {}
            for t in threads:  # warm-up (and the similarities of each thread count)
                torch.set_num_threads(t)
                sims[t] = ours()
            seconds, critical = {t: [] for t in threads}, {t: [] for t in threads}
            control = {t: [] for t in threads}
            for _ in range(case_repeats):
                for t in threads:
                    torch.set_num_threads(t)
                    with _cpu_critical_path() as cpu:
                        seconds[t].append(_timed(ours, 1)[0])
                    critical[t].append(cpu())
                    control[t].append(_control_run(t, 3_000_000))
            torch.set_num_threads(threads[1])
            pot = statistics.median(pot_row()["seconds"] for _ in range(1 if quick else 3))
            ratios = sorted(a / b for a, b in zip(seconds[threads[0]], seconds[threads[1]]))
            one, two = (statistics.median(seconds[t]) for t in threads)
            rows.append({"case": case, "features": features, "pairs": pairs, "repeats": case_repeats,
                         "pairs_per_s_1t": pairs / one, "pairs_per_s_2t": pairs / two,
                         "ratio_2t_1t": statistics.median(ratios),
                         "ratio_spread": f"{ratios[len(ratios) // 4]:.2f}-{ratios[(3 * len(ratios)) // 4]:.2f} "
                                         f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f})",
                         "cpu_ratio_2t_1t": statistics.median(c[0] for c in critical[threads[0]]) / statistics.median(
                             c[0] for c in critical[threads[1]]),
                         "cpu_even_ratio_2t_1t": statistics.median(c[1] for c in critical[threads[0]])
                         / statistics.median(c[1] for c in critical[threads[1]]),
                         "control_ratio_2t_1t": statistics.median(
                             a / b for a, b in zip(control[threads[0]], control[threads[1]])),
                         "pot_batch_2t_pairs_per_s": pairs / pot, "speedup_vs_pot_batch_2t": pot / two,
                         "max_abs_sim_diff_1t_2t": float((sims[threads[0]] - sims[threads[1]]).abs().max()),
                         "load_1min": f"{load:.1f}-{os.getloadavg()[0]:.1f}", "bench": "ot_threads"})
            print(" ".join(f"{k}={_fmt(rows[-1][k])}" for k in SCALING_COLUMNS), file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(saved)
    return rows


COLUMNS = ("case", "features", "method", "pairs", "measured_pairs", "seconds", "pairs_per_s", "speedup",
           "max_marginal_err", "max_abs_sim_diff_vs_ours", "iterations")


SCALING_COLUMNS = ("case", "features", "pairs", "repeats", "pairs_per_s_1t", "pairs_per_s_2t", "ratio_2t_1t",
                   "ratio_spread", "cpu_ratio_2t_1t", "cpu_even_ratio_2t_1t", "control_ratio_2t_1t",
                   "pot_batch_2t_pairs_per_s",
                   "speedup_vs_pot_batch_2t", "max_abs_sim_diff_1t_2t", "load_1min")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def print_table(rows: list[dict], columns=COLUMNS) -> None:
    table = [list(columns)] + [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for i, line in enumerate(table):
        print(" | ".join(cell.ljust(w) for cell, w in zip(line, widths)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller samples and 200 queries in case (b)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--thread-scaling", action="store_true",
                        help="only ours at 1 and 2 threads, interleaved, and POT batched on 2 threads")
    parser.add_argument("--repeats", type=int, default=0,
                        help="runs per thread count with --thread-scaling (default 15, 45 for case a)")
    parser.add_argument("--cases", default="ab", choices=("a", "b", "ab"), help="cases for --thread-scaling")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.thread_scaling:
        print_table(thread_scaling(args.quick, args.repeats, cases=args.cases), SCALING_COLUMNS)
        print(f"total {time.perf_counter() - start:.0f} s; ratio_2t_1t: median over interleaved runs of the 1-thread "
              "time over the 2-thread time (spread: quartiles); control_ratio_2t_1t: the same for pure vectorised "
              "arithmetic in the same runs (the machine's ceiling); load_1min: 1-minute load average before-after")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.quick)
    print_table(rows)
    print(f"threads={torch.get_num_threads()} total {time.perf_counter() - start:.0f} s; loop/pot rows: measured on "
          "'measured_pairs' pairs (stratified) and extrapolated; pot_batch: extrapolated where measured < pairs")


if __name__ == "__main__":
    main()
