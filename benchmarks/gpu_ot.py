"""GPU check of the OT core (issue 3), one short run (well under 2 minutes on an H100/H200).

The cases of ``bench_ot.py`` on CUDA, ours vs POT's batched solver (``ot.batch.solve_batch``, float32 CUDA tensors,
cell similarities and marginals from our matrix products), at matched accuracy (marginal error <= 1e-4):

1. all pairs of a 112-image batch (12,544 pairs), random and near-duplicate features;
2. 1,000 queries x top-100 candidates (100,000 pairs), random and near-duplicate features;
3. scale: 10,000 queries x 100 candidates (10^6 pairs, 8 GB of candidate features), ours only, with the peak CUDA
   memory beyond the inputs (``torch.cuda.max_memory_allocated``).

Also checks that ours agrees with POT on the similarities (``max_abs_sim_diff_vs_ours``) and reports the Sinkhorn
iterations and Newton usage.  POT batched runs on a subset where marked (``measured_pairs``) and is extrapolated
linearly, which favours it (it iterates until the slowest problem of its batch converges).

Usage (repository root): ``python benchmarks/gpu_ot.py``; rows are printed as JSON lines and, when ``$OUT`` is set,
written to ``$OUT/gpu_ot.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ot  # noqa: E402  (benchmarks/ is not a package)
from bench_ot import TOL, _ours_rows, _pot_batch_row, _solve_stats, batch_case, candidate_case  # noqa: E402

from diml.ot import OTOptions, structural_similarity, structural_similarity_candidates  # noqa: E402
from diml.ot.matching import _prepare, pair_terms_all, pair_terms_candidates  # noqa: E402

CHUNK = 262_144  # pairs per chunk on the GPU
TRAIN = OTOptions(tol=TOL)  # the training runs' tolerance


def _with_speedups(rows: list[dict]) -> list[dict]:
    ours = rows[0]["pairs"] / rows[0]["seconds"]
    for row in rows:
        row["pairs_per_s"] = row["pairs"] / row["seconds"]
        row["speedup"] = ours / row["pairs_per_s"]
    return rows


def gpu_batch(features: str) -> list[dict]:
    local, glob, _ = batch_case(features, device="cuda")
    n = local.shape[0]
    terms_all = pair_terms_all(*_prepare(local, glob, local, glob, candidates=False), "cross_attention")
    rows, sim = _ours_rows("a: 112-batch all pairs", features, n * n,
                           lambda: structural_similarity(local, glob, local, glob, ot=TRAIN, chunk_size=CHUNK),
                           lambda: structural_similarity(local, glob, local, glob, chunk_size=CHUNK),
                           _solve_stats(*terms_all), 5)
    terms = lambda: pair_terms_all(*_prepare(local, glob, local, glob, candidates=False),  # noqa: E731
                                   "cross_attention")
    rows.append(_pot_batch_row(rows[0]["case"], features, n * n, torch.arange(n * n, device="cuda"), terms,
                               sim.reshape(-1)))
    return _with_speedups(rows)


def gpu_loop(features: str, n_pairs: int = 100) -> dict:
    """The per-pair loop (sync every iteration, the authors' margin-loss approach) on CUDA, on ``n_pairs`` random
    pairs of case (a), extrapolated to 12,544 pairs: kernel launches and host syncs dominate it on a GPU."""
    local, glob, _ = batch_case(features, device="cuda")
    n = local.shape[0]
    gen = torch.Generator().manual_seed(0)
    picks = torch.randint(0, n * n, (n_pairs,), generator=gen).tolist()
    bench_ot.loop_pair(local[0], glob[0], local[1], glob[1])  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    iterations = [bench_ot.loop_pair(local[p // n], glob[p // n], local[p % n], glob[p % n])[1] for p in picks]
    torch.cuda.synchronize()
    per_pair = (time.perf_counter() - start) / n_pairs
    return {"case": "a: 112-batch all pairs", "features": features, "method": "per-pair loop (sync each iteration)",
            "pairs": n * n, "measured_pairs": n_pairs, "seconds": per_pair * n * n,
            "loop_iterations_mean": sum(iterations) / n_pairs}


def gpu_candidates(features: str, n_queries: int = 1000, k: int = 100, pot_queries: int | None = None) -> list[dict]:
    ql, qg, cl, cg = candidate_case(features, n_queries, k, device="cuda")
    terms_all = pair_terms_candidates(*_prepare(ql, qg, cl, cg, candidates=True), "cross_attention")
    rows, sim = _ours_rows(f"b: {n_queries} queries x top-{k}", features, n_queries * k,
                           lambda: structural_similarity_candidates(ql, qg, cl, cg, ot=TRAIN, chunk_size=CHUNK),
                           lambda: structural_similarity_candidates(ql, qg, cl, cg, chunk_size=CHUNK),
                           _solve_stats(*terms_all), 5)
    q = pot_queries or n_queries  # POT batched on the first q queries, extrapolated
    terms = lambda: pair_terms_candidates(*_prepare(ql[:q], qg[:q], cl[:q], cg[:q], candidates=True),  # noqa: E731
                                          "cross_attention")
    rows.append(_pot_batch_row(rows[0]["case"], features, n_queries * k, torch.arange(q * k, device="cuda"), terms,
                               sim.reshape(-1)))
    return _with_speedups(rows)


def gpu_scale(n_queries: int = 10_000, k: int = 100) -> dict:
    ql, qg, cl, cg = candidate_case("random", n_queries, k, device="cuda")
    inputs = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    seconds, _ = bench_ot._timed(lambda: structural_similarity_candidates(ql, qg, cl, cg, ot=TRAIN,
                                                                          chunk_size=CHUNK), 2)
    return {"case": f"scale: {n_queries} queries x {k}", "features": "random", "method": "ours",
            "pairs": n_queries * k, "seconds": seconds, "pairs_per_s": n_queries * k / seconds,
            "inputs_MiB": inputs / 2**20,
            "peak_beyond_inputs_MiB": (torch.cuda.max_memory_allocated() - inputs) / 2**20}


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_ot.py needs a CUDA device: run bench_ot.py on a CPU")
    warnings.filterwarnings("ignore", module="ot")
    start = time.perf_counter()
    structural_similarity_candidates(*candidate_case("random", 8, 4, device="cuda"))  # CUDA/cuBLAS warm-up
    rows = [{"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}]
    for features in ("random", "near_duplicate"):
        batch_rows = gpu_batch(features)
        batch_rows.append(gpu_loop(features))
        rows += _with_speedups(batch_rows)
        rows += gpu_candidates(features, pot_queries=None if features == "random" else 200)
    rows.append(gpu_scale())
    rows.append({"total_seconds": time.perf_counter() - start})
    for row in rows:
        print(json.dumps(row, default=str))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_ot.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
