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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: pathlib.Path, backend_uri: str, port: int, timeout: float = 120):
    """``mlflow server`` on ``backend_uri`` at 127.0.0.1:``port`` in its own process group, once it answers
    ``/health``; returns ``(process, url)``. Stop it with :func:`stop_process_group`."""
    import signal
    import subprocess
    import sys
    import urllib.request

    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(folder / f"server-{port}.log", "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
         "--artifacts-destination", str(folder / "served-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            stop_process_group(proc, signal.SIGKILL)
            raise AssertionError("mlflow server did not start:\n" + (folder / f"server-{port}.log").read_text()[-3000:])
        time.sleep(0.5)


def stop_process_group(proc, sig=None) -> None:
    """Stop ``proc``'s process group (it was started with ``start_new_session``): ``sig`` (SIGTERM), then SIGKILL."""
    import signal
    import subprocess

    try:
        os.killpg(proc.pid, sig or signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()
