"""Shared fixtures: one local Ray runtime for the whole session, and one tiny grid launched on it.

End-to-end tests share them so that Ray (~8 s) and the tiny grid (~1 min) start once.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from e2e_support import ROOT, TEST_ENV, TINY_SPEC, write_spec  # noqa: F401 (re-exported for tests)

for _key, _value in TEST_ENV.items():
    os.environ.setdefault(_key, _value)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_store():
    """A test that points MLflow at its store in-process (``mlflow.set_tracking_uri`` also exports
    ``MLFLOW_TRACKING_URI``) must not decide the store of later tests' launches."""
    import sys

    def globals_of_mlflow():
        if "mlflow" not in sys.modules:
            return None
        import mlflow.tracking.fluent as fluent
        from mlflow.tracking._tracking_service import utils

        return utils, fluent

    modules = globals_of_mlflow()
    before = (modules[0]._tracking_uri, modules[1]._active_experiment_id) if modules else (None, None)
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    yield
    modules = globals_of_mlflow()
    if modules:
        modules[0]._tracking_uri, modules[1]._active_experiment_id = before
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def ray_session():
    """A private local Ray runtime (never another cluster on this host), shut down at the end."""
    import ray

    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(address="local", num_cpus=6, include_dashboard=False, _temp_dir=temp,
             object_store_memory=200 * 1024**2, logging_level="WARNING",
             runtime_env={"env_vars": {k: v for k, v in TEST_ENV.items() if k.startswith(("RAY_", "TUNE_", "MLFLOW_SYSTEM_METRICS_"))}})
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_grid(ray_session, tmp_path_factory):
    """The tiny grid launched once through ``pipeline.launch`` on the shared runtime."""
    from pipeline.launch.cli import main

    folder = tmp_path_factory.mktemp("tiny_grid")
    spec = write_spec(folder, TINY_SPEC)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    argv = [str(spec), "--set", f"tracking.uri={uri}", "--set", f"tracking.artifact_location={folder / 'art'}",
            "--set", f"launch.storage_path={folder / 'ray'}"]
    code = main(argv)
    return {"code": code, "uri": uri, "folder": folder, "experiment": "tiny", "argv": argv}
