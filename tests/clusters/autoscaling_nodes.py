"""A Ray cluster on this machine that Ray's own autoscaler grows: a head only, plus worker node types the
autoscaler may add (Ray's ``fake_multinode`` provider, the one Ray's own autoscaler tests use).

`autoscaling_cluster()` writes an autoscaling config (head type ``ray.head.default`` with ``max_workers: 0``, the
given worker types with ``min_workers: 0``), and starts the head with it:
``RAY_FAKE_CLUSTER=1 AUTOSCALER_UPDATE_INTERVAL_S=1 ray start --head --block --autoscaling-config=...`` under
``setsid``, on free ports and its own ``--temp-dir``. The autoscaler (the head's monitor process) then starts a
"node" (a raylet and its workers, node id ``ffff...0000k``) whenever pending work needs a worker type's resources,
and stops it after ``idle_timeout_minutes``.

Ray 2.60's own helper ``ray.cluster_utils.AutoscalingCluster`` cannot be used here: its ``example.yaml`` is not in
the wheel and its ``start()``/``shutdown()`` run ``ray stop --force``, which kills every Ray on the host.

The added nodes are children of the monitor process, not of ``ray start``. On exit: SIGTERM to the head's process
group (leader first), then SIGTERM to every process whose command line names the cluster's temp dir (every process
of every node, head or added, does), escalating to SIGKILL; then it checks that none is left.

    with autoscaling_cluster({"trial_node": {"resources": {"CPU": 1, "trialnode": 1}, "max_workers": 2}}) as c:
        subprocess.run([sys.executable, "driver.py", c.address], env=c.driver_env(), ...)
        c.timeline()   # [(seconds since start, alive node ids)]
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import yaml
from ray_nodes import (CLUSTER_ENV, NodeProcess, _node_command, _spawn, _stop_group, free_ports,
                       processes_in_groups, processes_under)

HEAD_TYPE = "ray.head.default"
AUTOSCALER_ENV = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
START_ATTEMPTS = 3


@dataclasses.dataclass
class AutoscalingCluster:
    address: str  # "<node ip>:<gcs port>"
    temp_root: Path
    head: NodeProcess
    config: dict
    started_at: float  # time.monotonic() when the head was started
    started_wall: float = 0.0  # time.time() then, to place wall-clock events (MLflow runs) on the same axis
    head_node_id: str = ""
    events: list[tuple[float, list[str]]] = dataclasses.field(default_factory=list)  # (s, alive worker ids)

    def driver_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env.update(CLUSTER_ENV)
        env["RAY_ADDRESS"] = self.address
        return env

    def added_nodes(self) -> dict[str, float]:
        """Node id -> seconds after the head started at which it was first seen alive (the head excluded)."""
        first: dict[str, float] = {}
        for at, ids in self.events:
            for node_id in ids:
                first.setdefault(node_id, at)
        return first

    def timeline(self) -> str:
        """One line per change of the alive worker nodes: ``+12.3 s  2 added node(s): ffff..01, ffff..02``."""
        lines, last = [], None
        for at, ids in self.events:
            if ids != last:
                lines.append(f"+{at:6.1f} s  {len(ids)} added node(s) alive: {', '.join(i[-8:] for i in ids) or '-'}")
                last = ids
        return "\n".join(lines)

    def logs(self) -> str:
        parts = [f"--- head ({self.head.log_path}) ---\n"
                 + (self.head.log_path.read_text(errors="replace")[-3000:] if self.head.log_path.exists() else "")]
        for name in ("monitor.out", "monitor.err", "monitor.log"):
            for path in sorted(self.temp_root.glob(f"head/session_*/logs/{name}"))[-1:]:
                parts.append(f"--- {name} ---\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def write_config(path: Path, gcs_address: str, worker_types: dict[str, dict], head_cpus: int,
                 idle_timeout_minutes: float) -> dict:
    """The autoscaling config of a fake multi-node cluster (the shape of Ray's fake_multi_node/example.yaml)."""
    node_types = {HEAD_TYPE: {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0}}
    for name, node_type in worker_types.items():
        node_types[name] = {"resources": dict(node_type["resources"]), "node_config": {},
                            "min_workers": node_type.get("min_workers", 0), "max_workers": node_type["max_workers"]}
    config = {
        "cluster_name": "fake_multinode",
        "max_workers": sum(t["max_workers"] for t in worker_types.values()),
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": node_types,
        "head_node_type": HEAD_TYPE,
        "upscaling_speed": 10.0,  # launch every pending node at once
        "idle_timeout_minutes": idle_timeout_minutes,
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


_NODES_PROBE = (
    "import json, sys, ray\n"
    "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
    "print('NODES=' + json.dumps([{'id': n['NodeID'], 'head': 'node:__internal_head__' in n['Resources']}"
    " for n in ray.nodes() if n['Alive']]))\n"
)


def _alive(address: str, env: dict[str, str]) -> list[dict] | None:
    try:
        out = subprocess.run([sys.executable, "-c", _NODES_PROBE, address], env=env, capture_output=True,
                             text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    lines = [line for line in out.stdout.splitlines() if line.startswith("NODES=")]
    return json.loads(lines[-1][len("NODES="):]) if lines else None


def _watch(cluster: AutoscalingCluster, env: dict[str, str], stop: threading.Event, every: float) -> None:
    """Record the alive added nodes every `every` seconds (one short-lived probe process per look)."""
    while not stop.wait(every):
        nodes = _alive(cluster.address, env)
        if nodes is not None:
            ids = sorted(n["id"] for n in nodes if not n["head"])
            cluster.events.append((time.monotonic() - cluster.started_at, ids))


def _stop_named(temp_root: Path, grace: float) -> None:
    """SIGTERM every process whose command line names `temp_root`, then SIGKILL what is left after `grace` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for line in processes_under(temp_root):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(line.split()[1].rstrip(":")), sig)
        deadline = time.monotonic() + wait
        while processes_under(temp_root) and time.monotonic() < deadline:
            time.sleep(0.3)
        if not processes_under(temp_root):
            return


def _wait_for_head(cluster: AutoscalingCluster, env: dict[str, str], timeout: float) -> bool:
    """Until the head is alive in the GCS (True), or it exited or `timeout` passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and cluster.head.popen.poll() is None:
        nodes = _alive(cluster.address, env)
        if nodes and any(n["head"] for n in nodes):
            cluster.head_node_id = next(n["id"] for n in nodes if n["head"])
            return True
        time.sleep(1.0)
    return False


@contextlib.contextmanager
def autoscaling_cluster(worker_types: dict[str, dict], *, head_cpus: int = 1, object_store_mb: int = 100,
                        idle_timeout_minutes: float = 5.0, start_timeout: float = 90.0, stop_grace: float = 15.0,
                        watch_every: float = 2.0) -> Iterator[AutoscalingCluster]:
    """Start a head with Ray's autoscaler over `worker_types` (name -> ``resources``, ``max_workers``, optional
    ``min_workers``); yield an `AutoscalingCluster` whose `events` record the alive added nodes every
    `watch_every` seconds; stop exactly its processes and check none is left (RuntimeError otherwise)."""
    import ray._private.services

    # Short path: Ray's unix sockets live under it and are limited to ~107 characters.
    temp_root = Path(tempfile.mkdtemp(prefix="ras-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(CLUSTER_ENV)
    env.update(AUTOSCALER_ENV)
    started: list[NodeProcess] = []
    stop = threading.Event()
    watcher = None
    try:
        gcs_port = free_ports(1)[0]
        address = f"{ray._private.services.get_node_ip_address()}:{gcs_port}"
        worker_types = {name: {**t, "resources": {**t["resources"],
                                                  "object_store_memory": object_store_mb * 1024 * 1024}}
                        for name, t in worker_types.items()}
        config_path = temp_root / "autoscaling.yaml"
        config = write_config(config_path, address, worker_types, head_cpus, idle_timeout_minutes)
        cluster = None
        for attempt in range(1, START_ATTEMPTS + 1):
            # Ray gives a raylet 30 s to register with the GCS (hard-coded in Ray 2.60's node.py): on a loaded
            # machine a start can miss it. A head that exits during start-up is stopped and started once more.
            cmd = _node_command(head=True, gcs_port=gcs_port, temp_dir=temp_root / "head",
                                num_cpus=head_cpus, object_store_bytes=object_store_mb * 1024 * 1024, resources=None)
            cmd.append(f"--autoscaling-config={config_path}")
            t0, wall = time.monotonic(), time.time()
            head = _spawn("head", cmd, env, temp_root / f"head-{attempt}.log")
            started.append(head)
            cluster = AutoscalingCluster(address=address, temp_root=temp_root, head=head, config=config,
                                         started_at=t0, started_wall=wall)
            if _wait_for_head(cluster, env, start_timeout):
                break
            if attempt == START_ATTEMPTS:
                raise RuntimeError(f"ray head did not start ({head.popen.returncode}) in {START_ATTEMPTS} "
                                   f"attempts\n{cluster.logs()}")
            _stop_group(head, stop_grace)
            _stop_named(temp_root, stop_grace)
        watcher = threading.Thread(target=_watch, args=(cluster, env, stop, watch_every), daemon=True)
        watcher.start()
        yield cluster
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(timeout=90)
        for node in started:
            _stop_group(node, stop_grace)
        _stop_named(temp_root, stop_grace)
        left = processes_in_groups([n.pgid for n in started]) + processes_under(temp_root)
        if left:
            raise RuntimeError("processes left after stopping the autoscaling cluster:\n" + "\n".join(left))
        shutil.rmtree(temp_root, ignore_errors=True)
