"""``python -m pipeline.explain --run-id``: the checkpoint comes from an MLflow run of a local SQLite store."""

import json

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from diml.models import build_model
from pipeline.explain import main

CONFIG = {"backbone": "resnet18", "embed_dim": 16, "grid": 2, "frozen_bn": False, "image_size": 32}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite MLflow store with one run holding ``checkpoint/best_model.pt`` and one run without it (created once:
    a new SQLite store costs seconds of migrations)."""
    tmp_path = tmp_path_factory.mktemp("explain_store")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("explain", artifact_location=(tmp_path / "artifacts").as_uri())
    torch.manual_seed(0)
    model = build_model("resnet18", pretrained=False, embed_dim=16, grid=2).eval()
    checkpoint = tmp_path / "best_model.pt"
    torch.save({"model": model.state_dict(), "model_config": CONFIG, "epoch": 0}, checkpoint)
    run = client.create_run(experiment).info.run_id
    client.log_artifact(run, str(checkpoint), "checkpoint")
    client.set_terminated(run)
    empty = client.create_run(experiment).info.run_id
    rng = np.random.default_rng(0)
    for name in ("query.png", "a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name)
    return {"uri": uri, "run": run, "empty": empty, "folder": tmp_path}


def _args(store, out, *extra):
    folder = store["folder"]
    return ["--query", str(folder / "query.png"), "--gallery", str(folder / "a.png"), "--out", str(out), "--top", "1",
            *extra]


def test_explains_with_the_checkpoint_of_a_run(store, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--run-id", store["run"], "--tracking-uri", store["uri"]] + _args(store, out)) == 0
    assert (out / "retrieval.png").is_file() and (out / "flow_01.png").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["model_config"] == CONFIG and results["after"][0]["image_id"] == "a.png"
    assert str(out / "results.json") in capsys.readouterr().out


def test_default_uri_comes_from_the_environment(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    assert main(["--run-id", store["run"]] + _args(store, tmp_path, "--depth", "1")) == 0
    assert json.loads((tmp_path / "results.json").read_text())["depth"] == 1


def test_unknown_run_and_missing_artifact_are_clear_errors(store, tmp_path, capsys):
    assert main(["--run-id", "0123456789abcdef", "--tracking-uri", store["uri"]] + _args(store, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "run 0123456789abcdef is not in the MLflow store" in err and store["uri"] in err
    assert main(["--run-id", store["empty"], "--tracking-uri", store["uri"]] + _args(store, tmp_path)) == 2
    assert "has no artifact checkpoint/best_model.pt" in capsys.readouterr().err
