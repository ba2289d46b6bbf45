"""clusters/requirements.lock: generated from pyproject.toml, and every node is built from it (one image, the VM
clusters' docker: section, node-setup.sh); the check fails when the lock and pyproject.toml disagree."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTERS = REPO / "clusters"
LOCK = CLUSTERS / "requirements.lock"


def _lock_module():
    spec = importlib.util.spec_from_file_location("diml_lock", CLUSTERS / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = _lock_module()


def test_the_committed_lock_matches_pyproject():
    assert lock.problems(REPO / "pyproject.toml", LOCK) == []
    out = subprocess.run([sys.executable, str(CLUSTERS / "scripts" / "lock.py"), "check"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_every_pyproject_dependency_is_pinned_within_its_bounds_by_hand():
    """Independent of lock.py: read both files plainly and compare a few bounds written out here."""
    pinned = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)$", LOCK.read_text(), re.M))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in project["dependencies"]]
    assert [n for n in names if n not in pinned] == []
    assert pinned["ray"].startswith("2.60.")
    assert pinned["pot"].startswith("0.9.7")
    assert pinned["mlflow"].startswith("3.17.")
    assert pinned["psycopg2-binary"] and pinned["google-cloud-storage"] and pinned["boto3"]


def _copy(tmp_path: Path, pyproject_text: str, lock_text: str) -> tuple[Path, Path]:
    pyproject, lock_file = tmp_path / "pyproject.toml", tmp_path / "requirements.lock"
    pyproject.write_text(pyproject_text)
    lock_file.write_text(lock_text)
    return pyproject, lock_file


def test_an_edited_dependency_list_makes_the_check_fail(tmp_path):
    text = (REPO / "pyproject.toml").read_text().replace('"tqdm>=4.66",', '"tqdm>=4.66",\n    "rich>=13",')
    pyproject, lock_file = _copy(tmp_path, text, LOCK.read_text())
    found = lock.problems(pyproject, lock_file)
    assert any("generated from other dependencies" in p for p in found)
    assert any(p.startswith("rich (rich>=13) is not in") for p in found)
    out = subprocess.run([sys.executable, str(CLUSTERS / "scripts" / "lock.py"), "check", str(pyproject),
                          str(lock_file)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "lock.py generate" in out.stderr


def test_a_pin_outside_pyprojects_bounds_or_missing_makes_the_check_fail(tmp_path):
    text = re.sub(r"^torch==\S+$", "torch==2.3.1", LOCK.read_text(), flags=re.M)
    text = re.sub(r"^pydantic==\S+\n", "", text, flags=re.M)
    pyproject, lock_file = _copy(tmp_path, (REPO / "pyproject.toml").read_text(), text)
    found = lock.problems(pyproject, lock_file)
    assert any(p.startswith("torch==2.3.1 in requirements.lock is outside 'torch>=") for p in found), found
    assert any(p.startswith("pydantic (pydantic>=2.7,<3) is not in") for p in found), found
    assert not any("generated from other dependencies" in p for p in found)  # the hash alone still matches


def test_the_image_installs_the_lock_then_the_project_without_dependencies():
    dockerfile = (CLUSTERS / "kuberay" / "Dockerfile").read_text()
    runs = " ".join(re.findall(r"^RUN ((?:[^\n]*\\\n)*[^\n]*)", dockerfile, re.M))
    assert "-r clusters/requirements.lock" in runs and "--no-deps" in runs
    assert "clusters/scripts/lock.py check" in runs  # a stale lock stops the build
    ignore = (CLUSTERS / "kuberay" / "Dockerfile.dockerignore").read_text()
    assert "!clusters/" in ignore


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_vm_clusters_run_every_node_in_the_one_image(name):
    config = yaml.safe_load((CLUSTERS / name).read_text())
    manifest = [d for d in yaml.safe_load_all((CLUSTERS / "kuberay" / "raycluster.yaml").read_text())
                if d and d.get("kind") == "RayCluster"][0]
    kube_image = manifest["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert config["docker"]["image"] == kube_image == "${DIML_IMAGE}"
    assert config["docker"]["container_name"]
    assert "--gpus all" in " ".join(config["docker"].get("worker_run_options", []))
    setup = " ".join(config.get("setup_commands", []) + config.get("head_setup_commands", [])
                     + config.get("worker_setup_commands", []))
    # node-setup.sh only writes ~/.diml/env and copies the data: the image holds every package
    assert "pip install" not in setup and setup.count("node-setup.sh") == setup.count("--from-image") == 2


def test_node_setup_installs_the_lock():
    script = (CLUSTERS / "scripts" / "node-setup.sh").read_text()
    assert "requirements.lock" in script and "--no-deps" in script
    assert "lock.py\" check" in script or "lock.py check" in script
