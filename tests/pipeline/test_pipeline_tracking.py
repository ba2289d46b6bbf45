"""Tracking helpers: URI resolution, flattening, metric names, reachability errors, runs in a real local store."""

import math

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
    with pytest.raises(tracking.TrackingError, match="does not exist or is not writable"):
        tracking.check_reachable("sqlite:////nonexistent/folder/mlflow.db")


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
    assert (tmp_path / "art").is_dir()
