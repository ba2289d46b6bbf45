"""Every benchmark in one run, one table: OT pairs/s, evaluation, training steps, orchestration overhead.

    python benchmarks/run_all.py [--quick] [--device cuda] [--skip pipeline,quickstart] [--json rows.json]

Each section is the ``run()`` of its own script (``bench_ot.py``, ``bench_eval.py``, ``bench_train.py``,
``bench_pipeline.py``): rows measured side by side within a section, ratios against that section's baselines.
Use ``--threads 1`` on a shared machine (contention makes small batched ops erratic).  The ``ot_threads`` section
sets its own thread counts: ours at 1 and 2 threads, interleaved, and POT batched on 2 threads
(``bench_ot.thread_scaling``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

SECTIONS = ("ot", "ot_threads", "eval", "train", "pipeline", "quickstart")
KEYS = ("case", "features", "method", "loss", "similarity", "seconds", "pairs_per_s", "images_per_s", "step_s",
        "speedup", "pairs_per_s_1t", "pairs_per_s_2t", "ratio_2t_1t", "ratio_spread", "control_ratio_2t_1t",
        "speedup_vs_pot_batch_2t", "diml_overhead", "speedup_vs_1_worker", "trial_to_first_batch_s", "wall_s")


def _section(name: str, quick: bool, device: str) -> list[dict]:
    if name == "ot":
        import bench_ot
        return bench_ot.run(quick=quick)
    if name == "ot_threads":  # its own 1 and 2 threads, whatever --threads says
        import bench_ot
        return bench_ot.thread_scaling(quick=quick)
    if name == "eval":
        import bench_eval
        return bench_eval.run(quick=quick, device=device)
    if name == "train":
        import bench_train
        return bench_train.run(quick=quick, device=device)
    import bench_pipeline
    if name == "pipeline":
        return bench_pipeline.run(quick=quick)
    with __import__("tempfile").TemporaryDirectory(prefix="bench_qs_") as tmp:
        return bench_pipeline.quickstart(pathlib.Path(tmp))


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def print_table(rows: list[dict]) -> None:
    columns = ["section"] + [k for k in KEYS if any(k in r for r in rows)]
    extra = sorted({k for r in rows for k in r} - set(columns) - {"bench"})
    columns += extra
    table = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--skip", default="", help=f"comma-separated sections among {', '.join(SECTIONS)}")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--skip: unknown section(s) {sorted(unknown)}; choose among {', '.join(SECTIONS)}")
    rows = []
    for name in SECTIONS:
        if name in skip:
            continue
        start = time.perf_counter()
        section = _section(name, args.quick, args.device)
        print(f"[{name}: {time.perf_counter() - start:.0f} s]", file=sys.stderr)
        rows += [{"section": name, **row} for row in section]
    print(f"machine: {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print_table(rows)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
