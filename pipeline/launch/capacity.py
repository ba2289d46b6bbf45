"""Resource planning: what each trial needs, how many run at once on a cluster, and the dry-run table.

On a cluster that can grow (joined with ``--address``, or planned with ``--assume-cluster``) the trials that run at
once are what fits the cluster at its largest (:mod:`pipeline.launch.autoscaler`), capped by
``launch.max_concurrent_trials``: Tune then starts them, and their pending worker groups make the autoscaler add
the nodes. Without known limits, what fits the nodes that are up now.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from pipeline.launch import autoscaler, estimate
from pipeline.launch.study import SpecError, Study
from pipeline.specs import LaunchOptions, RunSpec

MIB = 1024**2


@dataclass(frozen=True)
class Resources:
    """What the trials may use: CPUs/GPUs in all, each node's resources when known (a live or assumed cluster),
    and how far the cluster can grow when known (``limits``; ``limits_note`` says where from, or why not)."""

    cpus: float
    gpus: float
    where: str
    nodes: tuple[dict[str, float], ...] | None = None
    limits: autoscaler.Limits | None = None
    limits_note: str = ""


@dataclass(frozen=True)
class Demand:
    """A trial's needs: its driver (``launch.driver_cpus`` CPU, ``launch.driver_memory_mb`` of Ray memory) plus
    ``workers x per_worker`` (CPU, GPU, custom resources)."""

    cpus: float
    gpus: float
    workers: int
    per_worker: dict[str, float] = field(default_factory=dict)
    driver: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: RunSpec, launch: LaunchOptions) -> "Demand":
        r = spec.resources
        driver = {"CPU": launch.driver_cpus, **({"memory": launch.driver_memory_mb * MIB}
                                                if launch.driver_memory_mb else {})}
        return cls(cpus=launch.driver_cpus + r.workers_per_trial * r.cpus_per_worker,
                   gpus=r.workers_per_trial * r.gpus_per_worker if r.use_gpu else 0.0,
                   workers=r.workers_per_trial, per_worker=r.per_worker(), driver=driver)

    def fits(self, nodes: list[dict[str, float]]) -> int:
        """Trials of this demand that ``nodes`` hold at once (workers placed node by node, drivers by memory)."""
        return autoscaler.fit_trials(nodes, self.per_worker, self.workers, self.driver)


def demands(study: Study) -> list[Demand]:
    """The distinct demands of the study's trials."""
    unique: list[Demand] = []
    for trial in study.trials:
        need = Demand.of(trial.spec, study.launch.launch)
        if need not in unique:
            unique.append(need)
    return unique


def assumed_resources(text: str) -> Resources:
    """``CPU=64,GPU=8`` -> :class:`Resources` (for ``--dry-run --assume-resources``)."""
    values = {"CPU": 0.0, "GPU": 0.0}
    for item in text.split(","):
        key, sep, number = item.partition("=")
        try:
            if not sep or key.strip().upper() not in values:
                raise ValueError
            values[key.strip().upper()] = float(number)
        except ValueError:
            raise SpecError("--assume-resources", [f"--assume-resources {text!r}: expected CPU=<n>,GPU=<n>"]) from None
    return Resources(cpus=values["CPU"], gpus=values["GPU"], where=f"assumed cluster ({text})")


def assumed_cluster(path: str) -> Resources:
    """A cluster launcher YAML or a KubeRay RayCluster manifest -> :class:`Resources` of the cluster as ``ray up``
    starts it (head + ``min_workers``) and as far as it can grow (for ``--dry-run --assume-cluster``)."""
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(open(path)) if isinstance(d, dict)]
        raycluster = next((d for d in docs if d.get("kind") == "RayCluster"), None)
        limits = (autoscaler.from_raycluster(raycluster, path) if raycluster
                  else autoscaler.from_autoscaling_config(docs[0] if docs else {}, path))
    except (OSError, yaml.YAMLError, ValueError, KeyError) as exc:
        raise SpecError("--assume-cluster", [f"--assume-cluster {path}: {exc}"]) from None
    nodes = tuple(limits.nodes(at_most=False))
    total = limits.total(at_most=False)
    return Resources(cpus=total.get("CPU", 0.0), gpus=total.get("GPU", 0.0), where=f"{path} as started",
                     nodes=nodes, limits=limits, limits_note=path)


