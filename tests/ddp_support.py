"""Multi-process gloo tests: every rank in its own interpreter, its output kept, a crash of the transport retried.

CI once reported only ``process 0 terminated with signal SIGABRT`` for a ``torch.multiprocessing.spawn`` of two
gloo ranks (a C++ abort in one of gloo's threads; the rank's own message was lost in the spawn's exception, and 40
runs here under full CPU load never repeated it).  :func:`run_ranks` therefore

- starts each rank with ``subprocess`` and keeps its stdout/stderr, which a failure quotes;
- rendezvouses through a file store (no probed free port that another process can take in between);
- puts gloo's pairs on loopback (``GLOO_SOCKET_IFNAME=lo``) whatever the host name resolves to;
- bounds every collective (:func:`init_gloo`, 120 s) and the whole run, stopping the other ranks once one failed;
- runs the ranks again only when one of them was killed by a signal (at most ``attempts`` times, with a warning that
  holds every log).  A Python error in a rank fails at once, with the rank's own last line first.

A rank is a module-level function ``fn(rank, store, folder)`` of a test module; it calls :func:`init_gloo` and
saves what it computed under ``folder``.
"""

from __future__ import annotations

import datetime
import inspect
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

KILLED = 999  # the exit code reported for a rank stopped here (another rank failed, or the deadline passed)
_RANK = ("import importlib, sys; sys.path[:0] = sys.argv[1:3]; "
         "getattr(importlib.import_module(sys.argv[3]), sys.argv[4])(int(sys.argv[5]), *sys.argv[6:])")


def init_gloo(rank: int, store: str, world_size: int) -> None:
    """Join the file-store process group (inside a rank), one intra-op thread, a Python stack on a C++ crash."""
    import faulthandler

    import torch
    import torch.distributed as dist

    faulthandler.enable()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))


def launch(fn: Callable, folder: Path, world_size: int = 2, timeout: float = 300) -> list[tuple[int, str]]:
    """Run ``fn`` once on every rank; ``[(exit code, output)]`` per rank: negative for a signal, :data:`KILLED` for a
    rank stopped here."""
    source = Path(inspect.getfile(fn)).resolve()
    where = [str(source.parent), str(Path(__file__).resolve().parent), source.stem, fn.__name__]
    store = folder / "store"
    store.unlink(missing_ok=True)
    env = dict(os.environ)
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    logs = [open(folder / f"rank{r}.log", "w+") for r in range(world_size)]
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, *where, str(r), str(store), str(folder)],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
             for r, log in enumerate(logs)]
    deadline, stopped = time.monotonic() + timeout, set()
    while any(p.poll() is None for p in procs):
        if any(p.returncode not in (None, 0) for p in procs) or time.monotonic() > deadline:
            for p in procs:  # the others would wait for a collective's timeout
                if p.poll() is None:
                    p.kill()
                    p.wait()
                    stopped.add(p.pid)
        time.sleep(0.05)
    out = []
    for p, log in zip(procs, logs):
        log.seek(0)
        out.append((KILLED if p.pid in stopped else p.returncode, log.read()))
        log.close()
    return out


def run_ranks(fn: Callable, folder: Path, world_size: int = 2, attempts: int = 3) -> None:
    """:func:`launch` until every rank exits 0; a rank killed by a signal is run again (see the module docstring)."""
    for attempt in range(1, attempts + 1):
        results = launch(fn, folder, world_size)
        if all(code == 0 for code, _ in results):
            return
        report = "; ".join(f"rank {r} {'was stopped' if code == KILLED else f'exited {code}'}: "
                           f"{(log.strip().splitlines() or ['(no output)'])[-1]}"
                           for r, (code, log) in enumerate(results) if code != 0)
        logs = "\n".join(f"--- rank {r} (exit {code}) ---\n{log}" for r, (code, log) in enumerate(results))
        if attempt == attempts or not any(code < 0 for code, _ in results):
            raise RuntimeError(f"{report}\n{logs}")
        warnings.warn(f"attempt {attempt} of {fn.__name__} on {world_size} ranks crashed, running it again: "
                      f"{report}\n{logs}")
