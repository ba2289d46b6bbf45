"""A real two-node Ray cluster on this machine, for multi-node tests.

`two_node_cluster()` starts a head (`ray start --head --block`) and a second node that joins it
(`ray start --address=127.0.0.1:<gcs port> --block`), each in its own session (`setsid`), with its own
`--temp-dir`, `--object-store-memory` and every port chosen free (GCS, node manager, object manager,
worker ports, agents, metrics, Ray client server), so it never touches another Ray instance on the host and
never needs `ray stop`. Both nodes run with `RAY_AUTH_MODE=disabled` and `RAY_USAGE_STATS_ENABLED=0`. The
second node carries a custom resource (`node2: 1` by default) so work can be steered to it.

On exit it sends SIGTERM to exactly the two process groups it started (the group leader first, then the
group), waits, then SIGKILLs what is still alive, and checks that no process of either group, nor any
process naming its temp dir, is left. A driver should connect from a subprocess
(`ray.init(address=cluster.address)`) so the test session's own Ray runtime is not disturbed; `driver_env()`
gives that subprocess the same environment.

    with two_node_cluster() as cluster:
        subprocess.run([sys.executable, "driver.py", cluster.address], env=cluster.driver_env(), ...)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

_RAY_EXE = Path(sys.executable).with_name("ray")

# Environment every process of the test cluster (nodes and drivers) gets.
CLUSTER_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Keep the nodes quiet and small on a 2-core machine.
    "RAY_DEDUP_LOGS": "0",
}


@dataclasses.dataclass
class NodeProcess:
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pgid(self) -> int:
        # Started under setsid: the process is the leader of its own session and group.
        return self.popen.pid


@dataclasses.dataclass
class TwoNodeCluster:
    address: str  # "127.0.0.1:<gcs port>"
    temp_root: Path
    head: NodeProcess
    worker: NodeProcess
    worker_resource: str
    startup_seconds: float = 0.0
    node_ids: dict[str, str] = dataclasses.field(default_factory=dict)  # {"head": id, "node2": id}

    def driver_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env.update(CLUSTER_ENV)
        env["RAY_ADDRESS"] = self.address
        return env

    def logs(self) -> str:
        parts = []
        for node in (self.head, self.worker):
            text = node.log_path.read_text(errors="replace") if node.log_path.exists() else ""
            parts.append(f"--- {node.name} ({node.log_path}) ---\n{text[-4000:]}")
        return "\n".join(parts)


def free_ports(count: int, avoid: range = range(0)) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now (all held open until all are chosen), none in
    `avoid` (e.g. the node's worker-port range: Ray refuses a component port inside it)."""
    sockets, chosen = [], []
    try:
        while len(chosen) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)  # held open, so the OS does not hand out the same port again
            if s.getsockname()[1] not in avoid:
                chosen.append(s.getsockname()[1])
        return chosen
    finally:
        for s in sockets:
            s.close()


def free_port_range(width: int, *, low: int = 20000, high: int = 60000, avoid: tuple[int, ...] = ()
                    ) -> tuple[int, int]:
    """A contiguous range of `width` ports in [low, high) none of which is bound right now or in `avoid`."""
    rng = range(low, high - width, width)
    start_at = (os.getpid() * 7919) % len(rng)  # spread concurrent test sessions over the space
    for i in range(len(rng)):
        base = rng[(start_at + i) % len(rng)]
        if not any(base <= p < base + width for p in avoid) and \
                all(_port_is_free(p) for p in range(base, base + width)):
            return base, base + width - 1
    raise RuntimeError(f"no free range of {width} ports in [{low}, {high})")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _node_command(*, head: bool, gcs_port: int, temp_dir: Path, num_cpus: int,
                  object_store_bytes: int, resources: dict[str, float] | None) -> list[str]:
    low, high = free_port_range(64, avoid=(gcs_port,))
    ports = free_ports(6, avoid=range(low, high + 1))
    cmd = [
        str(_RAY_EXE), "start", "--block", "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={num_cpus}", "--num-gpus=0",
        f"--object-store-memory={object_store_bytes}",
        f"--node-manager-port={ports[0]}",
        f"--object-manager-port={ports[1]}",
        f"--dashboard-agent-listen-port={ports[2]}",
        f"--dashboard-agent-grpc-port={ports[3]}",
        f"--runtime-env-agent-port={ports[4]}",
        f"--metrics-export-port={ports[5]}",
        f"--min-worker-port={low}", f"--max-worker-port={high}",
    ]
    if head:
        cmd += ["--head", f"--port={gcs_port}", "--include-dashboard=false"]
    else:
        cmd += [f"--address=127.0.0.1:{gcs_port}"]
    if resources:
        cmd.append(f"--resources={json.dumps(resources)}")
    return cmd


def _spawn(name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> NodeProcess:
    log = open(log_path, "wb")
    try:
        popen = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # setsid: its own process group, which we alone signal
        )
    finally:
        log.close()
    return NodeProcess(name=name, popen=popen, log_path=log_path)


