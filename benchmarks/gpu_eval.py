"""GPU check of the evaluation (issue 5), one short run (well under 2 minutes on an H100/H200).

1. 10,000-image structured gallery, K = 100: ours end to end vs the authors' per-query loop (timed on 200 queries,
   extrapolated), with the per-query metric gap on those queries.
2. 60,502 random queries (SOP scale), K = 100: seconds and peak CUDA memory (``torch.cuda.max_memory_allocated``).

Usage (repository root): ``python benchmarks/gpu_eval.py`` ; rows are printed and, when ``$OUT`` is set, written
to ``$OUT/gpu_eval.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_eval  # noqa: E402  (benchmarks/ is not a package)


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_eval.py needs a CUDA device: run bench_eval.py on a CPU")
    start = time.perf_counter()
    rows = [{"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}]
    rows += bench_eval.bench_gallery(10_000, 200, device="cuda", query_chunk=1024, pair_chunk=65536)
    rows.append(bench_eval.bench_sop("cuda", query_chunk=1024, pair_chunk=65536))
    rows.append({"total_seconds": time.perf_counter() - start})
    for row in rows:
        print(json.dumps(row))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_eval.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
