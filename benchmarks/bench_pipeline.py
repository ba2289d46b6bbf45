"""Orchestration throughput and overhead, measured through the real launcher (Ray Tune -> Ray Train -> MLflow).

1. Scaling from 1 to 2 workers per trial: the same trial (resnet18, 64 px, global batch 32, a fixed number of
   batches) with 1 worker x 2 threads and with 2 workers x 1 thread; images/s as logged by the trial.
2. Per-trial overhead: from the trial driver's start to its first training batch, and the worker's own setup.
3. The quickstart's wall time broken into Ray start, trials, and within the trials training, evaluation,
   tracking and explanation figures (``--quickstart``).

    python benchmarks/bench_pipeline.py [--quickstart]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # diml.names without an installed package
from diml import names  # noqa: E402

TRAINED_R1 = names.metric_key("best/test", names.GLOBAL, names.recall_key(1))
UNTRAINED_R1 = names.metric_key("init/test", names.GLOBAL, names.recall_key(1))

SCALING_SPEC = {
    "name": "bench-scaling",
    "epochs": 1,
    "data": {"dataset": "synthetic", "image_size": 64, "synthetic": {"num_classes": 48, "images_per_class": 24}},
    "model": {"backbone": "resnet18", "embed_dim": 128, "grid": 4, "frozen_bn": False},
    "loss": {"name": "margin"},
    "optimizer": {"lr": 1e-3},
    "batch": {"size": 32, "images_per_class": 2, "batches_per_epoch": 12},
    "evaluation": {"depths": [10], "explanations": 0},
    "launch": {"max_concurrent_trials": 1},
    "grid": {"resources": [{"workers_per_trial": 1, "cpus_per_worker": 2},
                           {"workers_per_trial": 2, "cpus_per_worker": 1}]},
}


def _launch(spec_path: pathlib.Path, folder: pathlib.Path, *sets: str) -> tuple[float, str]:
    argv = [sys.executable, "-m", "pipeline.launch", str(spec_path), "--set",
            f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", "--set", f"launch.storage_path={folder / 'ray'}",
            *[x for s in sets for x in ("--set", s)]]
    start = time.perf_counter()
    out = subprocess.run(argv, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"launch failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return wall, out.stdout


def _trial_runs(folder: pathlib.Path, experiment: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if r.data.tags.get("diml.role") == "trial"], \
        [r for r in runs if r.data.tags.get("diml.role") == "launch"]


def scaling(folder: pathlib.Path) -> list[dict]:
    spec = folder / "scaling.yaml"
    spec.write_text(yaml.safe_dump(SCALING_SPEC, sort_keys=False))
    _launch(spec, folder)
    _, runs, _ = _trial_runs(folder, "bench-scaling")
    rows = []
    for run in sorted(runs, key=lambda r: int(r.data.tags["workers"])):
        m = run.data.metrics
        rows.append({"bench": "pipeline", "case": f"{run.data.tags['workers']} worker(s)",
                     "images_per_s": m["train/images_per_second"],
                     "trial_to_first_batch_s": m.get("overhead/trial_to_first_batch_s", float("nan")),
                     "worker_setup_s": m.get("overhead/worker_setup_s", float("nan"))})
    if len(rows) == 2:
        rows[1]["speedup_vs_1_worker"] = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    return rows


def quickstart(folder: pathlib.Path) -> list[dict]:
    """Wall time of specs/quickstart.yaml and where it goes."""
    wall, _ = _launch(ROOT / "specs" / "quickstart.yaml", folder)
    client, runs, launches = _trial_runs(folder, "quickstart")
    launch = launches[0].data.metrics
    row = {"bench": "quickstart", "wall_s": wall, "ray_start_s": launch.get("launch/ray_start_s"),
           "tune_trials_s": launch.get("launch/trials_s"),
           "report_s": launch.get("launch/results_and_report_s")}
    sums = {"train_s": "train/epoch_seconds", "eval_s": "test/eval_seconds"}
    for key, metric in sums.items():
        row[f"per_trial_{key}"] = statistics.mean(
            sum(h.value for h in client.get_metric_history(r.info.run_id, metric)) for r in runs)
    for key in ("overhead/trial_to_first_batch_s", "overhead/worker_setup_s", "overhead/tracking_s",
                "overhead/explanations_s"):
        row["per_trial_" + key.split("/")[1]] = statistics.mean(r.data.metrics.get(key, float("nan")) for r in runs)
    row["trained_R_at_1"] = statistics.mean(r.data.metrics[TRAINED_R1] for r in runs)
    row["untrained_R_at_1"] = statistics.mean(r.data.metrics[UNTRAINED_R1] for r in runs)
    return [row]


def run(quick: bool = True, with_quickstart: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        folder = pathlib.Path(tmp)
        rows = scaling(folder)
        if with_quickstart:
            (folder / "qs").mkdir()
            rows += quickstart(folder / "qs")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", action="store_true", help="also time specs/quickstart.yaml")
    args = parser.parse_args()
    for row in run(with_quickstart=args.quickstart):
        print(" | ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
