"""Shared test data for the end-to-end tests: the tiny spec, the test environment, a spec writer."""

from __future__ import annotations

import os
import pathlib
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_DEDUP_LOGS_SKIP_REGEX": "Failed to query Ray Train Controller actor state|PreemptionWatcher",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "MPLBACKEND": "Agg",
    "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",  # MLflow's default 10 s can outlast a tiny trial
}

TINY_SPEC = {
    "name": "tiny",
    "epochs": 1,
    "data": {"dataset": "synthetic", "image_size": 32, "synthetic": {"num_classes": 8, "images_per_class": 6}},
    "model": {"backbone": "resnet18", "embed_dim": 16, "grid": 2, "frozen_bn": False},
    "loss": {"name": "margin"},
    "optimizer": {"lr": 1e-3},
    "batch": {"size": 8, "images_per_class": 2, "batches_per_epoch": 2},
    "evaluation": {"depths": [3, 5], "batch_size": 16, "explanations": 1, "before_training": True,
                   "save_embeddings": True},
    "resources": {"workers_per_trial": 2, "cpus_per_worker": 1},
    "launch": {"max_concurrent_trials": 2},
    "grid": {"loss.similarity": ["global", "diml"]},
}


def write_spec(folder: pathlib.Path, spec: dict, name: str = "spec.yaml") -> pathlib.Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def wait_for(predicate, timeout: float, what: str, proc=None):
    """``predicate()``'s first truthy value within ``timeout`` seconds; fails early if the launcher ``proc`` exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"launcher exited ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def descendants(root_pid: int) -> set[int]:
    """Every process below ``root_pid`` (children, grandchildren, ...), from ``/proc``."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {root_pid}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found
