"""Correspondence metric (issue 25) next to the retrieval evaluation it runs beside: is it at most ~10 % of it?

At CUB's test size (5,924 images, 100 classes of ~59) with random structured embeddings (``bench_eval``'s
``synthetic_gallery``) and random keypoints (15 parts, 70 % visible, like CUB's ~10 of 15), one run times
:func:`diml.evaluation.evaluate` as a trial calls it (depths (100,), Recall@1..8, NMI, the trial's OT options
:data:`diml.ot.TRIAL_EVALUATION_OT`) and :func:`diml.evaluation.correspondence_metrics` on 10,000 unordered
same-class pairs in both directions (two OT solves per pair: cross-attention and uniform marginals), with the same OT
options.  The two are timed alternately (``--repeats`` each, medians) so that a busy shared machine slows both alike;
the ratio is correspondence / evaluation, in wall-clock seconds and in CPU seconds of the process (all threads:
the work done, which waiting for a core on a shared machine does not inflate).

Usage::

    python benchmarks/bench_correspondence.py                       # D 128 and 512, grid 4 and 7, 1 and 2 threads
    python benchmarks/bench_correspondence.py --threads 1 --dims 128 --grids 4 --repeats 1   # one row, quickly
    python benchmarks/bench_correspondence.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere: `diml` importable
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_eval import synthetic_gallery  # noqa: E402

from diml.evaluation import correspondence_metrics, evaluate  # noqa: E402
from diml.ot import TRIAL_EVALUATION_OT  # noqa: E402

CUB_TEST_IMAGES = 5_924
CLASS_SIZE = 60  # 99 classes of 60 and one of 44 (CUB's test classes hold 41-60 images)
PARTS = 15
IMAGE_SIZE = 224


def random_keypoints(n: int, *, parts: int = PARTS, visible: float = 0.7, seed: int = 0):
    """``(keypoints (n, parts, 3), boxes (n, 4))``: uniform points in the crop, invisible ones at (0, 0), and boxes
    of at least half the crop."""
    gen = torch.Generator().manual_seed(seed)
    keypoints = torch.rand(n, parts, 3, generator=gen) * IMAGE_SIZE
    keypoints[..., 2] = (torch.rand(n, parts, generator=gen) < visible).float()
    keypoints[..., :2] *= keypoints[..., 2:]
    low = torch.rand(n, 2, generator=gen) * IMAGE_SIZE / 2
    return keypoints, torch.cat([low, low + IMAGE_SIZE / 2], dim=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of this process, all threads)``."""
    _sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def bench(dim: int, grid: int, *, images: int, pairs: int, repeats: int, device: torch.device) -> dict:
    """One row: median seconds of the evaluation and of the correspondence metric, alternated."""
    glob, labels, local = synthetic_gallery(images, dim=dim, cells=grid * grid, class_size=CLASS_SIZE)
    keypoints, boxes = random_keypoints(images)
    glob, labels, local, keypoints, boxes = (t.to(device) for t in (glob, labels, local, keypoints, boxes))
    part_names = [f"part{k}" for k in range(PARTS)]

    def run_eval():
        return evaluate(glob, labels, local, depths=(100,), ot=TRIAL_EVALUATION_OT, device=device)

    def run_corr():
        return correspondence_metrics(local, glob, labels, keypoints, grid=grid, image_size=IMAGE_SIZE,
                                      part_names=part_names, boxes=boxes, ot=TRIAL_EVALUATION_OT, max_pairs=pairs,
                                      device=device)

    # warm-up: compiled kernels and first-call allocations, on a slice
    evaluate(glob[:300], labels[:300], local[:300], depths=(10,), nmi=False, ot=TRIAL_EVALUATION_OT, device=device)
    correspondence_metrics(local[:300], glob[:300], labels[:300], keypoints[:300], grid=grid, image_size=IMAGE_SIZE,
                           part_names=part_names, ot=TRIAL_EVALUATION_OT, max_pairs=200, device=device)
    eval_t, corr_t = [], []
    for _ in range(repeats):
        eval_t.append(_timed(run_eval, device))
        corr_t.append(_timed(run_corr, device))
    result = run_corr()
    (e, e_cpu), (c, c_cpu) = ([statistics.median(t[k] for t in times) for k in (0, 1)] for times in (eval_t, corr_t))
    return {"threads": torch.get_num_threads(), "D": dim, "grid": grid, "eval_s": e, "corr_s": c, "ratio": c / e,
            "eval_cpu_s": e_cpu, "corr_cpu_s": c_cpu, "cpu_ratio": c_cpu / e_cpu,
            "directed_pairs_per_s": result["num_directed_pairs"] / c, "num_pairs": int(result["num_pairs"]),
            "ot_argmax_PCK@0.1": result["ot_argmax/PCK@0.1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="torch intra-op threads, comma-separated (default 1,2)")
    parser.add_argument("--dims", default="128,512")
    parser.add_argument("--grids", default="4,7")
    parser.add_argument("--images", type=int, default=CUB_TEST_IMAGES)
    parser.add_argument("--pairs", type=int, default=10_000, help="unordered pairs of the correspondence metric")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each, alternated; medians")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    header = (f"{'threads':>7} {'D':>4} {'grid':>4} {'evaluate s':>10} {'corr. s':>8} {'ratio':>6} "
              f"{'eval. CPU s':>11} {'corr. CPU s':>11} {'CPU ratio':>9} {'dir. pairs/s':>12}")
    print(f"{args.images} images, {args.pairs} pairs x 2 directions, device {device}, {args.repeats} repeats")
    print(header, flush=True)
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for dim in (int(d) for d in args.dims.split(",")):
            for grid in (int(g) for g in args.grids.split(",")):
                row = bench(dim, grid, images=args.images, pairs=args.pairs, repeats=args.repeats, device=device)
                rows.append(row)
                print(f"{row['threads']:>7} {dim:>4} {grid:>4} {row['eval_s']:>10.2f} {row['corr_s']:>8.2f} "
                      f"{row['ratio']:>6.1%} {row['eval_cpu_s']:>11.2f} {row['corr_cpu_s']:>11.2f} "
                      f"{row['cpu_ratio']:>9.1%} {row['directed_pairs_per_s']:>12,.0f}", flush=True)


if __name__ == "__main__":
    main()
