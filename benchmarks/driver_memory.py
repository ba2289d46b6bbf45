"""Resident memory of a trial's driver-side processes: what each Tune trial adds to the node it is placed on.

Two measurements, side by side:

1. ``imports``: a fresh interpreter imports what the trial driver (``run_trial``) imports -- Ray Tune, Ray Train
   and ``ray.train.torch``, Train's Tune callback, the pipeline's trial code (torch, MLflow client, the specs) --
   and reports ``VmRSS`` / ``VmHWM`` from ``/proc/self/status``.
2. ``launch``: a real local launch of a tiny grid (``python -m pipeline.launch``, 2 trials x 1 worker) while a
   sampler reads every 0.2 s the RSS of each process whose title is ``ray::ImplicitFunc`` (the Tune function
   trainable, i.e. the trial driver) or ``ray::TrainController`` (Train V2's per-trial controller actor, placed
   next to it), keeping each process's peak.

    python benchmarks/driver_memory.py            # prints one table, about 1-2 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

IMPORTS = r"""
import json
import ray.tune, ray.train, ray.train.torch
from ray.tune.integration.ray_train import TuneReportCallback
import mlflow
import pipeline.trial.driver, pipeline.trial.worker
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print("MEM=" + json.dumps({k: int(status[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}))
"""

TITLES = ("ray::ImplicitFunc", "ray::TrainController")


def imports_rss() -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", IMPORTS], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("MEM="))[4:])


def _rollup(pid: Path) -> dict[str, int]:
    """``Rss`` and ``Pss`` (bytes) of a process from ``/proc/PID/smaps_rollup``. PSS charges each shared page (torch's
    and Ray's shared libraries, mapped by every process) to its sharers in equal parts: what N such processes on
    one node add up to is N x PSS, not N x RSS."""
    values = {}
    for line in (pid / "smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def _sample(peaks: dict[int, tuple[str, int, int]], stop: threading.Event) -> None:
    while not stop.wait(0.2):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                if not title.startswith(TITLES):
                    continue
                mem = _rollup(entry)
            except (OSError, IndexError, ValueError):
                continue
            kind = next(t for t in TITLES if title.startswith(t))
            pid = int(entry.name)
            _, rss, pss = peaks.get(pid, (kind, 0, 0))
            peaks[pid] = (kind, max(rss, mem.get("Rss", 0)), max(pss, mem.get("Pss", 0)))


def launch_rss() -> dict[int, tuple[str, int, int]]:
    from e2e_support import TEST_ENV, TINY_SPEC, write_spec

    spec = {**TINY_SPEC, "name": "driver-memory",
            "resources": {**TINY_SPEC["resources"], "workers_per_trial": 1}, "launch": {"max_concurrent_trials": 2}}
    peaks: dict[int, tuple[str, int, int]] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(peaks, stop), daemon=True)
    with tempfile.TemporaryDirectory(prefix="dmem-") as folder:
        path = write_spec(Path(folder), spec)
        argv = [sys.executable, "-m", "pipeline.launch", str(path), "--set", f"tracking.uri=sqlite:///{folder}/m.db",
                "--set", f"tracking.artifact_location={folder}/art", "--set", f"launch.storage_path={folder}/ray"]
        sampler.start()
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, **TEST_ENV, "PYTHONPATH": str(ROOT)})
        stop.set()
        sampler.join()
    if out.returncode != 0:
        raise SystemExit(f"launch failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return peaks


def main() -> int:
    mib = 1024 ** 2
    t0 = time.perf_counter()
    imports = imports_rss()
    peaks = launch_rss()
    rows = [("imports of run_trial (fresh interpreter)", "VmRSS", imports["VmRSS"] / mib),
            ("imports of run_trial (fresh interpreter)", "VmHWM", imports["VmHWM"] / mib)]
    for pid, (kind, rss, pss) in sorted(peaks.items()):
        rows.append((f"{kind} pid {pid} (tiny launch)", "peak RSS", rss / mib))
        rows.append((f"{kind} pid {pid} (tiny launch)", "peak PSS", pss / mib))
    width = max(len(r[0]) for r in rows)
    print(f"{'process'.ljust(width)}  what      MiB")
    for name, what, value in rows:
        print(f"{name.ljust(width)}  {what.ljust(8)}  {value:7.0f}")
    for index, what in ((1, "RSS"), (2, "PSS")):
        per_trial: dict[str, int] = {}
        for peak in peaks.values():
            per_trial[peak[0]] = max(per_trial.get(peak[0], 0), peak[index])
        print(f"\nper trial, peak {what} (max over trials): "
              + ", ".join(f"{k} {v / mib:.0f} MiB" for k, v in per_trial.items())
              + f"; sum {sum(per_trial.values()) / mib:.0f} MiB")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
