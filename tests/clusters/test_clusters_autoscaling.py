"""The launcher on a cluster that Ray's own autoscaler grows (fake multi-node provider, tests/clusters/
autoscaling_nodes.py): a head alone, a worker type whose custom resource every trial's worker needs. With default
concurrency settings the launcher reads how far the cluster can grow, Tune starts both trials at once, the autoscaler
adds a node for each, each trial reaches MLflow once, and no process of the cluster is left afterwards."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from autoscaling_nodes import autoscaling_cluster
from e2e_support import TEST_ENV, TINY_SPEC, write_spec
from ray_nodes import processes_in_groups, processes_under

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT = 600  # a few minutes on a 2-core machine; more when other work loads it
# 2 CPUs per node: a raylet starts at most min(CPUs, cores) worker processes at a time, and each trial starts several
# on its driver's node (driver, Train controller, ...); `trialnode: 1` still makes each node hold one trial.
HEAD_CPUS = 2
WORKER_TYPE = {"trial_node": {"resources": {"CPU": 2, "trialnode": 1}, "max_workers": 2}}


def _spec() -> dict:
    """Two tiny trials of 1 worker each; the worker needs `trialnode`, which only the autoscaled nodes have. No
    launch.max_concurrent_trials: the default concurrency decides."""
    spec = copy.deepcopy(TINY_SPEC)
    spec["name"] = "autoscale"
    spec["resources"] = {"workers_per_trial": 1, "cpus_per_worker": 1, "worker_resources": {"trialnode": 1}}
    spec.pop("launch", None)
    spec["evaluation"] = {**spec["evaluation"], "before_training": False, "save_embeddings": False}
    return spec


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _timeline(cluster, trials) -> str:
    lines = ["nodes the autoscaler added (seconds after the head started):", cluster.timeline() or "  (none)",
             "trials (MLflow child runs; rank 0's node):"]
    for r in sorted(trials, key=lambda r: r.info.start_time):
        start = r.info.start_time / 1000 - cluster.started_wall
        end = f"+{r.info.end_time / 1000 - cluster.started_wall:6.1f} s" if r.info.end_time else "(running)"
        lines.append(f"  {r.info.run_name:<10} {r.data.tags.get('ray_trial_id', '?')}  +{start:6.1f} s .. {end}"
                     f"  node {r.data.tags.get('ray_node_id', '?')[-8:]}  {r.info.status}")
    return "\n".join(lines)


def test_default_concurrency_fills_the_nodes_the_autoscaler_adds(tmp_path):
    import mlflow

    spec = write_spec(tmp_path, _spec())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with autoscaling_cluster(WORKER_TYPE, head_cpus=HEAD_CPUS) as cluster:
        pgid, temp_root = cluster.head.pgid, cluster.temp_root
        env = {**cluster.driver_env(), **TEST_ENV, "PYTHONPATH": str(REPO)}
        env.pop("RAY_ADDRESS")  # the address comes from --address
        env.pop("MLFLOW_TRACKING_URI", None)
        argv = [sys.executable, "-m", "pipeline.launch", str(spec), "--address", cluster.address,
                "--set", f"tracking.uri={uri}", "--set", f"tracking.artifact_location={tmp_path / 'art'}",
                "--set", f"launch.storage_path={tmp_path / 'ray'}"]
        dry = subprocess.run(argv + ["--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        print(f"\n--- dry run with --address ---\n{dry.stdout[-700:]}{dry.stderr[-2000:]}")
        started = time.monotonic()
        try:
            run = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired as exc:  # keep what it printed: the timeline below says where it stood
            run = subprocess.CompletedProcess(argv, -9, _text(exc.stdout), _text(exc.stderr) + "\n(timed out)")
        launcher_s = time.monotonic() - started
        time.sleep(2 * 2.0)  # one more look of the node watcher
        added = cluster.added_nodes()
        head_id = cluster.head_node_id
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("autoscale")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        trials = [r for r in runs if "ray_trial_id" in r.data.tags]
        report = _timeline(cluster, trials)
        decided = [line for line in run.stdout.splitlines() if line.startswith("concurrency:")]
        print(f"\nlauncher {launcher_s:.1f} s, exit {run.returncode}; {decided}\n{report}\n"
              "--- launcher output (tail) ---\n"
              f"{run.stdout[-2500:]}\n{run.stderr[-4000:]}")
        assert run.returncode == 0, cluster.logs()
    assert processes_in_groups([pgid]) == [] and processes_under(temp_root) == []

    assert dry.returncode == 0 and "now: no trial fits" in dry.stdout, dry.stdout  # the head alone holds none
    assert re.search(r"grown to its largest \(the autoscaler's config \S+autoscaling.yaml: 6 CPU, 0 GPU\): "
                     r"at most 2 trial\(s\) run at once; about 1 wave\(s\)", dry.stdout), dry.stdout
    assert "concurrency: 2 trial(s) at once; fit now: 0, grown to its largest: 2" in run.stdout
    assert len(added) >= 2, report  # the autoscaler added nodes (none was up when the launch started)
    labels = sorted(r.data.tags["trial_index"] for r in trials)
    assert labels == ["0", "1"], report  # every trial reached MLflow exactly once
    assert all(r.info.status == "FINISHED" and r.data.metrics for r in trials), report
    nodes = {r.data.tags["ray_node_id"] for r in trials}
    assert len(nodes) == 2 and head_id not in nodes and nodes <= set(added), (report, head_id, added)
    first_end = min(r.info.end_time for r in trials)
    last_start = max(r.info.start_time for r in trials)
    assert last_start < first_end, report  # the two trials ran at the same time
