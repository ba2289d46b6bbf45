"""The launcher on a real two-node Ray cluster (`--address`): a tiny grid whose trials run on both nodes and log to
one MLflow store, and the cluster leaves no process behind."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray_nodes import processes_in_groups, processes_under, two_node_cluster

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _tiny_spec() -> dict:
    """The session's tiny grid (tests/conftest.py TINY_SPEC: 2 trials x 2 workers x 1 CPU), under its own name."""
    spec = importlib.util.spec_from_file_location("diml_tests_root_conftest", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tiny = copy.deepcopy(module.TINY_SPEC)
    tiny["name"] = "two-node"
    tiny["resources"].update(workers_per_trial=2, cpus_per_worker=1)  # the layout below
    tiny["launch"] = {**tiny.get("launch", {}), "max_concurrent_trials": 2}
    tiny["grid"] = {"loss.similarity": ["global", "diml"]}
    return tiny


# Two trials of 2 workers x 1 CPU (+ a 0.01-CPU driver) on two nodes of 3 CPUs: both trials run at once and
# their worker groups cannot share a node, so each node hosts one trial's rank 0.
SPEC = _tiny_spec()


def test_tiny_grid_with_address_runs_trials_on_both_nodes_and_reaches_mlflow(tmp_path):
    import mlflow

    spec = tmp_path / "two-node.yaml"
    spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t0 = time.monotonic()
    with two_node_cluster(head_cpus=3, worker_cpus=3) as cluster:
        up = time.monotonic() - t0
        pgids, temp_root = [cluster.head.pgid, cluster.worker.pgid], cluster.temp_root
        argv = [sys.executable, "-m", "pipeline.launch", str(spec), "--address", cluster.address,
                "--set", f"tracking.uri={uri}", "--set", f"tracking.artifact_location={tmp_path / 'art'}",
                "--set", f"launch.storage_path={tmp_path / 'ray'}"]
        env = cluster.driver_env()
        env.pop("RAY_ADDRESS")  # the address comes from --address
        env.pop("MLFLOW_TRACKING_URI", None)
        run = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        grid = time.monotonic() - t0 - up
        node_ids = dict(cluster.node_ids)
        assert run.returncode == 0, (run.stdout[-4000:] + run.stderr[-4000:] + cluster.logs())

    assert processes_in_groups(pgids) == [] and processes_under(temp_root) == []
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(SPEC["name"])
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if "ray_node_id" in r.data.tags]
    assert len(trials) == 2, [r.data.tags for r in runs]
    where = {r.data.tags["ray_trial_id"]: r.data.tags["ray_node_id"] for r in trials}
    assert set(where.values()) == set(node_ids.values()), (where, node_ids)
    for r in trials:
        assert r.info.status == "FINISHED" and r.data.metrics, r.data.tags
    names = {v: k for k, v in node_ids.items()}
    print(f"\ntwo-node grid: cluster up {up:.1f} s, launcher {grid:.1f} s\n{run.stdout[-2500:]}")
    for r in sorted(trials, key=lambda r: r.data.tags["ray_trial_id"]):
        print(f"  trial {r.data.tags['ray_trial_id']} ({r.info.run_name}) rank 0 on {names[r.data.tags['ray_node_id']]}"
              f" node {r.data.tags['ray_node_id'][:12]}")
