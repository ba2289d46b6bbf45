"""Mean and spread over seeds of a launch's trials, grouped by loss and training similarity (docs/FIDELITY.md).

    python benchmarks/seed_summary.py --uri sqlite:////abs/mlflow.db --experiment global-vs-diml-training

Reads every finished child run of the experiment (tags ``loss``, ``similarity``, ``seed``) and prints, per group,
the mean, the sample standard deviation and the per-seed values of the best test R@1 for the global ranking and each
re-ranking depth (``untrained_*``: the network before training, where ``evaluation.before_training`` logged it), and
the per-seed difference DIML-trained minus global-trained.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from mlflow.tracking import MlflowClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--metric", default="R_at_1")
    args = parser.parse_args()
    client = MlflowClient(args.uri)
    experiment = client.get_experiment_by_name(args.experiment)
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'", max_results=10000)
    values: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        if "loss" not in tags or "seed" not in run.data.params and "seed" not in tags:
            continue
        seed = int(tags.get("seed", run.data.params.get("seed", -1)))
        for key, value in metrics.items():
            parts = key.split("/")
            if len(parts) == 4 and parts[1] == "test" and parts[3] == args.metric and parts[0] in ("best", "init"):
                ranking = parts[2] if parts[0] == "best" else f"untrained_{parts[2]}"
                values[(tags["loss"], tags["similarity"], ranking)][seed] = value
    for (loss, similarity, ranking), per_seed in sorted(values.items()):
        seeds = sorted(per_seed)
        numbers = [per_seed[s] for s in seeds]
        spread = statistics.stdev(numbers) if len(numbers) > 1 else float("nan")
        shown = ", ".join(f"{s}: {per_seed[s]:.2f}" for s in seeds)
        print(f"{loss:16s} {similarity:7s} {ranking:18s} mean {statistics.mean(numbers):6.2f}  sd {spread:5.2f}  "
              f"(seeds {shown})")
    print()
    for (loss, similarity, ranking), per_seed in sorted(values.items()):
        if similarity != "diml" or (loss, "global", ranking) not in values:
            continue
        base = values[(loss, "global", ranking)]
        diffs = [per_seed[s] - base[s] for s in sorted(per_seed) if s in base]
        if diffs:
            spread = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
            print(f"{loss:16s} diml - global  {ranking:18s} mean {statistics.mean(diffs):+6.2f}  sd {spread:5.2f}  "
                  f"per seed {', '.join(f'{d:+.2f}' for d in diffs)}")


if __name__ == "__main__":
    main()
