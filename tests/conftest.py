"""Shared fixtures: one local Ray runtime for the whole session, and one tiny grid launched on it.

End-to-end tests share them so that Ray (~8 s) and the tiny grid (~1 min) start once.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_DEDUP_LOGS_SKIP_REGEX": "Failed to query Ray Train Controller actor state|PreemptionWatcher",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "MPLBACKEND": "Agg",
}
for _key, _value in TEST_ENV.items():
    os.environ.setdefault(_key, _value)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)

TINY_SPEC = {
    "name": "tiny",
    "epochs": 1,
    "data": {"dataset": "synthetic", "image_size": 32, "synthetic": {"num_classes": 8, "images_per_class": 6}},
    "model": {"backbone": "resnet18", "embed_dim": 16, "grid": 2, "frozen_bn": False},
    "loss": {"name": "margin"},
    "optimizer": {"lr": 1e-3},
    "batch": {"size": 8, "images_per_class": 2, "batches_per_epoch": 2},
    "evaluation": {"depths": [3, 5], "batch_size": 16, "explanations": 1, "before_training": True},
    "resources": {"workers_per_trial": 2, "cpus_per_worker": 1, "max_concurrent_trials": 2},
    "grid": {"loss.similarity": ["global", "diml"]},
}


def write_spec(folder: pathlib.Path, spec: dict, name: str = "spec.yaml") -> pathlib.Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def ray_session():
    """A private local Ray runtime (never another cluster on this host), shut down at the end."""
    import ray

    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(address="local", num_cpus=6, include_dashboard=False, _temp_dir=temp,
             object_store_memory=200 * 1024**2, logging_level="WARNING",
             runtime_env={"env_vars": {k: v for k, v in TEST_ENV.items() if k.startswith(("RAY_", "TUNE_"))}})
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_grid(ray_session, tmp_path_factory):
    """The tiny grid launched once through ``pipeline.launch`` on the shared runtime."""
    from pipeline.launch import main

    folder = tmp_path_factory.mktemp("tiny_grid")
    spec = write_spec(folder, TINY_SPEC)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    argv = [str(spec), "--set", f"tracking.uri={uri}", "--set", f"tracking.artifact_location={folder / 'art'}",
            "--set", f"resources.storage_path={folder / 'ray'}"]
    code = main(argv)
    return {"code": code, "uri": uri, "folder": folder, "experiment": "tiny", "argv": argv}
