"""A local launch owns its Ray instance: its own temp dir (and so its own sockets, ports and session), and a
watchdog that stops exactly that instance's processes when the launcher goes away, by any signal.

Ray's head processes started by ``ray.init`` die with the launcher (Linux parent-death signal), but what they
started -- dashboard and runtime-env agents, Tune trial drivers, Train controllers and workers -- can outlive a
SIGKILLed launcher, re-parented to init. The watchdog is a small process in its own session (so a signal to the
launcher's process group or terminal does not reach it) that blocks reading a pipe whose only writer is the
launcher: end of file means the launcher closed it (a normal end, after ``ray.shutdown()``) or died. It then stops
every process that belongs to this instance -- whose command line names the instance's temp dir or that holds a
file in it open (every Ray process logs there) -- first with SIGTERM, then SIGKILL, and removes the temp dir.
Another Ray instance on the machine (another launch, a test runtime) has another temp dir and is never touched.

If the watchdog itself was killed, the next local launch clears the instance of a launcher that is gone
(:func:`clear_orphans`): the temp dir records the launcher's and the watchdog's pid and start time.

``python -m pipeline.launch.local_ray TEMP_DIR`` is the watchdog's entry point.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds pipeline/
TEMP_PREFIX = "diml-ray-"  # under /tmp: Ray's socket paths must stay short
OWNER_FILE = "owner.json"
END = b"end"


# ----------------------------------------------------------------------------------------------------- processes
def _start_time(pid: int) -> int | None:
    """Clock ticks since boot at which ``pid`` started (tells a pid apart from a later reuse); None when it is gone
    or a zombie (dead, not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in "ZX" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, started: int | None) -> bool:
    return started is not None and _start_time(pid) == started


def _belongs(pid: int, temp_dir: str) -> bool:
    """Whether process ``pid`` is part of the instance in ``temp_dir`` (its command line or an open file)."""
    prefix = temp_dir.rstrip("/") + "/"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if re.search(re.escape(prefix.encode()[:-1]) + rb"(/|\x00|$)", f.read()):
                return True
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
        except OSError:
            continue
    return False


def instance_pids(temp_dir: str, exclude: tuple[int, ...] = ()) -> list[int]:
    """Processes of this user (other than the caller and ``exclude``) that belong to the Ray instance in
    ``temp_dir``."""
    me, uid = os.getpid(), os.getuid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me or int(entry) in exclude:
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
        except OSError:
            continue
        if _belongs(int(entry), temp_dir):
            pids.append(int(entry))
    return pids


def stop_instance(temp_dir: str, grace_s: float = 5.0, exclude: tuple[int, ...] = ()) -> list[int]:
    """SIGTERM every process of the instance in ``temp_dir`` (but ``exclude``), SIGKILL what is left after
    ``grace_s``, remove the temp dir; returns the pids that were stopped."""
    stopped: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
        pids = instance_pids(temp_dir, exclude)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
                stopped.append(pid)
            except OSError:
                continue
        deadline = time.time() + (grace_s if sig == signal.SIGTERM else 2.0)
        while time.time() < deadline and any(_start_time(p) for p in pids):
            time.sleep(0.1)
    shutil.rmtree(temp_dir, ignore_errors=True)
    return sorted(set(stopped))


# ------------------------------------------------------------------------------------------------------ owner side
@dataclass
class LocalRay:
    """A started local instance: its temp dir, and the watchdog with the launcher's end of the pipe."""

    temp_dir: str
    watchdog: subprocess.Popen
    pipe: int

    def stop(self, timeout_s: float = 60.0) -> None:
        """After ``ray.shutdown()``: let the watchdog sweep what is left and remove the temp dir, and wait for it."""
        if self.pipe >= 0:
            try:
                os.write(self.pipe, END)  # a normal end: the watchdog sweeps without a word
            except OSError:
                pass
            os.close(self.pipe)
            self.pipe = -1
        try:
            self.watchdog.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"warning: the Ray watchdog {self.watchdog.pid} is still clearing {self.temp_dir}", file=sys.stderr)


def start_watchdog() -> LocalRay:
    """Make this launcher's temp dir and start its watchdog (before ``ray.init(_temp_dir=...)``)."""
    clear_orphans()
    temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir="/tmp")
    read_end, write_end = os.pipe()  # both non-inheritable; the watchdog gets the read end as its stdin
    watchdog = subprocess.Popen([sys.executable, "-m", "pipeline.launch.local_ray", temp_dir, str(os.getpid())],
                                stdin=read_end, stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (
                                    _SOURCE_ROOT, os.environ.get("PYTHONPATH"))))})
    os.close(read_end)
    owner = {"launcher": [os.getpid(), _start_time(os.getpid())], "watchdog": [watchdog.pid, _start_time(watchdog.pid)]}
    with open(os.path.join(temp_dir, OWNER_FILE), "w") as f:
        json.dump(owner, f)
    return LocalRay(temp_dir, watchdog, write_end)


def init_local(attempts: int = 2, **init_kwargs) -> LocalRay:
    """``ray.init(address="local", ...)`` on a new instance owned by this launcher. Ray waits a fixed 30 s for its
    node to register; on an overloaded machine that can run out, and the half-started instance is then cleared by
    its watchdog and started once more."""
    import ray

    for attempt in range(1, attempts + 1):
        owner = start_watchdog()
        try:
            ray.init(address="local", _temp_dir=owner.temp_dir, **init_kwargs)
            return owner
        except BaseException as exc:
            ray.shutdown()
            owner.stop()
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            print(f"warning: Ray's node did not start in time ({exc}); starting it again", file=sys.stderr)
    raise AssertionError("unreachable")


def clear_orphans() -> list[str]:
    """Stop the instances left by launchers that are gone and whose watchdog is gone too; returns their temp
    dirs. An instance whose launcher or watchdog is alive is never touched."""
    cleared = []
    for name in os.listdir("/tmp"):
        folder = os.path.join("/tmp", name)
        if not name.startswith(TEMP_PREFIX) or not os.path.isfile(os.path.join(folder, OWNER_FILE)):
            continue
        try:
            with open(os.path.join(folder, OWNER_FILE)) as f:
                owner = json.load(f)
            if os.stat(folder).st_uid != os.getuid():
                continue
        except (OSError, ValueError):
            continue
        if any(_alive(pid, started) for pid, started in owner.values()):
            continue
        stop_instance(folder)
        cleared.append(folder)
    return cleared


# --------------------------------------------------------------------------------------------------- watchdog side
def watch(temp_dir: str, launcher: int) -> None:
    """Block until the launcher's end of the pipe (our stdin) closes, then stop the instance (the launcher itself,
    after a normal end, still holds Ray's driver log open: it is left alone)."""
    for sig in (signal.SIGINT, signal.SIGHUP):  # a Ctrl-C or hang-up is for the launcher; we clean up after it
        signal.signal(sig, signal.SIG_IGN)
    received = b""
    while True:
        try:
            chunk = os.read(0, 4096)
        except InterruptedError:
            continue
        except OSError:
            break
        if not chunk:
            break
        received += chunk
    stopped = stop_instance(temp_dir, exclude=(launcher,))
    if stopped and received != END:
        try:
            print(f"diml: the launcher {launcher} is gone; stopped the {len(stopped)} process(es) of its Ray "
                  f"instance {temp_dir}",
                  file=sys.stderr)
        except OSError:  # the launcher's terminal may be gone with it
            pass


if __name__ == "__main__":
    watch(sys.argv[1], int(sys.argv[2]))
