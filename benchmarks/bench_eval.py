"""Evaluation benchmark (issue 5): chunked two-stage evaluation vs the straightforward per-query loop.

The loop is the DIML authors' evaluation (``evaluation/eval_diml.py``): for every query a full argsort of the
global cosine over the gallery, the structural similarity of the query with its top K (one OT batch of K problems),
the re-ranking, and per-query metrics with host syncs. Both use the same structural similarity
(:func:`diml.ot.structural_similarity_candidates`), so they produce the same metrics; the benchmark checks that on
the queries the loop ran. The loop is timed on a subset of queries spread over the classes and extrapolated
linearly to the whole gallery (its cost per query is constant: one full sort and one OT batch of K problems).

Use ``--threads 1`` on a shared machine: with two threads contending with other processes, small batched ops
were measured several times slower, and the ratio then measures the contention.

Usage::

    python benchmarks/bench_eval.py            # 10,000-image gallery, K = 100 (loop on 200 queries)
    python benchmarks/bench_eval.py --quick    # 2,000 images, loop on 40 queries
    python benchmarks/bench_eval.py --sop      # also 60,502 random queries at K = 100: seconds and peak memory
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere: `diml` importable

from diml.evaluation import evaluate, iter_rankings, ranking_metrics, recall_key
from diml.evaluation.metrics import class_sizes
from diml.names import MAP_AT_R, RP, ranking_name
from diml.ot import OTOptions

KS = (1, 2, 4, 8)
SOP_IMAGES = 60_502


def synthetic_gallery(n: int, *, dim: int = 128, cells: int = 16, class_size: int = 50, seed: int = 0,
                      structured: bool = True):
    """``(global (n, dim), labels (n,), local (n, dim, cells))``.

    ``structured``: each class has a prototype cell map; images are noisy copies with a random half of their cells
    replaced by noise (so part matching matters), global = mean of cells + noise. Otherwise i.i.d. Gaussian features
    with SOP-like class sizes (2 to 8 images, mean 5; SOP's test split: 2 to 12, mean 5.3).
    """
    gen = torch.Generator().manual_seed(seed)
    if structured:
        labels = torch.arange(n) // class_size
        proto = torch.randn(int(labels.max()) + 1, dim, cells, generator=gen)
        local = proto[labels] + 1.2 * torch.randn(n, dim, cells, generator=gen)
        occluded = torch.rand(n, 1, cells, generator=gen) < 0.5
        local = torch.where(occluded, 1.5 * torch.randn(n, dim, cells, generator=gen), local)
        glob = local.mean(dim=2) + 0.5 * torch.randn(n, dim, generator=gen)
    else:
        sizes = torch.randint(2, 9, (n // 2,), generator=gen)
        labels = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)[:n]
        local = torch.randn(n, dim, cells, generator=gen)
        glob = torch.randn(n, dim, generator=gen)
    return glob, labels, local


def default_similarity(ot: OTOptions = OTOptions(), normalized: bool = False):
    from diml.ot import structural_similarity_candidates

    return lambda ql, qg, cl, cg: structural_similarity_candidates(ql, qg, cl, cg, ot=ot, normalized=normalized)


def per_query_loop(glob, labels, local, queries: torch.Tensor, depth: int, similarity):
    """The authors' evaluation for the ``queries`` (int64 gallery rows). Returns ``({metric: [per query]}, seconds)``."""
    start = time.perf_counter()
    normalised = F.normalize(glob, dim=1)
    out = {recall_key(k): [] for k in KS} | {RP: [], MAP_AT_R: []}
    for i in queries.tolist():
        cos = normalised @ normalised[i]
        cos[i] = float("-inf")
        order = torch.argsort(cos, descending=True)
        top = order[:depth]
        stage2 = similarity(local[i][None], glob[i][None], local[top][None], glob[top][None])[0]
        head = top[torch.argsort(stage2 + cos[top], descending=True)]
        ranking = torch.cat([head, order[depth:]])
        same = (labels[ranking] == labels[i]).float()
        r = int((labels == labels[i]).sum().item()) - 1
        for k in KS:
            out[recall_key(k)].append(float(same[:k].max().item()))
        out[RP].append(same[:r].sum().item() / r)
        precision = torch.cumsum(same[:r], 0) / torch.arange(1, r + 1, device=same.device)
        out[MAP_AT_R].append((precision * same[:r]).sum().item() / r)
    if glob.is_cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def ours_for_queries(glob, labels, local, queries: torch.Tensor, depth: int, similarity):
    """Our per-query metrics for ``queries`` (``iter_rankings`` restricted to them)."""
    cutoff = class_sizes(labels) - 1
    length = min(len(labels) - 1, max(depth, max(KS), int(cutoff.max())))
    ((query_index, rankings),) = iter_rankings(glob, local, length=length, depths=(depth,), similarity=similarity,
                                               query_chunk=len(queries), queries=queries)
    match = labels[rankings[ranking_name(depth)]] == labels[query_index][:, None]
    return {name: v.tolist() for name, v in ranking_metrics(match, cutoff[query_index], KS).items()}


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_gallery(n: int, loop_queries: int, *, depth: int = 100, device="cpu", query_chunk=None, pair_chunk=None,
                  ot: OTOptions = OTOptions()) -> list[dict]:
    """Ours (end to end, all n queries) vs the loop (``loop_queries`` queries, extrapolated); metrics compared."""
    device = torch.device(device)
    glob, labels, local = (t.to(device) for t in synthetic_gallery(n))
    similarity = default_similarity(ot)
    evaluate(glob[:300], labels[:300], local[:300], depths=(10,), nmi=False, ot=ot)
    _sync(device)  # warm-up above: first-call allocations and kernels
    start = time.perf_counter()
    ours = evaluate(glob, labels, local, depths=(depth,), ks=KS, nmi=False, query_chunk=query_chunk,
                    pair_chunk=pair_chunk, ot=ot)
    _sync(device)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    multi = evaluate(glob, labels, local, depths=(10, 50, depth), ks=KS, nmi=False, query_chunk=query_chunk,
                     pair_chunk=pair_chunk, ot=ot)
    _sync(device)
    multi_s = time.perf_counter() - start
    if multi[ranking_name(depth)] != ours[ranking_name(depth)]:  # several depths in one pass must not change any
        raise RuntimeError(f"depths (10, 50, {depth}) in one pass disagree with {ranking_name(depth)} alone")
    subset = torch.arange(0, n, n // loop_queries, device=device)[:loop_queries]  # spread over all classes
    loop, loop_s = per_query_loop(glob, labels, local, subset, depth, similarity)
    # ours as evaluate() runs it: the gallery normalised once, the structural similarity told so
    mine = ours_for_queries(F.normalize(glob, dim=1), labels, F.normalize(local, dim=1), subset, depth,
                            default_similarity(ot, normalized=True))
    gap = max(abs(a - b) for name in loop for a, b in zip(loop[name], mine[name]))
    loop_total = loop_s * n / loop_queries
    common = {"bench": "eval", "device": str(device), "threads": torch.get_num_threads(), "images": n, "K": depth}
    return [
        common | {"case": f"ours diml@{depth}", "seconds": ours_s, "speedup": loop_total / ours_s,
                  "R@1": ours[ranking_name(depth)]["R@1"], "MAP@R": ours[ranking_name(depth)][MAP_AT_R],
                  "global R@1": ours["global"]["R@1"]},
        common | {"case": "ours depths 10,50,100 in one pass", "seconds": multi_s, "speedup": loop_total / multi_s},
        common | {"case": f"per-query loop (timed on {loop_queries} queries, extrapolated)", "seconds": loop_total,
                  "speedup": 1.0, "max per-query metric diff vs ours (0-1 scale)": gap},
    ]


def bench_sop(device="cpu", depth: int = 100, query_chunk=None, pair_chunk=None,
              ot: OTOptions = OTOptions()) -> dict:
    """60,502 random queries at K = ``depth``: seconds and peak memory (RSS, and CUDA allocator on a GPU)."""
    device = torch.device(device)
    glob, labels, local = (t.to(device) for t in synthetic_gallery(SOP_IMAGES, structured=False))
    inputs_mb = (glob.numel() + local.numel()) * 4 / 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = evaluate(glob, labels, local, depths=(depth,), ks=KS, nmi=False, query_chunk=query_chunk,
                      pair_chunk=pair_chunk, ot=ot)
    _sync(device)
    row = {"bench": "eval", "device": str(device), "case": f"SOP scale {SOP_IMAGES} queries, K={depth}",
           "images": SOP_IMAGES, "K": depth, "seconds": time.perf_counter() - start, "inputs_MiB": inputs_mb,
           "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "R@1": result[ranking_name(depth)]["R@1"]}
    if device.type == "cuda":
        row["peak_cuda_MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def _sop_in_child(device: str) -> dict:
    """Run :func:`bench_sop` in a fresh process so its peak RSS is its own."""
    command = [sys.executable, __file__, "--sop-child", "--device", device, "--threads", str(torch.get_num_threads())]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool, device: str = "cpu", sop: bool = False) -> list[dict]:
    """Rows for the unified benchmark runner: one per case, with ``seconds`` and ``speedup`` vs the loop."""
    rows = bench_gallery(2_000, 40, device=device) if quick else bench_gallery(10_000, 200, device=device)
    if sop:
        rows.append(_sop_in_child(device))
    return rows


def _print(rows: list[dict]) -> None:
    for row in rows:
        fields = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "bench"]
        print(" | ".join(fields))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 images instead of 10,000")
    parser.add_argument("--sop", action="store_true", help="also 60,502 random queries (slow on a CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--sop-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sop_child:
        print(json.dumps(bench_sop(args.device)))
        return
    _print(run(args.quick, args.device, args.sop))


if __name__ == "__main__":
    main()
