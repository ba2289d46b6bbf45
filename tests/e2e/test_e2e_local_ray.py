"""Local launches own their Ray instance: a SIGKILLed launcher leaves no process behind and the next launch on the
machine finishes cleanly; two local launches at once each run on their own instance, without errors.

The launchers are subprocesses without ``--address`` (each starts its own local Ray); every test stops what it
started by pid or by its own instance's temp dir, never another instance.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from e2e_support import ROOT, TEST_ENV, TINY_SPEC, descendants, wait_for, write_spec
from pipeline.launch import local_ray

pytestmark = pytest.mark.e2e
# What Ray Train's PlacementGroupCleaner printed when it resolved the cluster by itself
# (pipeline.trial.ray_workarounds).
# (An overloaded machine may still print Ray's own "Failed to send resource request ... safe to ignore" traceback.)
CLEAN_OUTPUT_FORBIDS = ("ConnectionError", "Found multiple active Ray instances", "PlacementGroupCleaner",
                        "Failed to query Ray Train Controller actor state")


def _spec(name, epochs=1):
    spec = {k: v for k, v in TINY_SPEC.items() if k not in ("grid", "launch")}
    return {**spec, "name": name, "epochs": epochs, "resources": {"workers_per_trial": 1, "cpus_per_worker": 1},
            "batch": {"size": 4, "images_per_class": 2, "batches_per_epoch": 2},
            "evaluation": {"depths": [3], "batch_size": 16, "explanations": 0, "before_training": False}}


def _launch(folder, spec) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    path = write_spec(folder, spec, f"{spec['name']}.yaml")
    env = {**os.environ, **TEST_ENV, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    argv = [sys.executable, "-m", "pipeline.launch", str(path), "--num-cpus", "3",
            "--set", f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
            "--set", f"tracking.artifact_location={folder / 'art'}", "--set", f"launch.storage_path={folder / 'ray'}"]
    return subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _temp_dir_of(launcher: subprocess.Popen) -> str | None:
    for name in os.listdir("/tmp"):
        owner = os.path.join("/tmp", name, local_ray.OWNER_FILE)
        if name.startswith(local_ray.TEMP_PREFIX) and os.path.isfile(owner):
            try:
                with open(owner) as f:
                    if json.load(f)["launcher"][0] == launcher.pid:
                        return os.path.join("/tmp", name)
            except (OSError, ValueError):
                continue
    return None



def _train_worker(temp_dir: str) -> bool:
    for pid in local_ray.instance_pids(temp_dir):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"RayTrainWorker" in f.read():
                    return True
        except OSError:
            continue
    return False



def _finish(proc, timeout=900) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return out


def _runs(folder, experiment):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def _assert_clean(proc, out, folder, name):
    assert proc.returncode == 0, out
    for phrase in CLEAN_OUTPUT_FORBIDS:
        assert phrase not in out, out
    runs = _runs(folder, name)
    roles = sorted(r.data.tags.get("diml.role") for r in runs)
    assert roles == ["launch", "trial"], roles
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_sigkilled_local_launch_leaves_nothing_and_the_next_launch_finishes(tmp_path):
    first = _launch(tmp_path / "first", _spec("killed", epochs=30))
    temp_dir, second, before = None, None, set()
    try:
        temp_dir = wait_for(lambda: _temp_dir_of(first), 300, "the first launch's Ray temp dir", first)
        wait_for(lambda: _train_worker(temp_dir), 600, "the first launch's Train worker", first)
        before = set(local_ray.instance_pids(temp_dir)) | descendants(first.pid)
        started = {pid: local_ray._start_time(pid) for pid in before}
        os.killpg(first.pid, signal.SIGKILL)  # what a lost SSH session or `kill -9` does to the launcher
        first.wait()
        second = _launch(tmp_path / "second", _spec("after"))  # at once, while the first one is being cleared

        def first_is_gone():
            left = [pid for pid, t in started.items() if t is not None and local_ray._start_time(pid) == t]
            return not left and not os.path.exists(temp_dir)

        wait_for(first_is_gone, 120, "every process of the killed launch to end")
        assert len(started) >= 8  # gcs, raylet, agents, Tune driver, Train controller and worker, cleaner, ...
        out = _finish(second)
        _assert_clean(second, out, tmp_path / "second", "after")
        assert _temp_dir_of(second) is None  # the second launch removed its own instance too
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if temp_dir and os.path.exists(temp_dir):
            local_ray.stop_instance(temp_dir)


@pytest.mark.parametrize("how", ["ctrl_c", "sigterm"])
def test_a_stop_signal_ends_the_launch_and_leaves_no_run_running(tmp_path, how):
    """A Ctrl-C in the launcher's terminal (SIGINT to its process group), or a SIGTERM to the launcher alone (as
    ``kill``, ``timeout`` or a scheduler sends), mid-trial: Tune stops the trials, the launcher marks their MLflow
    runs and its own KILLED (the drivers die before they can end their runs), says how to resume, and exits 130 or
    143; the launch's Ray instance goes away."""
    proc = _launch(tmp_path / "interrupted", _spec("interrupted", epochs=1000))  # still training at the signal
    temp_dir = None
    try:
        temp_dir = wait_for(lambda: _temp_dir_of(proc), 300, "the launch's Ray temp dir", proc)

        def training():  # the trial's MLflow run holds a finished epoch
            return any(r.data.tags.get("diml.role") == "trial" and "train/loss" in r.data.metrics
                       for r in _runs(tmp_path / "interrupted", "interrupted"))

        wait_for(training, 900, "the trial's first epoch in MLflow", proc)
        if how == "ctrl_c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        out = _finish(proc, timeout=300)
        assert proc.returncode == {"ctrl_c": 130, "sigterm": 143}[how], out
        by = {"ctrl_c": "by SIGINT", "sigterm": "by SIGTERM"}[how]
        assert f"interrupted {by}: 1 trial(s) stopped before they finished" in out and "--resume" in out, out
        runs = {r.data.tags.get("diml.role"): r.info.status for r in _runs(tmp_path / "interrupted", "interrupted")}
        assert runs == {"launch": "KILLED", "trial": "KILLED"}, runs
        wait_for(lambda: not os.path.exists(temp_dir), 120, "the launch's Ray instance to go away")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if temp_dir and os.path.exists(temp_dir):
            local_ray.stop_instance(temp_dir)


