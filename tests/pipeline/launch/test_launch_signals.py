"""The launcher's stop signals (pipeline.launch.tune_run._StopSignals) without Ray: a stand-in for Tune's SIGINT
handler (it records the stop and restores the handler it found, as Ray 2.60's ``_setup_signal_catching``)."""

import os
import signal

import pytest
from e2e_support import TINY_SPEC, write_spec

from pipeline import tracking
from pipeline.launch import tune_run
from pipeline.launch.study import build_study, load_spec_file
from pipeline.launch.tune_run import _StopSignals


def _tune_like_handler(stops: list):
    found = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        stops.append(signum)
        signal.signal(signal.SIGINT, found)

    signal.signal(signal.SIGINT, handler)


@pytest.mark.parametrize("sent, expected", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGTERM)])
def test_a_stop_signal_reaches_tunes_handler_and_is_reported(sent, expected):
    before_int, before_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stops = []
    with _StopSignals() as stop:
        _tune_like_handler(stops)  # fit() installs Tune's handler
        os.kill(os.getpid(), sent)
    assert stops == [signal.SIGINT]  # a SIGTERM is handed to Tune's SIGINT handler: the same graceful stop
    assert stop.fired and stop.signum == expected
    assert signal.getsignal(signal.SIGINT) is before_int and signal.getsignal(signal.SIGTERM) is before_term


def test_no_signal_reports_nothing_and_a_second_sigterm_stops_at_once():
    with _StopSignals() as stop:
        _tune_like_handler([])  # a normal end: Tune's handler stays installed
    assert not stop.fired and stop.signum == 0
    with pytest.raises(KeyboardInterrupt):
        with _StopSignals():
            stops = []
            _tune_like_handler(stops)
            os.kill(os.getpid(), signal.SIGTERM)  # the first: Tune stops gracefully
            assert stops == [signal.SIGINT]
            os.kill(os.getpid(), signal.SIGTERM)  # the second: as a second Ctrl-C


def test_a_sigterm_outside_fit_exits_143_with_the_finally_blocks_run():
    before = signal.getsignal(signal.SIGTERM)
    ran = []
    with pytest.raises(SystemExit) as exc:
        with tune_run._SigtermExits():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            finally:
                ran.append("finally")
    assert exc.value.code == 143 and ran == ["finally"]
    assert signal.getsignal(signal.SIGTERM) is before


def _tiny_study(tmp_path):
    """A real MLflow store (sqlite) and a tiny study tracked in it."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = {**TINY_SPEC, "launch": {**TINY_SPEC["launch"], "storage_path": str(tmp_path / "ray_results")},
            "tracking": {"uri": uri, "experiment": "stopped"}}
    return uri, build_study(load_spec_file(write_spec(tmp_path, spec)), source="spec.yaml")


def _run(study, uri, tmp_path, launch):
    return tune_run.run_study(study, uri=uri, launch=launch, storage=str(tmp_path / "ray_results"), resume=False,
                              address=None, num_cpus=None)


def test_a_launch_stopped_before_or_after_fit_leaves_no_run_running(tmp_path, monkeypatch):
    """A signal while Ray starts or results are collected (here: SystemExit from _run_trials, after one trial run
    was opened): the launch run and the unfinished trial run end KILLED, and the exit goes on."""
    uri, study = _tiny_study(tmp_path)

    def stopped_while_running(study, info, **kwargs):
        tracking.ensure_child_run(uri, info.experiment_id, info.parent_run_id, "trial_0000", "a", {"seed": 0}, {})
        raise SystemExit(143)

    monkeypatch.setattr(tune_run, "_run_trials", stopped_while_running)
    with pytest.raises(SystemExit):
        _run(study, uri, tmp_path, "stopped-1")
    experiment = tracking.ensure_experiment(uri, "stopped")
    runs = tracking.find_runs(uri, experiment, "")
    assert sorted(r.info.status for r in runs) == ["KILLED", "KILLED"] and len(runs) == 2


def test_a_stop_outside_fit_keeps_a_trials_own_failure(tmp_path, monkeypatch):
    uri, study = _tiny_study(tmp_path)

    def one_failed_then_stopped(study, info, **kwargs):
        failed = tracking.ensure_child_run(uri, info.experiment_id, info.parent_run_id, "trial_0000", "a",
                                           {"seed": 0}, {}).info.run_id
        tracking.end_run(uri, failed, "FAILED")
        tracking.ensure_child_run(uri, info.experiment_id, info.parent_run_id, "trial_0001", "b", {"seed": 1}, {})
        raise SystemExit(143)

    monkeypatch.setattr(tune_run, "_run_trials", one_failed_then_stopped)
    with pytest.raises(SystemExit):
        _run(study, uri, tmp_path, "stopped-2")
    runs = tracking.find_runs(uri, tracking.ensure_experiment(uri, "stopped"), "")
    by_name = {r.data.tags.get("mlflow.runName", r.info.run_name): r.info.status for r in runs}
    assert sorted(by_name.values()) == ["FAILED", "KILLED", "KILLED"], by_name