def _alive_nodes(address: str, env: dict[str, str], timeout: float) -> list[dict]:
    """Ask the GCS (from a short-lived subprocess, never this process's Ray) which nodes are alive."""
    code = (
        "import json, ray\n"
        f"ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n"
        "print('NODES=' + json.dumps([{'id': n['NodeID'], 'resources': n['Resources']}"
        " for n in ray.nodes() if n['Alive']]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=timeout)
    for line in out.stdout.splitlines():
        if line.startswith("NODES="):
            return json.loads(line[len("NODES="):])
    return []


def _pgroup_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is still running (zombies awaiting a reaper do not count)."""
    return bool(processes_in_groups([pgid]))


def _wait_group_gone(node: NodeProcess, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        node.popen.poll()  # reap our own child so it does not linger as a zombie
        if not _pgroup_alive(node.pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _stop_group(node: NodeProcess, grace: float) -> None:
    """Stop the node's process group, and only it.

    SIGTERM first goes to the group leader (`ray start --block`), which shuts its GCS, raylet and agents
    down in 2-3 s; signalling the whole group at once instead leaves the GCS lingering for 25 s or more.
    Whatever of the group is still running after `grace` seconds gets SIGTERM, then SIGKILL.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(node.pgid, signal.SIGTERM)
    if _wait_group_gone(node, grace):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pgid, signal.SIGTERM)
    if _wait_group_gone(node, 5.0):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pgid, signal.SIGKILL)
    _wait_group_gone(node, 10.0)


def processes_in_groups(pgids: list[int]) -> list[str]:
    """Descriptions of live processes whose process group is one of `pgids` (reads /proc)."""
    left = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces, so split after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) in pgids:
            left.append(f"pid {entry.name}: {stat[:stat.rfind(')') + 1]}")
    return left


def processes_under(temp_root: Path) -> list[str]:
    """Live processes whose command line mentions `temp_root` (every Ray process of our nodes does)."""
    left = []
    needle = str(temp_root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            text = cmdline.replace(b"\0", b" ")[:200].decode(errors="replace")
            left.append(f"pid {entry.name}: {text}")
    return left


@contextlib.contextmanager
def two_node_cluster(*, head_cpus: int = 2, worker_cpus: int = 2,
                     worker_resources: dict[str, float] | None = None,
                     object_store_mb: int = 100, start_timeout: float = 120.0,
                     stop_grace: float = 20.0) -> Iterator[TwoNodeCluster]:
    """Start a head and a second node on 127.0.0.1; yield a `TwoNodeCluster`; stop exactly them.

    `worker_resources` defaults to `{"node2": 1}` (the name `TwoNodeCluster.worker_resource` reports).
    Raises `RuntimeError` with both nodes' logs if the cluster does not show 2 alive nodes in time.
    """
    worker_resources = dict(worker_resources or {"node2": 1})
    # Short path: Ray's unix sockets live under it and are limited to ~107 characters.
    temp_root = Path(tempfile.mkdtemp(prefix="rn2-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(CLUSTER_ENV)
    object_store = object_store_mb * 1024 * 1024
    started: list[NodeProcess] = []
    t0 = time.monotonic()
    try:
        gcs_port = free_ports(1)[0]
        head = _spawn("head", _node_command(head=True, gcs_port=gcs_port, temp_dir=temp_root / "head",
                                            num_cpus=head_cpus, object_store_bytes=object_store,
                                            resources=None),
                      env, temp_root / "head.log")
        started.append(head)
        worker = _spawn("node2", _node_command(head=False, gcs_port=gcs_port,
                                               temp_dir=temp_root / "node2", num_cpus=worker_cpus,
                                               object_store_bytes=object_store,
                                               resources=worker_resources),
                        env, temp_root / "node2.log")
        started.append(worker)
        cluster = TwoNodeCluster(address=f"127.0.0.1:{gcs_port}", temp_root=temp_root, head=head,
                                 worker=worker, worker_resource=next(iter(worker_resources)))

        deadline = time.monotonic() + start_timeout
        nodes: list[dict] = []
        while time.monotonic() < deadline:
            for node in started:
                if node.popen.poll() is not None:
                    raise RuntimeError(f"ray node '{node.name}' exited with {node.popen.returncode}\n"
                                       + cluster.logs())
            try:
                nodes = _alive_nodes(cluster.address, env, timeout=30.0)
            except subprocess.TimeoutExpired:
                nodes = []
            if len(nodes) == 2:
                break
            time.sleep(1.0)
        else:
            raise RuntimeError(f"two-node cluster not up after {start_timeout:.0f}s "
                               f"(alive nodes: {nodes})\n" + cluster.logs())
        cluster.startup_seconds = time.monotonic() - t0
        for node in nodes:
            name = "head" if "node:__internal_head__" in node["resources"] else worker.name
            cluster.node_ids[name] = node["id"]
        yield cluster
    finally:
        for node in reversed(started):  # the joining node first, then the head
            _stop_group(node, stop_grace)
        left = processes_in_groups([n.pgid for n in started]) + processes_under(temp_root)
        if left:
            raise RuntimeError("processes left after stopping the two-node cluster:\n" + "\n".join(left))
        shutil.rmtree(temp_root, ignore_errors=True)
