"""How far a Ray cluster can grow, and how many trials fit it then: the autoscaler's node types and max_workers.

A grid launched on a cluster that autoscales should let Tune start as many trials as the cluster can hold at its
largest: their drivers' pending worker groups are what makes the autoscaler add nodes. This module reads the node
types the autoscaler may launch, where Ray 2.60 exposes them (checked against the installed source):

1. ``ray._private.state.state.get_cluster_config()``: the ``ClusterConfig`` an autoscaler reports to the GCS
   (node groups with ``max_count``); Ray Train V2 reads it to refuse worker groups that can never fit. Ray 2.60's
   own monitors (the cluster launcher's and KubeRay's) do not report it (checked: ``None`` on a fake multi-node
   cluster), so it is used only when some autoscaler has filled it in.
2. The autoscaling config the head's monitor process was started with (``--autoscaling-config=PATH`` on its command
   line, the monitor whose ``--gcs-address`` is the cluster's): ``~/ray_bootstrap_config.yaml`` on a ``ray up``
   head. Readable where the launcher runs on the head, as it does under ``ray job submit``.
3. KubeRay: the RayCluster resource itself (``workerGroupSpecs[].maxReplicas``), read with the head pod's service
   account through Ray's own translation (``AutoscalingConfigProducer``, the code KubeRay's autoscaler runs), when
   ``RAY_CLUSTER_NAME`` is set (KubeRay sets it in every Ray container).

The result is a :class:`Limits`; :func:`max_trials` packs a trial's worker bundles into the largest cluster.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KUBE_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
MONITOR_SCRIPTS = ("autoscaler/_private/monitor.py", "autoscaler/v2/monitor.py")


@dataclass(frozen=True)
class NodeType:
    """One kind of node the autoscaler may launch: its Ray resources and how many of it at most."""

    name: str
    resources: dict[str, float]
    max_workers: int
    min_workers: int = 0


@dataclass(frozen=True)
class Limits:
    """The cluster at its largest: the head plus each worker type's ``max_workers`` nodes, at most
    ``max_workers`` worker nodes in all (the config's global cap, when it has one)."""

    head: dict[str, float]
    node_types: tuple[NodeType, ...]
    max_workers: int | None
    source: str

    def nodes(self, *, at_most: bool = True) -> list[dict[str, float]]:
        """The resources of every node of the cluster at its largest (``at_most``) or at its smallest (the head
        plus ``min_workers`` of each type). Under the global cap, the types with the most of any resource first."""
        nodes = [dict(self.head)] if self.head else []
        budget = self.max_workers if self.max_workers is not None and at_most else math.inf
        for node_type in sorted(self.node_types, key=lambda t: -sum(t.resources.values())):
            count = min(node_type.max_workers if at_most else node_type.min_workers, budget)
            nodes += [dict(node_type.resources)] * int(count)
            budget -= count
        return nodes

    def total(self, *, at_most: bool = True) -> dict[str, float]:
        total: dict[str, float] = {}
        for node in self.nodes(at_most=at_most):
            for key, value in node.items():
                total[key] = total.get(key, 0.0) + value
        return total


def from_autoscaling_config(config: dict[str, Any], source: str) -> Limits:
    """An autoscaling config (``ray up`` YAML, the head's bootstrap config, or KubeRay's translation of a
    RayCluster) -> :class:`Limits`. A config without ``available_node_types`` (the ``local`` provider) has one
    implicit worker type whose resources Ray only learns when the nodes start: ValueError."""
    types = config.get("available_node_types")
    if not types:
        raise ValueError(f"{source}: no available_node_types (e.g. the local provider): the node resources are "
                         "not in the config; set launch.max_concurrent_trials")
    head_name = config.get("head_node_type")
    node_types = tuple(NodeType(name, {k: float(v) for k, v in (t.get("resources") or {}).items()},
                                int(t.get("max_workers", 0)), int(t.get("min_workers", 0)))
                       for name, t in types.items() if name != head_name)
    head = {k: float(v) for k, v in ((types.get(head_name) or {}).get("resources") or {}).items()}
    cap = config.get("max_workers")
    return Limits(head=head, node_types=node_types, max_workers=None if cap is None else int(cap), source=source)


def from_cluster_config(proto: Any, source: str = "the GCS cluster config") -> Limits:
    """Ray's ``autoscaler_pb2.ClusterConfig`` -> :class:`Limits` (``max_count`` -1 means unbounded)."""
    node_types = tuple(NodeType(g.name or f"group{i}", {k: float(v) for k, v in g.resources.items()},
                                g.max_count if g.max_count >= 0 else 10**6, g.min_count)
                       for i, g in enumerate(proto.node_group_configs))
    return Limits(head={}, node_types=node_types, max_workers=None, source=source)


def from_raycluster(manifest: dict[str, Any], source: str = "RayCluster") -> Limits:
    """A KubeRay ``RayCluster`` manifest -> :class:`Limits`, through the translation KubeRay's autoscaler uses
    (``workerGroupSpecs[].maxReplicas``, resources from ``rayStartParams`` and the containers' limits)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    manifest = {**manifest, "metadata": {"namespace": "default", **manifest.get("metadata", {})}}
    return from_autoscaling_config(_derive_autoscaling_config_from_ray_cr(manifest), source)


def monitor_config_path(gcs_address: str, proc: Path = Path("/proc")) -> str | None:
    """``--autoscaling-config`` of the autoscaler monitor on this machine that serves ``gcs_address``."""
    port = gcs_address.rsplit(":", 1)[-1]
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(a.endswith(MONITOR_SCRIPTS) for a in args[:3]):
            continue
        options = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        served = options.get("gcs-address", options.get("address", ""))
        if options.get("autoscaling-config") and (served == gcs_address or served.rsplit(":", 1)[-1] == port):
            return options["autoscaling-config"]
    return None


def discover(gcs_address: str) -> tuple[Limits | None, str]:
    """The limits of the cluster this process is connected to (``ray.init`` done), and where they came from or
    why none were found."""
    import yaml

    tried = []
    try:
        import ray._private.state

        proto = ray._private.state.state.get_cluster_config()
        if proto is not None and proto.node_group_configs:
            return from_cluster_config(proto), "the GCS cluster config"
        tried.append("the GCS has no cluster config")
    except Exception as exc:  # a private API: never fail a launch on it
        tried.append(f"GCS cluster config unreadable ({type(exc).__name__})")
    path = monitor_config_path(gcs_address)
    if path:
        try:
            config = yaml.safe_load(Path(path).expanduser().read_text())
            return from_autoscaling_config(config, path), f"the autoscaler's config {path}"
        except (OSError, ValueError, yaml.YAMLError) as exc:
            tried.append(f"{path}: {exc}")
    else:
        tried.append("no autoscaler monitor for this cluster on this machine")
    name = os.environ.get("RAY_CLUSTER_NAME")
    if name and KUBE_NAMESPACE_FILE.is_file():
        try:
            from ray.autoscaler._private.kuberay.autoscaling_config import AutoscalingConfigProducer

            config = AutoscalingConfigProducer(name, KUBE_NAMESPACE_FILE.read_text().strip())()
            return from_autoscaling_config(config, f"RayCluster {name}"), f"the RayCluster {name}"
        except Exception as exc:  # RBAC, API server: report and fall back to the present size
            tried.append(f"RayCluster {name}: {type(exc).__name__}: {str(exc)[:200]}")
    return None, "; ".join(tried)


def worker_slots(node: dict[str, float], per_worker: dict[str, float]) -> int:
    """How many workers needing ``per_worker`` fit on one node with ``node`` resources."""
    fits = [math.floor(node.get(key, 0.0) / need + 1e-9) for key, need in per_worker.items() if need > 0]
    return min(fits) if fits else 0


def fit_trials(nodes: list[dict[str, float]], per_worker: dict[str, float], workers: int,
               driver: dict[str, float] | None = None) -> int:
    """How many trials (``workers`` x ``per_worker`` each, placed worker by worker, plus one ``driver`` bundle)
    the ``nodes`` hold at once. Drivers are counted only for the resources every node declares (a config that
    leaves ``memory`` to be detected at start cannot bound the drivers' memory)."""
    trials = sum(worker_slots(node, per_worker) for node in nodes) // max(workers, 1)
    for key, need in (driver or {}).items():
        if need > 0 and nodes and all(key in node for node in nodes):
            trials = min(trials, sum(math.floor(node[key] / need + 1e-9) for node in nodes))
    return trials


def max_trials(limits: Limits, per_worker: dict[str, float], workers: int,
               driver: dict[str, float] | None = None) -> int:
    """Trials that fit at once when the cluster has grown to ``limits``."""
    return fit_trials(limits.nodes(), per_worker, workers, driver)
