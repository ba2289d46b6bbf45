"""The cluster at its largest: node types and max_workers read from autoscaling configs, RayCluster manifests and
Ray's GCS ClusterConfig; trials packed into it, against hand counts of the configs under clusters/."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.launch import autoscaler

REPO = Path(__file__).resolve().parents[3]
FULL_GRID_WORKER = {"CPU": 6.0, "GPU": 1.0}  # specs/full_grid.yaml: 1 worker x (6 CPU, 1 GPU)


def _yaml(path: str) -> dict:
    docs = list(yaml.safe_load_all((REPO / path).read_text()))
    return next(d for d in docs if d and d.get("kind", "RayCluster") == "RayCluster")


def test_aws_config_grows_to_48_gpus_from_the_head_alone():
    limits = autoscaler.from_autoscaling_config(_yaml("clusters/aws-gpu.yaml"), "aws-gpu.yaml")
    # hand count: head (CPU 4), gpu_8x: min 0 max 4 x (96 CPU, 8 GPU), gpu_1x: min 0 max 16 x (16 CPU, 1 GPU)
    assert limits.total()["GPU"] == 4 * 8 + 16 * 1
    assert limits.nodes(at_most=False) == [{"CPU": 4.0}]
    assert autoscaler.max_trials(limits, FULL_GRID_WORKER, 1) == 48
    assert autoscaler.fit_trials(limits.nodes(at_most=False), FULL_GRID_WORKER, 1) == 0
    # 4 workers of 1 GPU per trial: 8-GPU nodes hold 2 trials each, the 16 single-GPU nodes 4 trials between them
    assert autoscaler.max_trials(limits, FULL_GRID_WORKER, 4) == (4 * 8 + 16) // 4


def test_gcp_config_grows_to_32_gpus():
    limits = autoscaler.from_autoscaling_config(_yaml("clusters/gcp-gpu.yaml"), "gcp-gpu.yaml")
    assert autoscaler.max_trials(limits, FULL_GRID_WORKER, 1) == 2 * 8 + 8 + 8


def test_the_global_max_workers_caps_the_nodes_largest_types_first():
    config = {"head_node_type": "head", "max_workers": 3,
              "available_node_types": {"head": {"resources": {"CPU": 2}, "max_workers": 0},
                                       "big": {"resources": {"CPU": 8, "GPU": 4}, "max_workers": 2},
                                       "small": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 5}}}
    limits = autoscaler.from_autoscaling_config(config, "cfg")
    assert limits.total()["GPU"] == 2 * 4 + 1 * 1  # 3 workers: both big ones, then one small
    assert autoscaler.max_trials(limits, {"CPU": 2, "GPU": 1}, 1) == 9
    # CPUs bind first on the big nodes (8 CPUs / 3 per worker = 2 workers of 4 GPUs), the small one has 1 GPU,
    # the head none: 2 + 2 + 1
    assert autoscaler.max_trials(limits, {"CPU": 3, "GPU": 1}, 1) == 2 + 2 + 1


def test_custom_resources_and_driver_memory_bound_the_trials():
    nodes = [{"CPU": 1.0, "memory": 3.0e9}, {"CPU": 2.0, "trialnode": 1.0, "memory": 1.0e9},
             {"CPU": 2.0, "trialnode": 1.0, "memory": 1.0e9}]
    assert autoscaler.fit_trials(nodes, {"CPU": 1, "trialnode": 1}, 1) == 2
    # each driver reserves 1.2 GB: 2 fit on the head, none on the small nodes
    assert autoscaler.fit_trials(nodes, {"CPU": 1}, 1, driver={"memory": 1.2e9}) == 2
    # a node type whose memory is not declared cannot bound the drivers
    assert autoscaler.fit_trials([{"CPU": 4.0}], {"CPU": 1}, 1, driver={"memory": 1e12}) == 4


def test_kuberay_raycluster_translates_through_rays_own_kuberay_code():
    limits = autoscaler.from_raycluster(_yaml("clusters/kuberay/raycluster.yaml"))
    # workerGroupSpecs: gpu-8x maxReplicas 4 x 8 GPUs (90 CPUs), gpu-1x maxReplicas 16 x 1 GPU
    by_name = {t.name: t for t in limits.node_types}
    assert by_name["gpu-8x"].max_workers == 4 and by_name["gpu-8x"].resources["GPU"] == 8
    assert by_name["gpu-1x"].max_workers == 16 and by_name["gpu-1x"].resources["GPU"] == 1
    assert autoscaler.max_trials(limits, FULL_GRID_WORKER, 1) == 48


def test_the_gcs_cluster_config_proto_is_read_as_ray_train_reads_it():
    from ray.core.generated import autoscaler_pb2

    proto = autoscaler_pb2.ClusterConfig()
    group = proto.node_group_configs.add()
    group.name, group.max_count, group.min_count = "gpu", 3, 1
    group.resources["GPU"], group.resources["CPU"] = 4, 32
    limits = autoscaler.from_cluster_config(proto)
    assert autoscaler.max_trials(limits, {"CPU": 8, "GPU": 1}, 2) == 3 * 4 // 2
    assert limits.total(at_most=False) == {"GPU": 4.0, "CPU": 32.0}


def test_the_local_provider_has_no_node_types_to_read():
    with pytest.raises(ValueError, match="max_concurrent_trials"):
        autoscaler.from_autoscaling_config(_yaml("clusters/onprem.yaml"), "onprem.yaml")


def _proc(tmp_path: Path, pid: int, args: list[str]) -> None:
    (tmp_path / str(pid)).mkdir()
    (tmp_path / str(pid) / "cmdline").write_bytes("\0".join(args).encode() + b"\0")


def test_the_monitor_serving_this_gcs_names_the_autoscaling_config(tmp_path):
    monitor = "/venv/lib/python3.11/site-packages/ray/autoscaler/_private/monitor.py"
    _proc(tmp_path, 10, ["/venv/bin/python", monitor, "--gcs-address=10.0.0.5:6379",
                         "--autoscaling-config=/other.yaml"])
    _proc(tmp_path, 11, ["/venv/bin/python", monitor, "--logs-dir=/tmp/x", "--gcs-address=10.0.0.5:41234",
                         "--autoscaling-config=/home/ray/ray_bootstrap_config.yaml", "--monitor-ip=10.0.0.5"])
    _proc(tmp_path, 12, ["/venv/bin/python", "train.py", "--autoscaling-config=/not-a-monitor.yaml",
                         "--gcs-address=10.0.0.5:41234"])
    (tmp_path / "self").mkdir()
    found = autoscaler.monitor_config_path("10.0.0.5:41234", proc=tmp_path)
    assert found == "/home/ray/ray_bootstrap_config.yaml"
    assert autoscaler.monitor_config_path("10.0.0.5:1", proc=tmp_path) is None
