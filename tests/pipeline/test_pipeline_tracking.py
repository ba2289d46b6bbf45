"""Tracking helpers: URI resolution, flattening, metric names, reachability errors, runs in a real local store."""

import hashlib
import json
import math

import numpy as np
import pytest

from pipeline import tracking


def test_resolve_tracking_uri_is_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(None, cwd=tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.resolve_tracking_uri("sqlite:///x/m.db", cwd=tmp_path) == f"sqlite:///{tmp_path}/x/m.db"
    assert tracking.resolve_tracking_uri("sqlite:////abs/m.db", cwd=tmp_path) == "sqlite:////abs/m.db"
    assert tracking.resolve_tracking_uri("http://h:5000", cwd=tmp_path) == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    assert tracking.resolve_tracking_uri("sqlite:///ignored.db", cwd=tmp_path) == "http://server:5000"
    assert tracking.resolve_tracking_uri("sqlite:///flag.db", cwd=tmp_path, explicit=True) == \
        f"sqlite:///{tmp_path}/flag.db"
    assert tracking.resolve_tracking_uri(None, cwd=tmp_path, explicit=True) == "http://server:5000"


def test_flatten_gives_stable_dotted_names():
    tree = {"loss": {"name": "margin", "params": {"beta": 1.2}, "ot": {"eps": 0.05}}, "seed": 0,
            "evaluation": {"depths": [10, 100]}, "empty": {}}
    assert tracking.flatten(tree) == {"empty": "{}", "evaluation.depths": "[10, 100]", "loss.name": "margin",
                                      "loss.ot.eps": 0.05, "loss.params.beta": 1.2, "seed": 0}


def test_metric_names_are_mlflow_safe():
    from mlflow.utils.validation import _validate_metric_name

    names = tracking.evaluation_metrics("test", {"global": {"R@1": 50.0, "MAP@R": 1.0},
                                                 "diml@100": {"R@2": 2.0, "RP": 3.0}})
    assert names == {"test/global/R_at_1": 50.0, "test/global/MAP_at_R": 1.0, "test/diml_K100/R_at_2": 2.0,
                     "test/diml_K100/RP": 3.0}
    for name in names:
        _validate_metric_name(name)


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(tracking.TrackingError, match="cannot be reached.*start it"):
        tracking.check_reachable("http://127.0.0.1:9", timeout=2)
    with pytest.raises(tracking.TrackingError, match="folder /nonexistent/folder does not exist: create it"):
        tracking.check_reachable("sqlite:////nonexistent/folder/mlflow.db")


def test_a_store_or_artifact_folder_that_cannot_be_written_is_refused_by_a_probe(tmp_path):
    # /proc accepts no new file even from root, for whom every permission check passes
    with pytest.raises(tracking.TrackingError, match=r"sqlite:////proc/mlflow.db: cannot write to /proc \("):
        tracking.check_reachable("sqlite:////proc/mlflow.db")
    with pytest.raises(tracking.TrackingError, match="cannot write to /proc/art .*set tracking.artifact_location"):
        tracking.check_artifact_location("/proc/art")
    (tmp_path / "file").write_text("")
    with pytest.raises(tracking.TrackingError, match="a file is in the way"):
        tracking.check_artifact_location(f"file://{tmp_path}/file/art")
    tracking.check_reachable(f"sqlite:///{tmp_path}/mlflow.db")
    tracking.check_artifact_location(str(tmp_path / "new" / "art"))
    tracking.check_artifact_location("s3://bucket/art")  # no credentials to try an object store with
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probes leave nothing behind


def test_parent_and_child_runs_in_a_local_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking.check_reachable(uri)
    exp = tracking.ensure_experiment(uri, "unit", str(tmp_path / "art"))
    assert tracking.ensure_experiment(uri, "unit") == exp
    parent = tracking.start_parent_run(uri, exp, "launch-1", "unit", {"name": "unit", "seed": 0}, resume=False)
    assert tracking.start_parent_run(uri, exp, "launch-1", "unit", {}, resume=True) == parent
    child = tracking.ensure_child_run(uri, exp, parent, "trial_0001", "a", {"seed": 0, "loss": {"name": "m"}},
                                      {"loss": "m"}).info.run_id
    tracking.end_run(uri, child, "KILLED")
    again = tracking.ensure_child_run(uri, exp, parent, "trial_0001", "a", {}, {})  # restart: same run, reopened
    assert again.info.run_id == child and tracking.client(uri).get_run(child).info.status == "RUNNING"
    other = tracking.ensure_child_run(uri, exp, parent, "trial_0002", "b", {"seed": 1}, {}).info.run_id
    assert other != child
    tracking.log_metrics(uri, child, {"test/global/R_at_1": 12.5, "train/loss": math.pi}, step=3)
    run = tracking.client(uri).get_run(child)
    assert run.data.metrics["test/global/R_at_1"] == 12.5
    assert run.data.params["loss.name"] == "m"
    assert run.data.tags["mlflow.parentRunId"] == parent
    parent_run = tracking.client(uri).get_run(parent)
    assert parent_run.data.tags["version.torch"]
    assert parent_run.data.tags["mlflow.source.name"] and parent_run.data.tags["mlflow.user"]  # MLflow's providers
    assert (tmp_path / "art").is_dir()
    _more_than_one_batch(uri, other)
    _experiment_kind_and_runs_view(uri, exp)
    _dataset_inputs(uri, other)


def _more_than_one_batch(uri, run_id):
    """250 params and 2500 metrics in one call each: MlflowClient.log_batch splits them (100 / 1000 per request)."""
    tracking.log_params(uri, run_id, {f"p{i:03d}": i for i in range(250)})
    tracking.log_metrics(uri, run_id, {f"m{i:04d}": float(i) for i in range(2500)}, step=1)
    data = tracking.client(uri).get_run(run_id).data
    assert [data.params[f"p{i:03d}"] for i in (0, 99, 100, 249)] == ["0", "99", "100", "249"]
    assert sum(k.startswith("m") for k in data.metrics) == 2500 and data.metrics["m2499"] == 2499.0


def _experiment_kind_and_runs_view(uri, exp):
    c = tracking.client(uri)
    assert c.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    older = c.create_experiment("made-elsewhere")  # an experiment created without the kind gets it
    assert tracking.ensure_experiment(uri, "made-elsewhere") == older
    assert c.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    tracking.ensure_runs_view(uri, exp, 100)
    view = json.loads(c.get_experiment(exp).tags["mlflow.sharedViewState.diml-trials"])
    assert view["orderByKey"] == "metrics.`best/test/global/R_at_1`" and view["orderByAsc"] is False
    assert view["selectedColumns"][3:6] == ["metrics.`best/test/diml_K100/R_at_1`", "metrics.`best/test/diml_K100/RP`",
                                            "metrics.`best/test/diml_K100/MAP_at_R`"]
    assert tracking.ui_url("http://h:5000/", exp) == \
        f"http://h:5000/#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey=diml-trials"
    assert f"#/experiments/{exp}/runs?" in tracking.ui_hint(uri, "unit") and "mlflow ui --backend-store-uri" in \
        tracking.ui_hint(uri, "unit")


class _Split:
    def __init__(self, ids, labels):
        self.ids, self.labels, self.num_classes = ids, np.asarray(labels), len(set(labels))

    def __len__(self):
        return len(self.ids)

    def image_id(self, index):
        return self.ids[index]


def _dataset_inputs(uri, run_id):
    train = _Split(["a/1.jpg", "a/2.jpg", "b/1.jpg"], [0, 0, 1])
    test = _Split(["c/1.jpg", "c/2.jpg"], [0, 0])
    tracking.log_datasets(uri, run_id, "cub200", "/data/CUB_200_2011", {"train": train, "val": None, "test": test},
                          {"train": "training", "test": "testing"})
    inputs = {d.dataset.name: d for d in tracking.client(uri).get_run(run_id).inputs.dataset_inputs}
    assert sorted(inputs) == ["cub200/test", "cub200/train"]
    train_in = inputs["cub200/train"]
    assert json.loads(train_in.dataset.profile) == {"num_images": 3, "num_classes": 2}
    assert json.loads(train_in.dataset.source) == {"uri": "/data/CUB_200_2011"}
    assert {t.key: t.value for t in train_in.tags}["mlflow.data.context"] == "training"
    expected = hashlib.sha256(b"a/1.jpg\t0\na/2.jpg\t0\nb/1.jpg\t1\n").hexdigest()[:16]
    assert train_in.dataset.digest == expected != inputs["cub200/test"].dataset.digest
