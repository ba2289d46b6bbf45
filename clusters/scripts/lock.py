"""The lock file of every cluster node: ``clusters/requirements.lock``, generated from ``pyproject.toml``.

    python clusters/scripts/lock.py generate    # after changing pyproject's dependencies (needs uv: pip install uv)
    python clusters/scripts/lock.py check       # the lock still matches pyproject.toml (exit 1 and why, if not)

The lock pins every package (``name==version``) that ``pyproject.toml``'s ``dependencies`` plus its ``cluster``
extra resolve to on Linux x86_64, CPython 3.11 (``uv pip compile``, PyPI). Its header names a SHA-256 of what it was
generated from (those two lists, requires-python and the target), so ``check`` notices any later edit of
``pyproject.toml``'s dependencies; ``check`` also verifies that every dependency is pinned at a version within its
bounds. The image (``clusters/kuberay/Dockerfile``) and ``node-setup.sh`` install from the lock and then the project
itself with ``--no-deps``, so every node runs the same versions; the image build runs ``check`` first.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "clusters" / "requirements.lock"
EXTRA = "cluster"
TARGET = {"python_version": "3.11", "python_platform": "x86_64-manylinux_2_28", "index": "https://pypi.org/simple"}
HASH_LINE = "# pyproject-sha256: "


class LockError(ValueError):
    """The lock and pyproject.toml disagree; the message names what and the fix."""


def inputs(pyproject: Path) -> dict:
    """What the lock is generated from: the project's dependencies, the ``cluster`` extra, the target."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extra = project.get("optional-dependencies", {}).get(EXTRA)
    if extra is None:
        raise LockError(f"{pyproject}: [project.optional-dependencies] has no '{EXTRA}' list: add it (see lock.py)")
    return {"dependencies": sorted(project["dependencies"]), EXTRA: sorted(extra),
            "requires-python": project.get("requires-python", ""), **TARGET}


def digest(pyproject: Path) -> str:
    return hashlib.sha256(json.dumps(inputs(pyproject), sort_keys=True).encode()).hexdigest()


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def pins(lock_text: str) -> dict[str, str]:
    """``name==version`` lines of a lock -> {normalized name: version}."""
    found = {}
    for line in lock_text.splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#]+)", line.strip())
        if match:
            found[_name(match.group(1))] = match.group(2)
    return found


def problems(pyproject: Path, lock: Path) -> list[str]:
    """Every disagreement between ``lock`` and ``pyproject``: a stale hash, a dependency missing or out of bounds."""
    from packaging.requirements import Requirement

    if not lock.is_file():
        return [f"{lock} is missing: run python clusters/scripts/lock.py generate"]
    text = lock.read_text()
    found = []
    recorded = next((line[len(HASH_LINE):].strip() for line in text.splitlines() if line.startswith(HASH_LINE)), None)
    if recorded != digest(pyproject):
        found.append(f"{lock.name} was generated from other dependencies than {pyproject.name} has now "
                     f"(hash {recorded} != {digest(pyproject)}): run python clusters/scripts/lock.py generate")
    pinned = pins(text)
    data = inputs(pyproject)
    for line in data["dependencies"] + data[EXTRA]:
        req = Requirement(line)
        version = pinned.get(_name(req.name))
        if version is None:
            found.append(f"{req.name} ({line}) is not in {lock.name}: run python clusters/scripts/lock.py generate")
        elif not req.specifier.contains(version, prereleases=True):
            found.append(f"{req.name}=={version} in {lock.name} is outside {line!r} in {pyproject.name}: "
                         "run python clusters/scripts/lock.py generate")
    return found


def generate(pyproject: Path = PYPROJECT, lock: Path = LOCK) -> None:
    """Resolve with ``uv pip compile`` and write the lock with its header."""
    cmd = [sys.executable, "-m", "uv", "pip", "compile", str(pyproject), "--extra", EXTRA,
           "--python-version", TARGET["python_version"], "--python-platform", TARGET["python_platform"],
           "--index-url", TARGET["index"], "--no-header", "--no-annotate"]
    body = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    header = [
        "# Every package of a DIML cluster node, pinned: the image (clusters/kuberay/Dockerfile) and",
        "# clusters/scripts/node-setup.sh install exactly these, then the project with --no-deps.",
        f"# Generated from {pyproject.name} (dependencies + the '{EXTRA}' extra) for Linux x86_64, CPython "
        f"{TARGET['python_version']}, by: python clusters/scripts/lock.py generate",
        "# torch/torchvision are PyPI's Linux wheels: CUDA 13.0 builds with the CUDA libraries as nvidia-* packages;",
        "# GPU nodes need an NVIDIA driver >= 580.",
        f"{HASH_LINE}{digest(pyproject)}",
    ]
    lock.write_text("\n".join(header) + "\n" + body)


def main(argv: list[str]) -> int:
    if argv[:1] == ["generate"]:
        generate()
        print(f"wrote {LOCK} ({len(pins(LOCK.read_text()))} packages)")
        return 0
    if argv[:1] == ["check"]:
        found = problems(Path(argv[1]) if len(argv) > 1 else PYPROJECT, Path(argv[2]) if len(argv) > 2 else LOCK)
        for line in found:
            print(f"lock.py check: {line}", file=sys.stderr)
        if not found:
            print(f"lock.py check: {LOCK.name} matches {PYPROJECT.name}")
        return 1 if found else 0
    print(__doc__.strip().splitlines()[2], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