def cluster_resources(where: str) -> Resources:
    """The connected cluster (``ray.init`` done): its alive nodes now and how far its autoscaler can grow it."""
    import ray

    nodes = tuple({k: float(v) for k, v in n["Resources"].items() if not k.startswith("node:")}
                  for n in ray.nodes() if n["Alive"])
    total = ray.cluster_resources()
    limits, note = autoscaler.discover(ray.get_runtime_context().gcs_address)
    return Resources(cpus=total.get("CPU", 0.0), gpus=total.get("GPU", 0.0), where=where, nodes=nodes,
                     limits=limits, limits_note=note)


def local_resources(address: str | None = None) -> Resources:
    """This machine's CPUs/GPUs, or the connected cluster's when an address (or ``$RAY_ADDRESS``) is given."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        import ray

        already = ray.is_initialized()
        if not already:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        try:
            return cluster_resources(f"cluster at {address}")
        finally:
            if not already:
                ray.shutdown()
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # planning must not fail on a broken CUDA install
        gpus = 0
    return Resources(cpus=float(os.cpu_count() or 1), gpus=float(gpus), where="this machine")


def schedulable_cpus(study: Study, resources: Resources) -> float:
    """Local mode declares at least enough logical CPUs for the largest trial, times
    ``launch.max_concurrent_trials`` when set (CPUs are scheduling tokens: on a laptop, overlapping trials hides
    each trial's start-up of its worker processes, which is mostly waiting)."""
    worst = max(d.cpus for d in demands(study))
    return max(resources.cpus, worst * (study.launch.launch.max_concurrent_trials or 1))


def present_fit(study: Study, resources: Resources) -> int:
    """Trials that fit at once the resources as they are (each node's when known, else CPUs/GPUs in all)."""
    fits = []
    for need in demands(study):
        if resources.nodes is not None:
            fits.append(need.fits(list(resources.nodes)))
            continue
        fit = math.floor(resources.cpus / need.cpus + 1e-9)
        if need.gpus > 0:
            fit = min(fit, math.floor(resources.gpus / need.gpus + 1e-9))
        fits.append(fit)
    return max(min(fits), 0)


def grown_fit(study: Study, resources: Resources) -> int | None:
    """Trials that fit at once the cluster at its largest (None when its limits are unknown)."""
    if resources.limits is None:
        return None
    return min(need.fits(resources.limits.nodes()) for need in demands(study))


def concurrency(study: Study, resources: Resources, *, autoscaling: bool = False) -> int:
    """How many trials Tune runs at once: what fits, capped by ``launch.max_concurrent_trials`` and the trials.

    With ``autoscaling`` (a cluster joined by address, which may grow) what fits the cluster at its largest when
    its limits are known; otherwise ``launch.max_concurrent_trials`` is trusted as it is when set (the cluster's
    present size would throttle the grid to what is up at launch), else what fits now."""
    limit = study.launch.launch.max_concurrent_trials
    grown = grown_fit(study, resources) if autoscaling else None
    if grown is None and autoscaling and limit:
        return limit
    fit = grown if grown is not None else present_fit(study, resources)
    return max(min([fit, len(study.trials) * study.samples] + ([limit] if limit else [])), 0)


def resource_problems(study: Study, resources: Resources, *, local: bool) -> list[str]:
    """Trials that can never be scheduled (they would wait forever): locally, GPUs that are missing (local CPUs are
    scheduling tokens, :func:`schedulable_cpus`); on a cluster whose limits are known, trials that do not fit it
    even at its largest. On a cluster of unknown limits nothing is refused: the autoscaler may add nodes."""
    problems = []
    for trial in study.trials:
        need = Demand.of(trial.spec, study.launch.launch)
        if local and need.gpus > resources.gpus:
            problems.append(f"trial {trial.index} ({trial.label}): resources need {need.gpus:g} GPU(s) but "
                            f"{resources.where} has {resources.gpus:g}: set resources.use_gpu: false or run on a "
                            "GPU cluster with --address")
        elif not local and resources.limits is not None and need.fits(resources.limits.nodes()) == 0:
            problems.append(f"trial {trial.index} ({trial.label}): {need.workers} worker(s) of {need.per_worker} "
                            f"never fit the cluster, even grown to its largest ({resources.limits_note}): lower "
                            "resources.workers_per_trial or the per-worker resources")
    return problems


def _waves(n_trials: int, at_once: int) -> str:
    return (f"at most {at_once} trial(s) run at once; about {math.ceil(n_trials / at_once)} wave(s)" if at_once
            else "no trial fits")


def describe(study: Study, resources: Resources) -> str:
    """The dry-run report: one row per trial with its varying fields and needs, then the schedule (at the present
    size, and at the largest size when the cluster can grow)."""
    varying = list(study.trials[0].varying)
    epochs = [] if "epochs" in varying else ["epochs"]
    rows = [("#", "trial", *varying, "workers", "CPU", "GPU", *epochs)]
    for t in study.trials:
        need = Demand.of(t.spec, study.launch.launch)
        rows.append((str(t.index), t.label, *("-" if v is None else str(v) for v in t.varying.values()),
                     str(need.workers), f"{need.cpus:g}", f"{need.gpus:g}", *([str(t.spec.epochs)] if epochs else [])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    samples = study.samples
    n_trials = len(study.trials) * samples
    cpus = schedulable_cpus(study, resources) if resources.where == "this machine" else resources.cpus
    now = Resources(cpus, resources.gpus, resources.where, resources.nodes)
    at_once = min(present_fit(study, now), n_trials)
    limit = study.launch.launch.max_concurrent_trials
    needs = [Demand.of(t.spec, study.launch.launch) for t in study.trials]
    driver_mb = study.launch.launch.driver_memory_mb
    lines += ["", f"spec: {study.source}  name: {study.name}",
              f"trials: {n_trials}" + (f" ({len(study.trials)} grid points x {samples} search samples)"
                                       if samples > 1 else ""),
              f"resources: {resources.where}: {cpus:g} CPU, {resources.gpus:g} GPU",
              f"all trials at once would need {sum(d.cpus for d in needs) * samples:g} CPU, "
              f"{sum(d.gpus for d in needs) * samples:g} GPU"
              + (f", {driver_mb * n_trials / 1024:.1f} GiB of Ray memory for the drivers" if driver_mb else ""),
              ("now: " if resources.limits else "") + _waves(n_trials, min(at_once, limit or at_once))
              + ("" if at_once or resources.limits else " (none fits: add resources or lower "
                 "resources.workers_per_trial)")]
    grown = grown_fit(study, resources)
    if grown is not None:
        total = resources.limits.total()
        lines.append(f"grown to its largest ({resources.limits_note}: {total.get('CPU', 0):g} CPU, "
                     f"{total.get('GPU', 0):g} GPU): " + _waves(n_trials, min([grown, n_trials] + ([limit] if limit else []))))
        lines.append(f"the launcher lets Tune start {concurrency(study, resources, autoscaling=True)} trial(s) at once"
                     + (" (launch.max_concurrent_trials)" if limit and limit < min(grown, n_trials) else "")
                     + "; their waiting worker groups make the autoscaler add the nodes")
    elif resources.limits_note:
        lines.append(f"how far the cluster can grow is unknown ({resources.limits_note}): Tune runs what fits now "
                     "unless launch.max_concurrent_trials is set")
    lines += estimate.by_backbone([t.spec for t in study.trials], samples)
    missing = sorted({t.spec.data.root for t in study.trials
                      if t.spec.data.root and t.spec.data.dataset != "synthetic" and not os.path.isdir(t.spec.data.root)})
    if missing:
        lines += ["", f"not checked on this machine (dry run): {len(missing)} dataset root(s) missing here: "
                  + ", ".join(missing)]
    return "\n".join(lines)
