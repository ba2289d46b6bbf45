"""The scripts the cluster configs run on their nodes: node setup guards, data sync, pinned requirements, and the
MLflow tracking server of the head (started for real on this machine)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "clusters" / "scripts"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"clusters_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_shell_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _node_setup(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "DIML_PROJECT_DIR": str(REPO)}
    return subprocess.run(["bash", str(SCRIPTS / "node-setup.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_node_setup_stops_before_installing_anything_when_the_config_was_not_rendered(tmp_path):
    # An unrendered ${DIML_STORAGE} reaches the node's shell as an empty string.
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("token")
    done = _node_setup(tmp_path, "--role", "worker", "--env", "DIML_STORAGE=", "--env", "DIML_DATA=/data")
    assert done.returncode == 1
    assert "DIML_STORAGE is empty: render the config first" in done.stderr
    assert not (tmp_path / ".local").exists() and not (tmp_path / ".diml").exists()  # nothing installed or written


def test_node_setup_requires_the_ray_auth_token(tmp_path):
    done = _node_setup(tmp_path, "--role", "head", "--env", "DIML_STORAGE=s3://b/d")
    assert done.returncode == 1 and "ray get-auth-token --generate" in done.stderr


def test_node_setup_rejects_unknown_roles_and_arguments(tmp_path):
    assert "--role must be head or worker" in _node_setup(tmp_path, "--role", "boss").stderr
    assert "unknown argument --bogus" in _node_setup(tmp_path, "--bogus").stderr


def test_node_setup_from_the_image_installs_nothing_and_writes_the_env(tmp_path):
    """In the DIML image (here: this interpreter, which has the project) the node only gets ~/.diml/env."""
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("token")
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "DIML_PROJECT_DIR": str(REPO), "PYTHONPATH": str(REPO)}
    done = subprocess.run(["bash", str(SCRIPTS / "node-setup.sh"), "--role", "worker", "--from-image",
                           "--env", "DIML_STORAGE=s3://b/d", "--env", "DIML_DATA=/data"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    written = (tmp_path / ".diml" / "env").read_text()
    assert "export RAY_AUTH_MODE=token" in written and "export DIML_STORAGE=s3://b/d" in written
    assert "PATH=" not in written  # the image's Python is already the one on PATH
    assert not (tmp_path / ".local").exists() and not (tmp_path / "diml-venv").exists()  # no uv, no venv
    assert "node-setup.sh: worker ready (ray 2.60" in done.stdout


def test_sync_data_copies_once_and_redoes_an_interrupted_copy(tmp_path, capsys):
    sync = _module("sync_data")
    source = tmp_path / "bucket" / "datasets"
    (source / "CUB_200_2011" / "images").mkdir(parents=True)
    (source / "CUB_200_2011" / "images" / "a.jpg").write_bytes(b"\xff\xd8jpeg")
    (source / "cars196").mkdir()
    (source / "cars196" / "cars_annos.mat").write_bytes(b"mat")
    dest = tmp_path / "node" / "data"

    assert sync.sync(str(source), dest) is True
    assert (dest / "CUB_200_2011" / "images" / "a.jpg").read_bytes() == b"\xff\xd8jpeg"
    assert (dest / "cars196" / "cars_annos.mat").read_bytes() == b"mat"
    progress = capsys.readouterr().err
    assert "sync_data: 100%" in progress and "9.00/9.00" in progress, progress  # 6 + 3 bytes copied
    assert sync.sync(str(source), dest) is False  # marker: a second `ray up` copies nothing

    (dest / sync.MARKER).unlink()  # as if the copy had been interrupted
    (source / "cars196" / "new.txt").write_text("x")
    assert sync.sync(source.as_uri(), dest) is True and (dest / "cars196" / "new.txt").exists()

    with pytest.raises(FileNotFoundError, match="is not a folder"):
        sync.sync(str(tmp_path / "nowhere"), tmp_path / "other")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_members(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat=,comm="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[1] == str(pgid) and not line.split()[2].startswith("Z")]


@pytest.mark.e2e
def test_mlflow_server_script_serves_tracking_with_artifacts_on_shared_storage(tmp_path):
    """The head's tracking server as the cluster configs start it: SQLite backend, artifacts proxied to the
    shared storage folder, its own process group, stopped cleanly."""
    import mlflow

    port = _free_port()
    shared = tmp_path / "shared"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DIML_"))},
           "HOME": str(tmp_path / "home"), "DIML_STORAGE": str(shared), "DIML_MLFLOW_HOST": "127.0.0.1",
           "DIML_MLFLOW_PORT": str(port), "DIML_MLFLOW_WORKERS": "1"}
    script = str(SCRIPTS / "mlflow-server.sh")
    started = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=240)
    state = tmp_path / "home" / "mlflow"
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        pgid = int((state / "server.pid").read_text())
        assert _group_members(pgid), "the server is not running in its recorded process group"

        client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        experiment = client.create_experiment("cluster-check")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "R_at_1", 61.5)
        (tmp_path / "table.md").write_text("| R@1 |\n| 61.5 |\n")
        client.log_artifact(run.info.run_id, str(tmp_path / "table.md"))
        assert client.get_run(run.info.run_id).data.metrics == {"R_at_1": 61.5}
        stored = list((shared / "mlflow-artifacts").rglob("table.md"))
        assert len(stored) == 1 and stored[0].read_text().startswith("| R@1 |")
        assert (state / "mlflow.db").is_file()
        status = subprocess.run(["bash", script, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0
    finally:
        stopped = subprocess.run(["bash", script, "stop"], env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert _group_members(pgid) == [] and not (state / "server.pid").exists()
    status = subprocess.run(["bash", script, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "down" in status.stdout
    shutil.rmtree(tmp_path / "home", ignore_errors=True)


@pytest.mark.e2e
def test_mlflow_server_script_defers_to_an_existing_tracking_server(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "DIML_MLFLOW_URI": "http://mlflow.internal:5000"}
    done = subprocess.run(["bash", str(SCRIPTS / "mlflow-server.sh"), "start"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "using the existing tracking server" in done.stdout
    assert not (tmp_path / "mlflow").exists()
