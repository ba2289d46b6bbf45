"""A real two-node Ray cluster on this machine: both nodes run work, and stopping it leaves nothing behind."""

import json
import subprocess
import sys
import time

import pytest
from ray_nodes import processes_in_groups, processes_under, two_node_cluster

pytestmark = pytest.mark.e2e

# Runs in its own interpreter so the test session's Ray runtime (if any) is never touched.
DRIVER = r"""
import json, os, sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]

@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id(), os.getpid()

pinned = {}
for node in nodes:
    strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
    pinned[node["NodeID"]] = ray.get(where.options(scheduling_strategy=strategy).remote())[0]
by_resource = ray.get(where.options(resources={sys.argv[2]: 1}).remote())[0]
print("RESULT=" + json.dumps({
    "nodes": [{"id": n["NodeID"], "resources": n["Resources"]} for n in nodes],
    "pinned": pinned,
    "by_resource": by_resource,
}))
"""


def _run_driver(cluster) -> dict:
    out = subprocess.run([sys.executable, "-c", DRIVER, cluster.address, cluster.worker_resource],
                         env=cluster.driver_env(), capture_output=True, text=True, timeout=180)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT=")]
    assert out.returncode == 0 and lines, (
        f"driver failed (rc {out.returncode})\nstdout:\n{out.stdout}\nstderr:\n{out.stderr[-4000:]}\n"
        + cluster.logs())
    return json.loads(lines[-1][len("RESULT="):])


def test_two_node_cluster_runs_pinned_tasks_on_each_node_and_stops_clean():
    t0 = time.monotonic()
    with two_node_cluster() as cluster:
        up = time.monotonic() - t0
        pgids = [cluster.head.pgid, cluster.worker.pgid]
        temp_root = cluster.temp_root
        result = _run_driver(cluster)
        ran = time.monotonic() - t0 - up
        stop_from = time.monotonic()
    stopped = time.monotonic() - stop_from

    nodes = {n["id"]: n["resources"] for n in result["nodes"]}
    assert len(nodes) == 2, result
    # Each task pinned to a node answered from that node, so both nodes ran work.
    assert result["pinned"] == {node_id: node_id for node_id in nodes}, result
    head_ids = [i for i, res in nodes.items() if "node:__internal_head__" in res]
    worker_ids = [i for i, res in nodes.items() if cluster.worker_resource in res]
    assert len(head_ids) == 1 and len(worker_ids) == 1 and head_ids != worker_ids, nodes
    # A task asking for the second node's custom resource ran there, not on the head.
    assert result["by_resource"] == worker_ids[0], result

    assert processes_in_groups(pgids) == []
    assert processes_under(temp_root) == []
    assert not temp_root.exists()
    print(f"\ntwo-node cluster: up {up:.1f} s, driver {ran:.1f} s, stop {stopped:.1f} s")
