"""The watchdog of a local launch's Ray instance, with stand-in processes (no Ray: fast): it stops exactly the
processes of its instance's temp dir -- by open file or command line -- when the launcher dies or ends, and never a
process of another instance."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from e2e_support import ROOT
from pipeline.launch import local_ray

SLEEPER = "import time; time.sleep(600)"

# A stand-in launcher: starts its watchdog, then two "Ray processes" in their own sessions (as Ray's agents and
# workers outlive a killed launcher, re-parented to init): one writing its output into the temp dir, one naming
# the temp dir on its command line (as raylet does).
FAKE_LAUNCHER = f"""
import os, subprocess, sys, time
from pipeline.launch import local_ray
owner = local_ray.start_watchdog()
log = open(os.path.join(owner.temp_dir, "worker.out"), "w")
by_file = subprocess.Popen([sys.executable, "-c", {SLEEPER!r}], stdout=log, start_new_session=True)
by_argv = subprocess.Popen([sys.executable, "-c", {SLEEPER!r}, "--temp_dir=" + owner.temp_dir],
                           start_new_session=True)
print(owner.temp_dir, owner.watchdog.pid, by_file.pid, by_argv.pid, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    return local_ray._start_time(pid) is not None


def _wait_gone(pids, timeout=30.0) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and any(_running(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _running(p)]


@pytest.fixture
def bystander(tmp_path):
    """Another instance's process: its own temp dir with the same prefix, a file open there, the dir on its
    command line; it must survive every sweep of ours."""
    other = tempfile.mkdtemp(prefix=local_ray.TEMP_PREFIX, dir="/tmp")
    with open(os.path.join(other, "worker.out"), "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", SLEEPER, "--temp_dir=" + other], stdout=log,
                                start_new_session=True)
    yield proc, other
    proc.kill()
    proc.wait()
    subprocess.run(["rm", "-rf", other], check=True)


def test_sigkilled_launcher_leaves_no_process_of_its_instance(bystander):
    other, other_dir = bystander
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launcher = subprocess.Popen([sys.executable, "-c", FAKE_LAUNCHER], stdout=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
    temp_dir, watchdog, *ray_like = launcher.stdout.readline().split()
    ray_like = [int(p) for p in ray_like]
    try:
        # seen from outside: the launcher (it holds worker.out open), its watchdog (the dir is its argument), both
        assert set(local_ray.instance_pids(temp_dir)) == {launcher.pid, int(watchdog), *ray_like}
    finally:
        os.killpg(launcher.pid, signal.SIGKILL)  # the launcher's whole group: the watchdog has its own session
        launcher.wait()
    assert _wait_gone(ray_like) == []
    assert _wait_gone([int(watchdog)]) == []
    assert not os.path.exists(temp_dir)
    assert other.poll() is None and os.path.isdir(other_dir)  # another instance is never touched


def test_normal_end_sweeps_quietly_and_removes_the_temp_dir(bystander):
    other, _ = bystander
    owner = local_ray.start_watchdog()
    with open(os.path.join(owner.temp_dir, "raylet.out"), "w") as log:
        straggler = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=log, start_new_session=True)
    owner.stop()
    assert owner.watchdog.returncode == 0
    assert _wait_gone([straggler.pid], timeout=5) == []
    straggler.wait()
    assert not os.path.exists(owner.temp_dir)
    assert other.poll() is None


def test_next_launch_clears_the_instance_of_a_dead_launcher_and_dead_watchdog(bystander):
    other, other_dir = bystander
    dead = subprocess.Popen(["true"])
    started = local_ray._start_time(dead.pid)
    dead.wait()
    orphan_dir = tempfile.mkdtemp(prefix=local_ray.TEMP_PREFIX, dir="/tmp")
    with open(os.path.join(orphan_dir, local_ray.OWNER_FILE), "w") as f:
        json.dump({"launcher": [dead.pid, started], "watchdog": [dead.pid, started]}, f)
    with open(os.path.join(orphan_dir, "worker.out"), "w") as log:
        orphan = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=log, start_new_session=True)
    # the bystander's instance has a live owner: this very process
    with open(os.path.join(other_dir, local_ray.OWNER_FILE), "w") as f:
        json.dump({"launcher": [os.getpid(), local_ray._start_time(os.getpid())], "watchdog": [0, None]}, f)
    cleared = local_ray.clear_orphans()
    assert orphan_dir in cleared and other_dir not in cleared
    orphan.wait(timeout=10)
    assert not os.path.exists(orphan_dir)
    assert other.poll() is None
