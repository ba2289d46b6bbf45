"""Resource planning: what each trial needs, how many run at once on a cluster, and the dry-run table."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from pipeline.launch import estimate
from pipeline.launch.study import SpecError, Study
from pipeline.specs import RunSpec


@dataclass(frozen=True)
class Resources:
    cpus: float
    gpus: float
    where: str


@dataclass(frozen=True)
class Demand:
    """A trial's needs: its driver's CPU share (``launch.driver_cpus``) plus ``workers x (CPU, GPU)``."""

    cpus: float
    gpus: float
    workers: int

    @classmethod
    def of(cls, spec: RunSpec, driver_cpus: float) -> "Demand":
        r = spec.resources
        return cls(cpus=driver_cpus + r.workers_per_trial * r.cpus_per_worker,
                   gpus=r.workers_per_trial * r.gpus_per_worker if r.use_gpu else 0.0,
                   workers=r.workers_per_trial)


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


def local_resources(address: str | None = None) -> Resources:
    """This machine's CPUs/GPUs, or the connected cluster's when an address (or ``$RAY_ADDRESS``) is given."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        import ray

        already = ray.is_initialized()
        if not already:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        try:
            total = ray.cluster_resources()
        finally:
            if not already:
                ray.shutdown()
        return Resources(cpus=total.get("CPU", 0.0), gpus=total.get("GPU", 0.0), where=f"cluster at {address}")
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
    worst = max(Demand.of(t.spec, study.launch.launch.driver_cpus).cpus for t in study.trials)
    return max(resources.cpus, worst * (study.launch.launch.max_concurrent_trials or 1))


def concurrency(study: Study, resources: Resources, *, autoscaling: bool = False) -> int:
    """How many trials run at once: the resources' fit for the largest trial, capped by the spec.

    With ``autoscaling`` (a cluster joined by address, which may grow) ``launch.max_concurrent_trials`` is
    trusted as it is when set: the cluster's present size would throttle the grid to what is up at launch."""
    limit = study.launch.launch.max_concurrent_trials
    if autoscaling and limit:
        return limit
    worst = max((Demand.of(t.spec, study.launch.launch.driver_cpus) for t in study.trials), key=lambda d: (d.gpus, d.cpus))
    fits = [math.floor(resources.cpus / worst.cpus + 1e-9)]
    if worst.gpus > 0:
        fits.append(math.floor(resources.gpus / worst.gpus + 1e-9))
    n = min(fits + ([limit] if limit else []) + [len(study.trials) * study.samples])
    return max(n, 0)


def resource_problems(study: Study, resources: Resources, *, local: bool) -> list[str]:
    """Trials that can never be scheduled locally (they would wait forever). On a cluster the autoscaler may add
    nodes, so nothing is refused there. Local CPUs are scheduling tokens (:func:`schedulable_cpus`), so only GPUs
    can be missing."""
    problems = []
    for trial in study.trials:
        need = Demand.of(trial.spec, study.launch.launch.driver_cpus)
        if local and need.gpus > resources.gpus:
            problems.append(f"trial {trial.index} ({trial.label}): resources need {need.gpus:g} GPU(s) but "
                            f"{resources.where} has {resources.gpus:g}: set resources.use_gpu: false or run on a "
                            "GPU cluster with --address")
    return problems


def describe(study: Study, resources: Resources) -> str:
    """The dry-run report: one row per trial with its varying fields and needs, then the schedule."""
    varying = list(study.trials[0].varying)
    epochs = [] if "epochs" in varying else ["epochs"]
    rows = [("#", "trial", *varying, "workers", "CPU", "GPU", *epochs)]
    for t in study.trials:
        need = Demand.of(t.spec, study.launch.launch.driver_cpus)
        rows.append((str(t.index), t.label, *("-" if v is None else str(v) for v in t.varying.values()),
                     str(need.workers), f"{need.cpus:g}", f"{need.gpus:g}", *([str(t.spec.epochs)] if epochs else [])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    samples = study.samples
    n_trials = len(study.trials) * samples
    cpus = schedulable_cpus(study, resources) if resources.where == "this machine" else resources.cpus
    at_once = concurrency(study, Resources(cpus, resources.gpus, resources.where))
    total = Demand(sum(Demand.of(t.spec, study.launch.launch.driver_cpus).cpus for t in study.trials), sum(Demand.of(t.spec, study.launch.launch.driver_cpus).gpus for t in study.trials),
                   0)
    lines += ["", f"spec: {study.source}  name: {study.name}",
              f"trials: {n_trials}" + (f" ({len(study.trials)} grid points x {samples} search samples)"
                                       if samples > 1 else ""),
              f"resources: {resources.where}: {cpus:g} CPU, {resources.gpus:g} GPU",
              f"all trials at once would need {total.cpus * samples:g} CPU, {total.gpus * samples:g} GPU",
              f"at most {at_once} trial(s) run at once"
              + (f"; about {math.ceil(n_trials / at_once)} wave(s)" if at_once else
                 " (none fits: add resources or lower resources.workers_per_trial)")]
    lines += estimate.by_backbone([t.spec for t in study.trials], samples)
    missing = sorted({t.spec.data.root for t in study.trials
                      if t.spec.data.root and t.spec.data.dataset != "synthetic" and not os.path.isdir(t.spec.data.root)})
    if missing:
        lines += ["", f"not checked on this machine (dry run): {len(missing)} dataset root(s) missing here: "
                  + ", ".join(missing)]
    return "\n".join(lines)
