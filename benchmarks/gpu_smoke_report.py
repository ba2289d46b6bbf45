"""Where the GPU smoke's trials spent their time (issue 26): the time split per epoch and the GPU-busy share.

    python benchmarks/gpu_smoke_report.py TRACKING_URI EXPERIMENT [EXPERIMENT ...]

For each trial run of each experiment (launches of ``specs/gpu_smoke.yaml``): per epoch, the ``time/*`` metrics
(``pipeline/trial/timing.py``), the training step's share of the epoch, and over the whole trial MLflow's
``system/gpu_0_utilization_percentage`` (median and max of its samples; logged when nvidia-ml-py is installed).
Also written as JSON to ``$OUT/gpu_smoke.json`` when ``OUT`` is set.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys

PARTS = ("train_step", "data_wait", "eval", "checkpoint", "tracking", "explanations")
GPU_METRIC = "system/gpu_0_utilization_percentage"


def report(uri: str, experiments: list[str]) -> list[dict]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    rows = []
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            print(f"{name}: no such experiment under {uri}")
            continue
        for run in client.search_runs([experiment.experiment_id], "tags.`diml.role` = 'trial'"):
            history = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
                       for key in [f"time/{p}_s" for p in PARTS] + ["time/epoch_s"]}
            gpu = [m.value for m in client.get_metric_history(run.info.run_id, GPU_METRIC)]
            for step in sorted(history["time/epoch_s"]):
                row = {"experiment": name, "trial": run.data.tags.get("similarity", run.info.run_name),
                       "epoch": step, "epoch_s": history["time/epoch_s"][step],
                       **{p: history[f"time/{p}_s"].get(step, float("nan")) for p in PARTS},
                       "gpu_util_median": statistics.median(gpu) if gpu else None,
                       "gpu_util_max": max(gpu) if gpu else None}
                row["step_share"] = row["train_step"] / row["epoch_s"]
                rows.append(row)
    return rows


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    rows = report(sys.argv[1], sys.argv[2:])
    print(f"{'experiment':20s} {'trial':7s} ep " + " ".join(f"{p[:10]:>10s}" for p in PARTS)
          + "   epoch_s  step %  GPU util % (median / max)")
    for r in rows:
        util = "n/a (no nvidia-ml-py)" if r["gpu_util_median"] is None else \
            f"{r['gpu_util_median']:.0f} / {r['gpu_util_max']:.0f}"
        print(f"{r['experiment']:20s} {r['trial']:7s} {r['epoch']:2d} "
              + " ".join(f"{r[p]:10.2f}" for p in PARTS)
              + f"  {r['epoch_s']:8.2f}  {100 * r['step_share']:5.1f}   {util}")
    if os.environ.get("OUT"):
        pathlib.Path(os.environ["OUT"], "gpu_smoke.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
