"""End to end: a tiny grid through pipeline.launch -> Ray Tune -> Ray Train (2 workers, DDP) -> MLflow."""

import math

import pytest

pytestmark = pytest.mark.e2e

RANKINGS = ("global", "diml_K3", "diml_K5")
METRICS = ("R_at_1", "R_at_2", "RP", "MAP_at_R")


def _client(uri):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def _runs(tiny_grid):
    c = _client(tiny_grid["uri"])
    experiment = c.get_experiment_by_name(tiny_grid["experiment"])
    assert experiment is not None
    runs = c.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("diml.role") == "launch"]
    children = [r for r in runs if r.data.tags.get("diml.role") == "trial"]
    return c, experiment, parents, children


def test_launch_succeeds(tiny_grid):
    assert tiny_grid["code"] == 0


def test_one_parent_and_one_child_per_trial(tiny_grid):
    _, _, parents, children = _runs(tiny_grid)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.data.tags["similarity"] for r in children) == ["diml", "global"]
    for run in children:
        assert run.info.status == "FINISHED"
        for tag in ("dataset", "loss", "backbone", "seed", "ray_trial_id", "ray_node_id"):
            assert run.data.tags.get(tag), tag
        assert run.data.params["loss.similarity"] == run.data.tags["similarity"]
        assert run.data.params["model.backbone"] == "resnet18"


def test_children_hold_finite_final_metrics_for_every_ranking(tiny_grid):
    _, _, _, children = _runs(tiny_grid)
    for run in children:
        m = run.data.metrics
        for ranking in RANKINGS:
            for metric in METRICS:
                value = m[f"best/test/{ranking}/{metric}"]
                assert math.isfinite(value) and 0.0 <= value <= 100.0, (ranking, metric, value)
        assert math.isfinite(m["best/test/global/NMI"])
        assert math.isfinite(m["init/test/global/R_at_1"])
        assert m["best/epoch"] == 0


def test_per_epoch_metrics_and_checkpoint_artifact(tiny_grid, tmp_path):
    import torch

    c, _, parents, children = _runs(tiny_grid)
    for run in children:
        history = c.get_metric_history(run.info.run_id, "train/loss")
        assert len(history) == 1 and history[0].step == 0 and math.isfinite(history[0].value)
        for key in ("train/lr", "train/epoch_seconds", "train/images_per_second", "test/global/R_at_1"):
            assert key in run.data.metrics, key
        local = c.download_artifacts(run.info.run_id, "checkpoint/best_model.pt", str(tmp_path))
        state = torch.load(local, map_location="cpu", weights_only=True)
        assert state["spec"]["loss"]["similarity"] == run.data.tags["similarity"]
        assert any(k.endswith("weight") for k in state["model"])
    artifacts = [a.path for a in c.list_artifacts(parents[0].info.run_id)]
    assert "spec.yaml" in artifacts


def test_results_table_printed(tiny_grid, capsys):
    from pipeline.results import collect_results

    _, experiment, parents, _ = _runs(tiny_grid)
    table = collect_results(tiny_grid["uri"], experiment.experiment_id, parents[0].info.run_id).render()
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["trial", "loss", "mode", "status"]
    assert "diml@5 R@1" in lines[0] and "global R@1" in lines[0]
    assert len(lines) == 4 and all("FINISHED" in line for line in lines[2:])


def test_embeddings_parquet_rescored_without_the_model(tiny_grid, tmp_path):
    """The logged test embeddings re-score at a new depth without the model, and reproduce the logged metrics."""
    from diml.evaluation import evaluate, load_embeddings

    c, _, _, children = _runs(tiny_grid)
    run = children[0]
    local = c.download_artifacts(run.info.run_id, "embeddings/test_embeddings.parquet", str(tmp_path))
    emb = load_embeddings(local)
    assert emb.local_emb.shape[0] == emb.global_emb.shape[0] == len(emb.labels) == 24  # 4 test classes x 6
    again = evaluate(emb.global_emb, emb.labels, emb.local_emb, depths=(5, 7))
    logged = run.data.metrics
    assert again["global"]["R@1"] == pytest.approx(logged["best/test/global/R_at_1"], abs=1e-6)
    assert again["diml@5"]["MAP@R"] == pytest.approx(logged["best/test/diml_K5/MAP_at_R"], abs=1e-4)
    assert set(again) >= {"global", "diml@5", "diml@7"}


def test_explanations_logged_with_an_index_page(tiny_grid, tmp_path):
    c, _, _, children = _runs(tiny_grid)
    for run in children:
        names = [a.path for a in c.list_artifacts(run.info.run_id, "explanations")]
        assert "explanations/index.html" in names
        assert any(n.endswith("_flow.png") for n in names) and any(n.endswith(".json") for n in names)
        page = c.download_artifacts(run.info.run_id, "explanations/index.html", str(tmp_path / run.info.run_id))
        text = open(page).read()
        assert "<img" in text and "q00_flow.png" in text


