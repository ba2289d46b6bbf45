"""The cluster configs' heads hold the drivers of the trials the configs advertise (the full grid at the cluster's
largest), with Ray's memory on a node taken as 70% of its RAM less what the head's own services use."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.launch import autoscaler
from pipeline.specs.launch import DRIVER_MEMORY_MB

REPO = Path(__file__).resolve().parents[2]
GIB = 1024**3
# RAM of the head instance types (AWS / GCP documentation), GiB
HEAD_RAM_GIB = {"r6i.4xlarge": 128, "n2-highmem-16": 128 * 1e9 / GIB}
HEAD_SERVICES_GIB = 3  # GCS, autoscaler, dashboard/job server, MLflow server, the launcher's Tune loop
OBJECT_STORE_SHARE = 0.3  # Ray's default: 30% of the free memory goes to the object store
FULL_GRID_WORKER = {"CPU": 6.0, "GPU": 1.0}


def _drivers_held(ram_gib: float) -> int:
    memory = (1 - OBJECT_STORE_SHARE) * (ram_gib - HEAD_SERVICES_GIB) * GIB
    return int(memory // (DRIVER_MEMORY_MB * 1024**2))


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_the_head_holds_a_driver_for_every_trial_at_the_largest_size(name):
    config = yaml.safe_load((REPO / "clusters" / name).read_text())
    trials = autoscaler.max_trials(autoscaler.from_autoscaling_config(config, name), FULL_GRID_WORKER, 1)
    node_config = config["available_node_types"][config["head_node_type"]]["node_config"]
    head = node_config.get("InstanceType") or node_config.get("machineType")
    assert trials >= 32 and _drivers_held(HEAD_RAM_GIB[head]) >= trials, (head, trials)


def test_the_kuberay_head_holds_a_driver_for_every_trial_at_the_largest_size():
    docs = list(yaml.safe_load_all((REPO / "clusters/kuberay/raycluster.yaml").read_text()))
    cluster = next(d for d in docs if d and d.get("kind") == "RayCluster")
    trials = autoscaler.max_trials(autoscaler.from_raycluster(cluster), FULL_GRID_WORKER, 1)
    limit = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    assert trials == 48 and _drivers_held(float(limit[:-2])) >= trials, (limit, trials)
