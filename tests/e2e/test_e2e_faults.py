"""Fault tolerance on the shared local Ray runtime: a killed worker, a killed launcher, a NaN trial.

Launchers run as subprocesses joined to the session's runtime (``--address``), so a test can kill exactly the
processes it means to: a Ray Train worker of its own trial, or its own launcher.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from e2e_support import ROOT, TINY_SPEC, descendants, wait_for, write_spec

from pipeline.trial.train_state import TRAIN_SNAPSHOT

pytestmark = pytest.mark.e2e


def _spec(name, **changes):
    spec = {k: v for k, v in TINY_SPEC.items() if k != "grid"}
    spec = {**spec, "name": name,
            "evaluation": {"depths": [3], "batch_size": 16, "explanations": 0, "before_training": False}}
    spec.update(changes)
    return spec


def _launch(ray_session, folder: pathlib.Path, spec: dict, *extra: str) -> subprocess.Popen:
    path = write_spec(folder, spec, f"{spec['name']}.yaml")
    address = ray_session.get_runtime_context().gcs_address
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0.5", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "pipeline.launch", str(path), "--address", address,
            "--set", f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
            "--set", f"tracking.artifact_location={folder / 'art'}",
            "--set", f"launch.storage_path={folder / 'ray'}", *extra]
    return subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _children(folder: pathlib.Path, name: str):
    import mlflow

    c = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return c, []
    return c, [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("diml.role") == "trial"]




def _train_workers_of_this_session() -> list[int]:
    import ray._private.worker as worker

    raylet = worker._global_node.all_processes["raylet"][0].process.pid
    pids = []
    for pid in descendants(raylet):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"RayTrainWorker" in f.read():
                    pids.append(pid)
        except OSError:
            continue
    return pids


def _finish(proc, timeout=400) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return out


def test_killed_worker_restarts_from_checkpoint_and_finishes(ray_session, tmp_path):
    # long enough that the workers are still training when the first checkpoint has registered
    proc = _launch(ray_session, tmp_path, _spec("killworker", epochs=8,
                                                batch={**TINY_SPEC["batch"], "batches_per_epoch": 4}))
    ckpts = lambda: list((tmp_path / "ray").rglob("checkpoint_*"))  # noqa: E731
    wait_for(ckpts, 240, "the first checkpoint", proc)
    time.sleep(1.5)  # the controller registers a reported checkpoint on its next poll (0.5 s here)
    workers = wait_for(_train_workers_of_this_session, 60, "the trial's Train workers", proc)
    os.kill(workers[-1], signal.SIGKILL)
    out = _finish(proc)
    assert proc.returncode == 0, out
    c, runs = _children(tmp_path, "killworker")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["restored_from_epoch"]) >= 1
    steps = {m.step for m in c.get_metric_history(run.info.run_id, "train/loss")}
    assert steps == set(range(8))
    assert "best/test/global/R_at_1" in run.data.metrics


def test_killed_launcher_resumes_without_duplicate_runs(ray_session, tmp_path):
    spec = _spec("resume", epochs=4, grid={"seed": [0, 1]},
                 launch={**TINY_SPEC["launch"], "max_concurrent_trials": 1})
    proc = _launch(ray_session, tmp_path, spec)

    def second_trial_has_an_epoch():
        c, runs = _children(tmp_path, "resume")
        done = [r for r in runs if r.info.status == "FINISHED"]
        started = [r for r in runs if r.info.status == "RUNNING"
                   and c.get_metric_history(r.info.run_id, "train/loss")]
        return len(done) == 1 and started and list((tmp_path / "ray").rglob("checkpoint_*"))

    wait_for(second_trial_has_an_epoch, 300, "one finished trial and one mid-way", proc)
    time.sleep(1.5)  # the second trial's first checkpoint registers; Tune saves its state every 0.5 s
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # what a kill during Tune's in-place state copy leaves (CI saw it once): an empty experiment state
    states = list((tmp_path / "ray").glob("resume-*/experiment_state-*.json"))
    assert len(states) == 1 and list(states[0].parent.glob(".diml-state/*/experiment_state-*.json"))
    states[0].write_bytes(b"")
    c, before = _children(tmp_path, "resume")
    finished_before = {r.info.run_id: len(c.get_metric_history(r.info.run_id, "train/loss"))
                       for r in before if r.info.status == "FINISHED"}
    # and what a kill while Ray Train registered a checkpoint leaves: the interrupted trial's Train snapshot cut off
    running = [r for r in before if r.info.status != "FINISHED"]
    assert len(running) == 1
    train_snapshot = tmp_path / "ray" / f"train-{running[0].data.tags['ray_trial_id']}" / TRAIN_SNAPSHOT
    train_snapshot.write_bytes(train_snapshot.read_bytes()[:25])
    resumed = _launch(ray_session, tmp_path, spec, "--resume")
    out = _finish(resumed)
    assert resumed.returncode == 0, out
    assert f"{states[0].name} was damaged" in out and "its last consistent snapshot (.diml-state/" in out
    assert "Failed to restore the run state" not in out
    c, after = _children(tmp_path, "resume")
    assert len(after) == 2, [r.info.run_name for r in after]
    assert {r.info.status for r in after} == {"FINISHED"}
    for run_id, n_losses in finished_before.items():  # the finished trial was not trained again
        assert len(c.get_metric_history(run_id, "train/loss")) == n_losses
    interrupted = [r for r in after if r.info.run_id not in finished_before][0]
    assert int(interrupted.data.tags["restored_from_epoch"]) >= 1  # continued from a checkpoint, not from scratch
    assert "was damaged" in interrupted.data.tags["train_state_recovered"]
    assert "continues from checkpoint_" in interrupted.data.tags["train_state_recovered"]
    steps = [m.step for m in c.get_metric_history(interrupted.info.run_id, "train/loss")]
    assert set(steps) == {0, 1, 2, 3}
    parents = [r for r in c.search_runs([after[0].info.experiment_id]) if r.data.tags.get("diml.role") == "launch"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "best/test/global/R_at_1" in out or "global R@1" in out


def test_nan_trial_fails_alone(ray_session, tmp_path):
    # Adam at lr 10 with frozen BatchNorm statistics diverges to NaN in its second step
    spec = _spec("nan", grid={"optimizer.lr": [1e-3, 10.0]}, resources={**TINY_SPEC["resources"], "max_failures": 0},
                 model={**TINY_SPEC["model"], "frozen_bn": True})
    proc = _launch(ray_session, tmp_path, spec)
    out = _finish(proc)
    assert proc.returncode == 1, out
    c, runs = _children(tmp_path, "nan")
    status = {r.data.params["optimizer.lr"]: r for r in runs}
    assert status["0.001"].info.status == "FINISHED"
    failed = status["10.0"]
    assert failed.info.status == "FAILED"
    assert "training loss is nan in epoch 0" in failed.data.tags["failure"]
    assert failed.data.tags["failure.epoch"] == "0"
    assert "failed trials:" in out
