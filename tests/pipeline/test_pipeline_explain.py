"""``python -m pipeline.explain --run-id``: the model is the trial's logged MLflow model (``runs:/<id>/model``) in a
local SQLite store; it explains exactly as the same weights loaded from a checkpoint file by ``python -m
diml.explain --checkpoint``, and embeds a batch of any size as the original model does."""

import json

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from diml.explain.cli import main as checkpoint_main
from diml.models import build_model
from pipeline import logged_model
from pipeline.explain import main

CONFIG = {"backbone": "resnet18", "embed_dim": 16, "grid": 2, "frozen_bn": False, "image_size": 32}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite MLflow store with one run holding a logged model and one run without it (created once: a new
    SQLite store costs seconds of migrations, an export ~10 s)."""
    tmp_path = tmp_path_factory.mktemp("explain_store")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("explain", artifact_location=(tmp_path / "artifacts").as_uri())
    torch.manual_seed(0)
    model = build_model("resnet18", pretrained=False, embed_dim=16, grid=2).eval()
    checkpoint = tmp_path / "best_model.pt"
    torch.save({"model": model.state_dict(), "model_config": CONFIG, "epoch": 0}, checkpoint)
    run = client.create_run(experiment).info.run_id
    client.log_metric(run, "best/test/global/R_at_1", 50.0, step=3)
    info = logged_model.log_model(uri, run, model.train(), CONFIG, step=3)
    client.set_terminated(run)
    empty = client.create_run(experiment).info.run_id
    rng = np.random.default_rng(0)
    for name in ("query.png", "a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name)
    return {"uri": uri, "run": run, "empty": empty, "folder": tmp_path, "model": model.eval(), "info": info,
            "checkpoint": checkpoint}


def _args(store, out, *extra):
    folder = store["folder"]
    return ["--query", str(folder / "query.png"), "--gallery", str(folder), "--out", str(out), "--top", "2",
            *extra]


def test_logged_model_loads_by_run_uri_and_embeds_any_batch_size(store):
    """The MLflow model itself: signature, metadata, the run's metric at its step, and the same embeddings as the
    original model for batches of 1, 3 and 5 images."""
    mlflow.set_tracking_uri(store["uri"])
    uri = f"runs:/{store['run']}/model"
    info = mlflow.models.get_model_info(uri)
    assert info.metadata["model_config"] == CONFIG
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 32, 32)
    assert [o["name"] for o in info.signature.outputs.to_dict()] == ["global_emb", "local_emb"]
    logged = mlflow.get_logged_model(store["info"].model_id)
    assert logged.source_run_id == store["run"] and logged.metrics[0].key == "best/test/global/R_at_1"
    exported = mlflow.pytorch.load_model(uri)
    for batch in (1, 3, 5):
        images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        global_emb, local_emb = exported(images)
        with torch.no_grad():
            reference = store["model"](images)
        assert global_emb.shape == (batch, 16) and local_emb.shape == (batch, 16, 4)
        torch.testing.assert_close(global_emb, reference.global_emb, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(local_emb, reference.local_emb, atol=1e-5, rtol=1e-5)


def test_explains_with_the_model_of_a_run_as_with_its_checkpoint(store, tmp_path, capsys):
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert main(["--run-id", store["run"], "--tracking-uri", store["uri"]] + _args(store, out)) == 0
    assert checkpoint_main(["--checkpoint", str(store["checkpoint"])] + _args(store, ref)) == 0
    assert (out / "retrieval.png").is_file() and (out / "flow_01.png").is_file()
    results = json.loads((out / "results.json").read_text())
    expected = json.loads((ref / "results.json").read_text())
    assert results["model_config"] == CONFIG and results["checkpoint"] == f"runs:/{store['run']}/model"
    assert [r["image_id"] for r in results["after"]] == [r["image_id"] for r in expected["after"]]
    for got, want in zip(results["after"] + results["before"], expected["after"] + expected["before"]):
        assert got["final_score"] == pytest.approx(want["final_score"], abs=1e-5)
    assert str(out / "results.json") in capsys.readouterr().out


def test_default_uri_comes_from_the_environment(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    assert main(["--run-id", store["run"]] + _args(store, tmp_path, "--depth", "1")) == 0
    assert json.loads((tmp_path / "results.json").read_text())["depth"] == 1


def test_unknown_run_and_missing_model_are_clear_errors(store, tmp_path, capsys):
    assert main(["--run-id", "0123456789abcdef", "--tracking-uri", store["uri"]] + _args(store, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "run 0123456789abcdef is not in the MLflow store" in err and store["uri"] in err
    assert main(["--run-id", store["empty"], "--tracking-uri", store["uri"]] + _args(store, tmp_path)) == 2
    assert f"run {store['empty']} in {store['uri']} has no loadable MLflow model 'model'" in capsys.readouterr().err
