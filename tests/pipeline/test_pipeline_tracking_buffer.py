"""MLflow logging that never stops a trial: calls kept while the store cannot be used, logged once when it can."""

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from pipeline import tracking, tracking_buffer
from pipeline.tracking_buffer import BufferedRun


@pytest.fixture
def run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = tracking.ensure_experiment(uri, "buffer", str(tmp_path / "art"))
    return uri, tracking.client(uri).create_run(experiment).info.run_id


def _history(uri, run_id, key):
    return [(m.step, m.value) for m in tracking.client(uri).get_metric_history(run_id, key)]


def _store_down(monkeypatch, down: dict):
    """``tracking`` calls fail (as MLflow's client does when the server is gone) while ``down["now"]``."""
    real_metrics, real_tags = tracking.log_metrics, tracking.set_tags

    def gate(real):
        def call(*args, **kwargs):
            if down["now"]:
                raise MlflowException("API request to http://h:5000/api/2.0/mlflow/runs/log-batch failed with "
                                      "exception ConnectionError: Connection refused")
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(tracking, "log_metrics", gate(real_metrics))
    monkeypatch.setattr(tracking, "set_tags", gate(real_tags))


def test_calls_are_kept_while_the_store_is_down_and_logged_once_when_it_answers(run, monkeypatch, capsys, tmp_path):
    uri, run_id = run
    down = {"now": False}
    _store_down(monkeypatch, down)
    buffered = BufferedRun(uri, run_id)
    buffered.log_metrics({"train/loss": 1.0}, 0)
    down["now"] = True
    buffered.log_metrics({"train/loss": 0.5}, 1)  # fails: kept, with the time it was measured
    buffered.set_tags({"hostname": "h"})
    buffered.log_metrics({"train/loss": 0.25}, 2)  # not even tried: the store is asked again only every 10 s
    assert [c.get("step") for c in buffered.pending] == [1, None, 2] and buffered.error
    assert "cannot be used" in capsys.readouterr().err and not buffered.flush()  # too soon to ask again
    assert not buffered.call("an artifact", lambda: None)  # calls that cannot be kept say they were not made
    tracking_buffer.write_pending(str(tmp_path), buffered.pending)  # what a checkpoint keeps
    down["now"] = False
    assert buffered.flush(wait=True) and buffered.pending == [] and buffered.error is None
    assert _history(uri, run_id, "train/loss") == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert tracking.client(uri).get_run(run_id).data.tags["hostname"] == "h"
    # a trial restarted from that checkpoint logs the kept calls again: nothing is duplicated
    again = BufferedRun(uri, run_id, tracking_buffer.read_pending(str(tmp_path)))
    again.log_metrics({"train/loss": 0.125}, 3)
    assert _history(uri, run_id, "train/loss") == [(0, 1.0), (1, 0.5), (2, 0.25), (3, 0.125)]
    assert tracking_buffer.read_pending(str(tmp_path / "none")) == []


def test_a_call_the_store_refuses_is_dropped_not_kept(run, monkeypatch, capsys):
    uri, run_id = run
    buffered = BufferedRun(uri, run_id)

    def refuse(*args, **kwargs):
        raise MlflowException("Invalid value for metric", error_code=INVALID_PARAMETER_VALUE)

    monkeypatch.setattr(tracking, "log_metrics", refuse)
    buffered.log_metrics({"train/loss": 1.0}, 0)
    assert buffered.pending == [] and buffered.error is None and buffered.refused == 1
    assert "refused" in capsys.readouterr().err


def test_an_unreachable_server_is_asked_cheaply_and_trials_retry_briefly(monkeypatch):
    import os

    refused = MlflowException(
        "API request to http://h:5000/api/2.0/mlflow/runs/log-batch failed with exception HTTPConnectionPool("
        "host='h', port=5000): Max retries exceeded with url: /api/2.0/mlflow/runs/log-batch (Caused by "
        "NewConnectionError(\"HTTPConnection(host='h', port=5000): Failed to establish a new connection: [Errno 111] "
        "Connection refused\"))")
    assert tracking_buffer.short_error(refused) == ("API request to http://h:5000/api/2.0/mlflow/runs/log-batch "
                                                    "failed: [Errno 111] Connection refused")

    assert not tracking_buffer.answers("http://127.0.0.1:9", timeout=1)
    assert tracking_buffer.answers("sqlite:////nowhere/mlflow.db")  # no cheaper test than using it
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "")  # restored after the test, as it was
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "5")
    tracking_buffer.bound_http_retries()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "5"  # the user's setting wins
