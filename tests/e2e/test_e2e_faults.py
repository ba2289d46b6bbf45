"""Fault tolerance on the shared local Ray runtime: a killed worker, a killed launcher, a NaN trial, unreadable
images, a tracking server that goes away mid-launch.

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

from e2e_support import (ROOT, TINY_SPEC, descendants, free_port, start_mlflow_server, stop_process_group, wait_for,
                          write_spec)

from pipeline.trial.train_state import TRAIN_SNAPSHOT

pytestmark = pytest.mark.e2e


def _spec(name, **changes):
    spec = {k: v for k, v in TINY_SPEC.items() if k != "grid"}
    spec = {**spec, "name": name,
            "evaluation": {"depths": [3], "batch_size": 16, "explanations": 0, "before_training": False}}
    spec.update(changes)
    return spec


def _launch(ray_session, folder: pathlib.Path, spec: dict, *extra: str, uri: str | None = None) -> subprocess.Popen:
    path = write_spec(folder, spec, f"{spec['name']}.yaml")
    address = ray_session.get_runtime_context().gcs_address
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0.5", "PYTHONPATH": str(ROOT)}
    uri = uri or f"sqlite:///{folder / 'mlflow.db'}"
    argv = [sys.executable, "-m", "pipeline.launch", str(path), "--address", address, "--set", f"tracking.uri={uri}",
            "--set", f"tracking.artifact_location={folder / 'art'}",
            "--set", f"launch.storage_path={folder / 'ray'}", *extra]
    return subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _children(folder: pathlib.Path, name: str, uri: str | None = None):
    import mlflow

    c = mlflow.MlflowClient(tracking_uri=uri or f"sqlite:///{folder / 'mlflow.db'}")
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
    # the cause as Ray gives it, on the trial's run: which rank, which process, how it died
    assert run.data.tags["worker_restarts"] == "1"
    reason = run.data.tags["worker_restart_reasons"]
    assert f"worker process {workers[-1]} died" in reason and "rank " in reason, reason
    assert "diml: restarting the workers from their last checkpoint (1)" in out


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
    # Adam at lr 10 with frozen BatchNorm statistics diverges to NaN in its second step; retries would not help
    spec = _spec("nan", grid={"optimizer.lr": [1e-3, 10.0]}, resources={**TINY_SPEC["resources"], "max_failures": 1},
                 model={**TINY_SPEC["model"], "frozen_bn": True},
                 launch={**TINY_SPEC["launch"], "trial_max_failures": 1})
    proc = _launch(ray_session, tmp_path, spec)
    out = _finish(proc)
    assert proc.returncode == 1, out
    c, runs = _children(tmp_path, "nan")
    status = {r.data.params["optimizer.lr"]: r for r in runs}
    assert status["0.001"].info.status == "FINISHED"
    failed = status["10.0"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["failure"].startswith("NonFiniteLossError: training loss is nan in epoch 0: lower")
    assert failed.data.tags["failure.epoch"] == "0" and failed.data.tags["failure.retryable"] == "false"
    assert failed.data.tags["attempts"] == "1"  # Tune's retry (trial_max_failures: 1) did not train it again
    assert f"diml: trial {failed.data.tags['mlflow.runName']} is not run again" in out
    summary = out[out.index("1 of 2 trial(s) failed:"):]
    assert f"- {failed.data.tags['mlflow.runName']}: NonFiniteLossError: training loss is nan in epoch 0" in summary


def _cub(root: pathlib.Path, per_class: int, truncated: tuple[str, ...] = ()) -> pathlib.Path:
    """A tiny CUB-200-2011 archive (diml.data.formats: images.txt, image_class_labels.txt, classes.txt, images/):
    training classes 1-4, test classes 101-104, ``per_class`` 32 px JPEGs each; the images named in ``truncated``
    (``"002.bird/1.jpg"``) are cut in half, as a broken download leaves them."""
    import numpy as np
    from PIL import Image

    base = root / "CUB_200_2011"
    rng = np.random.default_rng(0)
    images, labels, classes = [], [], []
    for class_id in (1, 2, 3, 4, 101, 102, 103, 104):
        folder = f"{class_id:03d}.bird"
        classes.append(f"{class_id} {folder}")
        (base / "images" / folder).mkdir(parents=True)
        for j in range(per_class):
            relpath = f"{folder}/{j}.jpg"
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(base / "images" / relpath)
            images.append(f"{len(images) + 1} {relpath}")
            labels.append(f"{len(labels) + 1} {class_id}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels), ("classes.txt", classes)):
        (base / name).write_text("\n".join(lines) + "\n")
    for relpath in truncated:
        data = (base / "images" / relpath).read_bytes()
        (base / "images" / relpath).write_bytes(data[: len(data) // 2])
    return base / "images"


def test_unreadable_images_fail_their_trial_alone_or_are_skipped(ray_session, tmp_path):
    """One launch, two trials: a CUB archive with a truncated training image (fails at its first batch: every
    training image is in it; no retry), and the same fault with skip_bad_images (finishes, unaffected)."""
    bad = _cub(tmp_path / "bad", per_class=2, truncated=("002.bird/1.jpg",))
    skip = _cub(tmp_path / "skip", per_class=3, truncated=("002.bird/1.jpg", "103.bird/0.jpg"))
    data = {"dataset": "cub200", "image_size": 32}
    spec = _spec("badimages", resources={"workers_per_trial": 1, "cpus_per_worker": 1, "max_failures": 1},
                 launch={"max_concurrent_trials": 2, "trial_max_failures": 1},
                 tracking={"log_checkpoint": False},  # no model export: faster
                 grid={"data": [{**data, "root": str(bad.parent.parent)},
                                {**data, "root": str(skip.parent.parent), "skip_bad_images": True}]})
    proc = _launch(ray_session, tmp_path, spec)
    out = _finish(proc)
    assert proc.returncode == 1, out
    c, runs = _children(tmp_path, "badimages")
    by_root = {r.data.params["data.root"]: r for r in runs}
    failed = by_root[str(bad.parent.parent)]
    message = f"BadImageError: cannot read image '{bad / '002.bird/1.jpg'}' ("  # then PIL's own words
    assert failed.info.status == "FAILED" and failed.data.tags["failure"].startswith(message)
    assert failed.data.tags["failure"].endswith("replace or delete the file, or set skip_bad_images=True")
    assert failed.data.tags["failure.retryable"] == "false"
    # neither Ray Train (max_failures: 1) nor Tune (trial_max_failures: 1) ran it again
    assert "worker_restarts" not in failed.data.tags and failed.data.tags["attempts"] == "1"
    assert "diml: not restarting the workers, a retry cannot fix this: BadImageError" in out  # Ray Train
    assert f"diml: trial {failed.data.tags['mlflow.runName']} is not run again" in out  # Tune's retry
    summary = out[out.index("1 of 2 trial(s) failed:"):]
    assert f"- {failed.data.tags['mlflow.runName']}: {message}" in summary
    assert "RayTaskError" not in summary and "WorkerGroupError" not in summary and "run a grid first" not in out
    skipped = by_root[str(skip.parent.parent)]
    assert skipped.info.status == "FINISHED" and skipped.data.metrics["data/skipped_images"] == 2
    assert skipped.data.tags["skipped_images"] == "002.bird/1.jpg, 103.bird/0.jpg"
    assert "best/test/global/R_at_1" in skipped.data.metrics


def test_tracking_server_down_mid_launch_then_resume_logs_what_is_missing_once(ray_session, tmp_path):
    """The MLflow server stops while a trial trains: the trial trains on and keeps its checkpoints, the launch says
    what is not logged and how to resume; with the server back, --resume logs it, once."""
    port = free_port()
    backend = f"sqlite:///{tmp_path / 'served.db'}"
    server, url = start_mlflow_server(tmp_path, backend, port)
    spec = _spec("offline", epochs=6, resources={"workers_per_trial": 1, "cpus_per_worker": 1})
    try:
        proc = _launch(ray_session, tmp_path, spec, uri=url)

        def first_epoch_logged():
            c, runs = _children(tmp_path, "offline", backend)
            return runs and c.get_metric_history(runs[0].info.run_id, "train/loss")

        wait_for(first_epoch_logged, 300, "the first epoch in MLflow", proc)
    finally:
        stop_process_group(server, signal.SIGKILL)
    out = _finish(proc)
    assert proc.returncode == 1, out
    assert "1 of 1 trial(s) trained to the end but are not fully logged in MLflow:" in out, out
    assert "not logged: " in out and "the final metrics, the final model, the final artifacts" in out
    assert "run the same command with --resume" in out and "Traceback" not in out[out.index("trial(s) trained"):]
    assert list((tmp_path / "ray").rglob("checkpoint_*/state.pt"))
    c, runs = _children(tmp_path, "offline", backend)  # the database as the server left it
    assert len(runs) == 1 and runs[0].info.status == "RUNNING"
    logged_before = [m.step for m in c.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert logged_before and logged_before != list(range(6))
    server, url = start_mlflow_server(tmp_path, backend, port)
    try:
        resumed = _launch(ray_session, tmp_path, spec, "--resume", uri=url)
        out = _finish(resumed)
    finally:
        stop_process_group(server)
    assert resumed.returncode == 0, out
    c, runs = _children(tmp_path, "offline", backend)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", [r.info.run_name for r in runs]
    run_id = runs[0].info.run_id
    assert [m.step for m in c.get_metric_history(run_id, "train/loss")] == list(range(6))  # each epoch once
    assert len(c.get_metric_history(run_id, "best/test/global/R_at_1")) == 1
    assert runs[0].data.tags["final_logged"] == "metrics,model,artifacts"
    assert [f.path for f in c.list_artifacts(run_id, "checkpoint")] == ["checkpoint/best_model.pt"]
    parents = [r for r in c.search_runs([runs[0].info.experiment_id]) if r.data.tags.get("diml.role") == "launch"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
