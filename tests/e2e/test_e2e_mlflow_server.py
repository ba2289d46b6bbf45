"""A real ``mlflow server`` over the tiny grid's store: REST API, a launch that logs through the server, the
paper-style report, and the UI rendered in headless Chromium."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import urllib.request

import pytest

from e2e_support import ROOT, TINY_SPEC, free_port, start_mlflow_server, stop_process_group, write_spec

pytestmark = pytest.mark.e2e


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode())


def _post(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read().decode())


@pytest.fixture(scope="module")
def server(tiny_grid):
    proc, url = start_mlflow_server(tiny_grid["folder"], tiny_grid["uri"], free_port())
    try:
        yield url
    finally:
        stop_process_group(proc)


def test_rest_api_shows_experiment_runs_tags_and_metrics(server):
    experiment = _get(f"{server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny")["experiment"]
    runs = _post(f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags) if t.get("diml.role") == "launch"]
    children = [(r, t) for r, t in zip(runs, tags) if t.get("diml.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    parent_id = parents[0]["info"]["run_id"]
    for run, t in children:
        assert t["mlflow.parentRunId"] == parent_id
        assert t["similarity"] in {"global", "diml"} and t["dataset"] == "synthetic" and t["loss"] == "margin"
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        for key in ("best/test/global/R_at_1", "best/test/diml_K5/MAP_at_R", "train/loss"):
            assert 0 <= metrics[key] < 1e6, key


def test_launch_logs_through_a_remote_server(server, ray_session, tmp_path):
    """The whole trial logging path (child run, metrics, checkpoint artifact) against the server."""
    from pipeline.launch.cli import main

    spec = {k: v for k, v in TINY_SPEC.items() if k != "grid"}
    spec.update(name="remote", evaluation={"depths": [3], "batch_size": 16, "explanations": 0})
    path = write_spec(tmp_path, spec)
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = server
    try:
        code = main([str(path), "--set", f"launch.storage_path={tmp_path / 'ray'}"])
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI") if old is None else os.environ.__setitem__("MLFLOW_TRACKING_URI", old)
    assert code == 0
    experiment = _get(f"{server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=remote")["experiment"]
    runs = _post(f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    child = [r for r in runs if any(t["key"] == "diml.role" and t["value"] == "trial" for t in r["data"]["tags"])]
    assert len(child) == 1 and child[0]["info"]["status"] == "FINISHED"
    listed = _get(f"{server}/api/2.0/mlflow/artifacts/list?run_id={child[0]['info']['run_id']}&path=checkpoint")
    assert [f["path"] for f in listed["files"]] == ["checkpoint/best_model.pt"]
    import mlflow

    mlflow.set_tracking_uri(server)  # the logged model went through the server's artifact proxy too
    info = mlflow.models.get_model_info(f"runs:/{child[0]['info']['run_id']}/model")
    assert info.metadata["model_config"]["image_size"] == 32


def test_unreachable_server_stops_the_launch_before_any_trial(tmp_path, capsys):
    from pipeline.launch.cli import main

    path = write_spec(tmp_path, {**{k: v for k, v in TINY_SPEC.items() if k != "grid"}, "name": "nowhere"})
    code = main([str(path), "--set", f"tracking.uri=http://127.0.0.1:{free_port()}"])
    assert code == 2
    assert "cannot be reached" in capsys.readouterr().err
    assert not (tmp_path / "ray_results").exists()


def test_report_from_mlflow(tiny_grid, tmp_path):
    import pandas as pd
    from PIL import Image

    out = tmp_path / "report"
    code = subprocess.run([sys.executable, "-m", "pipeline.report", "--experiment", "tiny", "--out", str(out),
                           "--tracking-uri", tiny_grid["uri"]], cwd=ROOT, capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    markdown = (out / "report.md").read_text()
    header = markdown.splitlines()[0]
    for column in ("global R@1", "DIML@3 R@1", "DIML@5 MAP@R", "DIML@5 gain R@1", "training"):
        assert column in header
    retrieval, parts = markdown.split("### Part correspondence")
    for table in (retrieval, parts):  # the synthetic data has parts: the flow's part correspondence too
        rows = [line for line in table.splitlines()[2:] if line.startswith("| synthetic")]
        assert len(rows) == 2 and {r.split("|")[5].strip() for r in rows} == {"global", "diml"}
    assert "R convention: PML (R excludes the query)" in markdown and "selected on: test" in markdown
    frame = pd.read_parquet(out / "report.parquet")
    assert len(frame) == 2 and frame["global/R@1 mean"].between(0, 100).all()
    assert pd.read_csv(out / "report.csv").shape == frame.shape
    image = Image.open(out / "gains.png")
    assert image.size[0] >= 600 and len(set(image.convert("L").getdata())) > 10


def _shown(value: float) -> str:
    """A metric value as MLflow 3.17's runs table prints it: JavaScript's shortest round-trip form (Python's repr,
    without the ".0" of a whole number)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_ui_lists_the_trials_with_their_r_at_1(server, tiny_grid, tmp_path):
    """The URL the README gives, in a fresh browser profile: the model-training layout, the runs table with both
    trials as rows (not folded under the launch run) and their best test R@1 as a column, without any click."""
    from pipeline import tracking

    experiment = _get(f"{server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny")["experiment"]
    runs = _post(f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    trials = []
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        if tags.get("diml.role") == "trial":
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            trials.append((tags["mlflow.runName"], metrics["best/test/global/R_at_1"],
                           metrics["best/test/diml_K5/R_at_1"]))
    url = tracking.ui_url(server, experiment["experiment_id"])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1600,900", "--virtual-time-budget=30000"]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", url], capture_output=True, text=True, timeout=300).stdout
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert "3 matching runs" in text and "Model registry" in text, text[-1500:]  # the model-training sidebar
    assert "You're viewing a shared view" in text and "Sort: best/test/global/R_at_1" in text, text[-1500:]
    table = text[text.index("Run Name"):text.index("matching runs")]
    for name, global_r1, diml_r1 in trials:
        assert f" {name} " in table, (name, table)
        assert f" {_shown(global_r1)} " in table and f" {_shown(diml_r1)} " in table, (global_r1, diml_r1, table)
    # trials first (ordered by global R@1, best first), the launch run without metrics last
    order = sorted(trials, key=lambda t: -t[1])
    positions = [table.index(f" {name} ") for name, _, _ in order] + [table.index(" tiny ")]
    assert positions == sorted(positions), table
    shot = pathlib.Path(tiny_grid["folder"]) / "mlflow_ui.png"
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", url], capture_output=True, timeout=300)
    from PIL import Image

    image = Image.open(shot)
    assert image.size == (1600, 900)
    assert len(set(image.convert("L").getdata())) > 20
    print(f"MLflow UI screenshot: {shot}")
