"""The research library stays free of orchestration imports; the package layout is what the README promises."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {"ray", "mlflow", "pydantic", "pipeline"}


def _imported_top_level_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_diml_never_imports_orchestration_code():
    offenders = {}
    files = sorted((ROOT / "diml").rglob("*.py"))
    assert files, "diml/ has no Python files"
    for path in files:
        bad = _imported_top_level_modules(path) & FORBIDDEN
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_import_scanner_detects_a_forbidden_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom ray import tune\nif True:\n    import mlflow.pytorch\n")
    assert _imported_top_level_modules(probe) & FORBIDDEN == {"ray", "mlflow"}


def test_layout_exists():
    for name in ["pyproject.toml", "README.md", "diml", "pipeline", "specs", "clusters", "tests", "benchmarks"]:
        assert (ROOT / name).exists(), name


def _pipeline_imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.update([node.module] + [f"{node.module}.{alias.name}" for alias in node.names])
    return {n for n in names if n.startswith("pipeline")}


def test_the_trial_side_never_imports_the_launcher_side():
    """Code that runs inside Ray (pipeline/trial) does not reach back into the launcher (pipeline/launch)."""
    offenders = {}
    for path in sorted((ROOT / "pipeline" / "trial").rglob("*.py")):
        bad = sorted(n for n in _pipeline_imports(path) if n.startswith("pipeline.launch"))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert (ROOT / "pipeline" / "trial" / "worker.py").exists()
    assert offenders == {}