def test_two_local_launches_at_once_each_run_on_their_own_instance(tmp_path):
    procs = {name: _launch(tmp_path / name, _spec(name)) for name in ("left", "right")}
    try:
        dirs = {name: wait_for(lambda p=p: _temp_dir_of(p), 300, f"{name}'s temp dir", p)
                for name, p in procs.items()}
        assert dirs["left"] != dirs["right"]
        outputs = {name: _finish(p) for name, p in procs.items()}
        for name, proc in procs.items():
            _assert_clean(proc, outputs[name], tmp_path / name, name)
            assert not os.path.exists(dirs[name])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def test_the_cleaner_reads_actor_liveness_from_its_own_gcs(ray_session):
    """The patched liveness check of Ray Train's PlacementGroupCleaner (pipeline.trial.ray_workarounds) asks the GCS
    of the current connection: alive, then DEAD after a kill, and an unknown id counts as dead."""
    from pipeline.trial.ray_workarounds import actor_alive_in_gcs

    @ray_session.remote(num_cpus=0)
    class Probe:
        def ping(self):
            return 1

    probe = Probe.remote()
    ray_session.get(probe.ping.remote())
    actor_id = probe._actor_id.hex()
    assert actor_alive_in_gcs(actor_id) is True
    ray_session.kill(probe)
    wait_for(lambda: not actor_alive_in_gcs(actor_id), 60, "the killed actor to be DEAD")
    assert actor_alive_in_gcs("ff" * 16) is False
