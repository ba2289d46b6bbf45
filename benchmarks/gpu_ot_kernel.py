"""GPU check of the Triton OT kernels (issue 19, ``diml/ot/_gpu.py``): one short run on one H100/H200.

1. Agreement with the batched tensor path (the CUDA solver before the kernels, ``_gpu.ENABLED = False``) on the
   cases of ``bench_ot.py``: largest similarity difference, share of problems with the same Sinkhorn iterations and
   Newton steps, problems polished.
2. Time of the structural similarity at the training tolerance, tensor path vs kernels (CUDA-synchronised medians).
3. Time of a DIML loss's forward + backward at a training batch (112 images, 128-d, 4 x 4 cells; no backbone), tensor
   path vs kernels, next to the global loss: what the loss adds to a step, without the backbone's noise.

Usage (repository root): ``python benchmarks/gpu_ot_kernel.py``; JSON lines on stdout and, when ``$OUT`` is set, in
``$OUT/gpu_ot_kernel.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ot import TOL, batch_case, candidate_case  # noqa: E402

from diml.losses import build_loss  # noqa: E402
from diml.ot import OTOptions, TRIAL_TRAINING_OT, _gpu  # noqa: E402
from diml.ot._scaling import LogKernel  # noqa: E402
from diml.ot.matching import _prepare, pair_terms_all, pair_terms_candidates  # noqa: E402
from diml.ot.sinkhorn import solve  # noqa: E402

TRAIN = OTOptions(tol=TOL, max_iter=TRIAL_TRAINING_OT.max_iter)
DEVICE = os.environ.get("BENCH_DEVICE", "cuda")  # "cpu" only to try the script's plumbing


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _ms(fn, repeats: int = 20) -> float:
    fn()
    _sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _solve(terms, ot):
    cell_sim, a, b = terms
    r = cell_sim.shape[-1]
    flat = cell_sim.reshape(-1, r, r)
    res = solve(LogKernel(flat, 1.0 / ot.eps, -1.0 / ot.eps), a.reshape(-1, r), b.reshape(-1, r), ot, direct=True)
    return (res.plan * flat).sum((1, 2)), res


def agreement(name: str, features: str, terms_fn) -> dict:
    row = {"check": "solve", "case": name, "features": features}
    for ot_name, ot in (("train", TRAIN), ("default", OTOptions())):
        terms = terms_fn()
        _gpu.ENABLED = False
        ref_sim, ref = _solve(terms, ot)
        off = _ms(lambda: _solve(terms_fn(), ot))
        _gpu.ENABLED = True
        start = time.perf_counter()
        got_sim, got = _solve(terms, ot)
        _sync()
        first = time.perf_counter() - start
        on = _ms(lambda: _solve(terms_fn(), ot))
        row.update({
            "pairs": int(got_sim.numel()),
            f"{ot_name}_max_abs_sim_diff": float((ref_sim - got_sim).abs().max()),
            f"{ot_name}_same_iterations": float((ref.problem_iterations == got.problem_iterations).float().mean()),
            f"{ot_name}_same_newton_steps": float(
                (ref.problem_newton_steps == got.problem_newton_steps).float().mean()),
            f"{ot_name}_polished": int((got.problem_newton_steps > 0).sum()),
            f"{ot_name}_max_err": float(got.marginal_error.max()),
            f"{ot_name}_ms_tensor_path": off, f"{ot_name}_ms_kernels": on, f"{ot_name}_speedup": off / on,
            f"{ot_name}_first_call_s": first})
    return row


def loss_rows() -> list[dict]:
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    n, d, cells = 112, 128, 16
    glob = torch.randn(n, d, generator=gen, device=DEVICE)
    local = torch.randn(n, d, cells, generator=gen, device=DEVICE) + glob.unsqueeze(2)
    labels = torch.arange(n // 2, device=DEVICE).repeat_interleave(2)
    rows = []
    for loss_name, miner in (("margin", "distance"), ("multisimilarity", None)):
        times = {}
        for similarity, kernels in (("global", True), ("diml", False), ("diml", True)):
            _gpu.ENABLED = kernels
            loss = build_loss(loss_name, {}, similarity=similarity, num_classes=n // 2, embed_dim=d, miner=miner,
                              ot=TRIAL_TRAINING_OT).to(DEVICE)
            g, loc = glob.clone().requires_grad_(), local.clone().requires_grad_()

            def step():
                torch.manual_seed(0)  # the miner samples
                loss(g, loc, labels).backward()

            times[(similarity, kernels)] = _ms(step)
        rows.append({"check": "loss forward+backward", "loss": loss_name, "miner": miner or "-",
                     "ms_global": times[("global", True)], "ms_diml_tensor_path": times[("diml", False)],
                     "ms_diml_kernels": times[("diml", True)],
                     "speedup": times[("diml", False)] / times[("diml", True)]})
    _gpu.ENABLED = True
    return rows


def main() -> None:
    rows = []
    for features in ("random", "near_duplicate"):
        local, glob, _ = batch_case(features, device=DEVICE)
        rows.append(agreement("a: 112-batch all pairs", features, lambda: pair_terms_all(
            *_prepare(local, glob, local, glob, candidates=False), "cross_attention")))
        print(json.dumps(rows[-1]), flush=True)
    for features in ("random", "near_duplicate"):
        ql, qg, cl, cg = candidate_case(features, int(os.environ.get("BENCH_QUERIES", 1000)), 100, device=DEVICE)
        rows.append(agreement("b: 1000 queries x top-100", features, lambda: pair_terms_candidates(
            *_prepare(ql, qg, cl, cg, candidates=True), "cross_attention")))
        print(json.dumps(rows[-1]), flush=True)
    for row in loss_rows():
        rows.append(row)
        print(json.dumps(row), flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_ot_kernel.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