def test_every_trial_records_its_hardware_versions_and_determinism(tiny_grid):
    from pipeline import provenance

    _, _, _, children = _runs(tiny_grid)
    here = provenance.environment()
    for run in children:
        tags = run.data.tags
        for key in ("env.cpu", "env.cpu_capability", "env.gpu", "env.torch", "env.cuda", "env.ray", "env.mlflow",
                    "env.deterministic", "env.hardware", "env.fingerprint"):
            assert tags.get(key), key
        # the workers ran on this machine, with this process's libraries
        assert tags["env.hardware"] == here["env.hardware"] and tags["env.torch"] == here["env.torch"]
        assert tags["env.deterministic"] == "false" and tags["env.threads"] == "1"


TIMING = ("overhead/", "time/", "system/")  # wall-clock measurements, not results


def _results(client, run) -> dict:
    """Every logged value of a run that is a result (metric histories, step by step), none that is a timing."""
    keys = [k for k in run.data.metrics if not k.startswith(TIMING) and not k.endswith(("_seconds", "_second", "_s"))]
    return {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in keys}


def test_the_same_spec_and_seed_give_identical_metrics(tiny_grid, tmp_path):
    """Reproducibility as a contract (CPU): the DIML trial of the tiny grid, launched again with the same trial spec
    into another store, logs the same training losses and test metrics, bit for bit."""
    from pipeline.launch.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [*tiny_grid["argv"][:1], "--set", f"tracking.uri={uri}",
            "--set", f"tracking.artifact_location={tmp_path / 'art'}", "--set", f"launch.storage_path={tmp_path / 'ray'}",
            "--set", 'grid={"loss.similarity": ["diml"]}']
    assert main(argv) == 0
    first_client, _, _, first = _runs(tiny_grid)
    again_client, _, _, again = _runs({**tiny_grid, "uri": uri})
    (before,) = [r for r in first if r.data.tags["similarity"] == "diml"]
    (after,) = again
    assert after.data.params == before.data.params
    ours, theirs = _results(first_client, before), _results(again_client, after)
    assert "train/loss" in ours and "best/test/diml_K5/R_at_1" in ours and "init/test/global/R_at_1" in ours
    assert theirs == ours

def test_time_split_logged_every_epoch_and_within_the_epoch(tiny_grid):
    """Issue 26: every part of the time split at every epoch's step, adding up to no more than the epoch."""
    from pipeline.trial.timing import EPOCH_KEY, PARTS, metric_key

    c, _, _, children = _runs(tiny_grid)
    for run in children:
        epochs = {m.step: m.value for m in c.get_metric_history(run.info.run_id, EPOCH_KEY)}
        assert sorted(epochs) == [0]  # the tiny grid trains one epoch
        for step, wall in epochs.items():
            parts = {}
            for part in PARTS:
                history = {m.step: m.value for m in c.get_metric_history(run.info.run_id, metric_key(part))}
                parts[part] = history[step]
            assert all(v >= 0 for v in parts.values()) and sum(parts.values()) <= wall, (parts, wall)
            assert parts["train_step"] > 0 and parts["eval"] > 0 and parts["tracking"] > 0
            assert parts["explanations"] > 0  # the last epoch holds the final phase, figures included


def test_every_trial_logs_the_part_correspondence_and_the_report_shows_it(tiny_grid, tmp_path):
    """Issue 25: the synthetic data has part annotations, so every trial measures its flow's part correspondence,
    before training and for the best model, with the baselines and the grid's ceiling; the launch's report has the
    part-correspondence table."""
    from diml import names

    c, _, parents, children = _runs(tiny_grid)
    for run in children:
        m = run.data.metrics
        for prefix in ("init/test", "best/test"):
            for method in names.INTERP_REPORTED:
                for metric in ("cell_acc", "PCK@0.1"):
                    value = m[names.interp_key(prefix, names.interp_name(method, metric))]
                    assert 0.0 <= value <= 100.0, (prefix, method, metric, value)
            assert m[names.interp_key(prefix, names.NUM_KEYPOINTS)] > 0
            assert m[names.interp_key(prefix, names.interp_name(names.GRID_CEILING, "cell_acc"))] == 100.0
        assert m["best/test/interp_seconds"] > 0
    local = c.download_artifacts(parents[0].info.run_id, "report/report.md", str(tmp_path))
    text = open(local).read()
    assert "### Part correspondence" in text and "flow argmax" in text and "identity" in text
    section = text.split("### Part correspondence", 1)[1]
    assert len([line for line in section.splitlines() if line.startswith("| synthetic")]) == 2
