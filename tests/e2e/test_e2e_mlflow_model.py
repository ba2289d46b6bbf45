"""What MLflow holds for each trial of the tiny grid besides metrics: the best weights as an MLflow PyTorch model
that reproduces the logged test results, the dataset splits as dataset inputs, and system metrics."""

import json

import pytest
import yaml

pytestmark = pytest.mark.e2e


def _trials(tiny_grid):
    import mlflow

    c = mlflow.MlflowClient(tracking_uri=tiny_grid["uri"])
    experiment = c.get_experiment_by_name(tiny_grid["experiment"])
    runs = c.search_runs([experiment.experiment_id], filter_string="tags.`diml.role` = 'trial'")
    assert len(runs) == 2
    return c, experiment, runs


def test_logged_model_reproduces_the_logged_test_metrics(tiny_grid, tmp_path):
    """Load each trial's model by ``runs:/<id>/model``, embed the trial's test split with it and score it: the
    global and DIML@K R@1 and MAP@R equal what the trial logged (same weights, same images, same evaluation)."""
    import mlflow
    import torch

    from diml.evaluation import evaluate, extract_embeddings
    from pipeline.logged_model import LoggedEmbedder
    from pipeline.specs import RunSpec
    from pipeline.trial import build

    c, _, runs = _trials(tiny_grid)
    mlflow.set_tracking_uri(tiny_grid["uri"])
    for run in runs:
        run_id = run.info.run_id
        spec = RunSpec.model_validate(yaml.safe_load(open(c.download_artifacts(run_id, "spec.yaml", str(tmp_path)))))
        info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
        assert info.metadata["model_config"]["image_size"] == spec.data.image_size == 32
        exported = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
        model = LoggedEmbedder(exported, info.metadata["model_config"])
        test = build.build_splits(spec).test
        torch.manual_seed(0)
        embeddings = extract_embeddings(model, test, batch_size=7, device="cpu")  # 7: not the logged example's 2
        results = evaluate(embeddings.global_emb, embeddings.labels, embeddings.local_emb,
                           **build.evaluation_options(spec))
        logged = run.data.metrics
        for ranking, key in (("global", "global"), ("diml@5", "diml_K5"), ("diml@3", "diml_K3")):
            for metric, name in (("R@1", "R_at_1"), ("MAP@R", "MAP_at_R")):
                assert results[ranking][metric] == pytest.approx(logged[f"best/test/{key}/{name}"], abs=1e-3), \
                    (run.data.tags["similarity"], ranking, metric)


def test_dataset_inputs_and_system_metrics_on_each_trial(tiny_grid):
    c, _, runs = _trials(tiny_grid)
    for run in runs:
        full = c.get_run(run.info.run_id)
        inputs = {d.dataset.name: d for d in full.inputs.dataset_inputs}
        assert sorted(inputs) == ["synthetic/test", "synthetic/train"]  # no validation split in the tiny spec
        contexts = {name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for name, d in inputs.items()}
        assert contexts == {"synthetic/train": "training", "synthetic/test": "testing"}
        profiles = {name: json.loads(d.dataset.profile) for name, d in inputs.items()}
        # 8 classes x 6 images, split half and half by class
        assert profiles == {"synthetic/train": {"num_images": 24, "num_classes": 4},
                            "synthetic/test": {"num_images": 24, "num_classes": 4}}
        assert len({d.dataset.digest for d in inputs.values()}) == 2
        system = {k for k in full.data.metrics if k.startswith("system/")}
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system
        history = c.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        assert history and all(0.0 <= m.value <= 100.0 * 64 for m in history)
    digests = [{d.dataset.name: d.dataset.digest for d in c.get_run(r.info.run_id).inputs.dataset_inputs}
               for r in runs]
    assert digests[0] == digests[1]  # both trials saw the same images


def test_experiment_opens_as_model_training_with_the_trials_view(tiny_grid):
    from pipeline import tracking

    _, experiment, _ = _trials(tiny_grid)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    view = json.loads(experiment.tags[tracking.VIEW_TAG])
    assert view["orderByKey"] == "metrics.`best/test/global/R_at_1`" and view["orderByAsc"] is False
    assert view["selectedColumns"][:6] == [f"metrics.`best/test/{r}/{m}`" for r in ("global", "diml_K5")
                                           for m in ("R_at_1", "RP", "MAP_at_R")]
    assert view["selectedColumns"][6:8] == ["metrics.`best/test/interp/ot_argmax/cell_acc`",
                                            "metrics.`best/test/interp/ot_mean/PCK_at_0.1`"]  # the flow's parts
    assert view["selectedColumns"][8:] == [f"tags.`{t}`" for t in ("dataset", "loss", "backbone", "similarity",
                                                                    "seed")]
