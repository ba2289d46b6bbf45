"""Kill-safe Tune experiment state on local storage: last-complete copies of Tune's state files, and their repair.

Tune (Ray 2.60) writes its experiment state non-atomically: the driver dumps it into a staging folder and a
background thread copies that folder over ``<storage>/<experiment>/`` in place. A launcher killed during that copy
leaves a truncated ``experiment_state-*.json`` (or ``basic-variant-state-*.json``, a pickle, or ``tuner.pkl``), and
``Tuner.restore`` then fails: Tune logs "Failed to restore the run state" and starts the experiment over with new
trial ids, which would train every finished trial again under new MLflow runs (seen in CI as ``KeyError: 'trial'``).

While a launch runs, :class:`StateGuard` snapshots the set of state files, whenever it changed and every file in it
is complete, into ``.diml-state/<n>/`` inside the experiment folder (written under a hidden name, then renamed: a
kill never leaves a partial snapshot). Before ``--resume`` restores the experiment, :func:`repair` puts the newest
snapshot back when any state file is damaged and says so; damage without a snapshot stops the resume with an
error naming the file, before anything starts. A restored state can be up to a second (the guard's period) older
than the kill: a trial that finished in that second is started again, finds its finished MLflow run and returns
at once.

Object stores (``s3://``, ``gs://``) replace an object whole on upload, so only local folders need this.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickletools
import shutil
import threading
import time

BACKUP_DIR = ".diml-state"
STATE_SUFFIXES = (".json", ".pkl")


class DamagedState(RuntimeError):
    """A Tune state file is damaged and has no complete copy: the experiment cannot be restored as it was."""


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> pathlib.Path:
    return pathlib.Path(path[len("file://"):] if path.startswith("file://") else path)


def is_complete(data: bytes) -> bool:
    """Whether ``data`` is a whole state file: JSON that parses, or a pickle whose opcodes run to its STOP
    (checked without unpickling anything). Tune's ``basic-variant-state-*.json`` is a pickle despite its name."""
    if not data:
        return False
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        ops = list(pickletools.genops(data))
    except Exception:  # truncated pickles raise ValueError; garbage can raise other errors from the opcode reader
        return False
    return bool(ops) and ops[-1][0].name == "STOP"


def _state_files(folder: pathlib.Path) -> list[pathlib.Path]:
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return []
    return sorted(p for p in entries if p.suffix in STATE_SUFFIXES and p.is_file() and not p.name.startswith("."))


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _generations(folder: pathlib.Path) -> list[pathlib.Path]:
    """The snapshots under ``.diml-state``, oldest first (folders named by a counter; a folder whose name starts
    with a dot is one being written)."""
    return sorted((p for p in (folder / BACKUP_DIR).glob("[0-9]*") if p.is_dir()), key=lambda p: int(p.name))


def snapshot(experiment: str | pathlib.Path, seen: dict[str, tuple[int, int]] | None = None,
             keep: int = 2) -> pathlib.Path | None:
    """Copy Tune's state files of ``experiment`` together into a new snapshot folder of ``.diml-state`` when any
    of them changed since ``seen`` and all of them are complete; returns the new folder (None when nothing was
    taken: unchanged, or a file caught mid-write, which the next call takes). The files are copied as one set
    because Tune reads them as one: an experiment state older than its search state would lose the trials the
    search had already generated. The set is written in a hidden folder and renamed into place, so a kill never
    leaves a partial snapshot; the ``keep`` newest are kept."""
    folder = _local(str(experiment))
    seen = {} if seen is None else seen
    contents, signatures = {}, {}
    for path in _state_files(folder):
        try:
            stat = path.stat()
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if not is_complete(data):
            return None
        contents[path.name] = data
        signatures[path.name] = (stat.st_mtime_ns, stat.st_size)
    if not contents or signatures == seen:
        return None
    generations = _generations(folder)
    number = int(generations[-1].name) + 1 if generations else 0
    staging = folder / BACKUP_DIR / f".{number:08d}.{os.getpid()}"
    staging.mkdir(parents=True)
    for name, data in contents.items():
        with open(staging / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    target = folder / BACKUP_DIR / f"{number:08d}"
    os.rename(staging, target)
    for old in (generations + [target])[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    seen.clear()
    seen.update(signatures)
    return target


def repair(experiment: str | pathlib.Path) -> list[str]:
    """When a state file of ``experiment`` is damaged (or missing), put the newest snapshot back in place of all
    of them; returns what was done, one line per damaged file. Raises :class:`DamagedState` when there is no
    snapshot to restore (nothing is changed then)."""
    folder = _local(str(experiment))
    live = {p.name: p for p in _state_files(folder)}
    damaged = sorted(name for name, path in live.items() if not is_complete(path.read_bytes()))
    generations = _generations(folder)
    latest = generations[-1] if generations else None
    if latest is not None:
        damaged += sorted(p.name for p in _state_files(latest) if p.name not in live)
    if not damaged:
        return []
    if latest is None:
        names = ", ".join(str(folder / name) for name in damaged)
        raise DamagedState(
            f"--resume: Tune's state file {names} is damaged (the launcher was killed while Tune wrote it) and "
            f"there is no complete copy in {folder / BACKUP_DIR}; launch again without --resume to start this "
            "spec anew (runs already logged to MLflow stay where they are)")
    saved = {p.name: p for p in _state_files(latest)}
    # the damaged files last: a kill during the repair leaves one damaged, so the next --resume repairs again
    for name in sorted(saved, key=lambda name: (name in damaged, name)):
        _write_atomic(folder / name, saved[name].read_bytes())
    when = time.strftime("%H:%M:%S", time.localtime(latest.stat().st_mtime))
    lines = []
    for name in damaged:
        if name not in saved:  # newer than the snapshot (a later session's state): set aside, never deleted
            os.replace(folder / name, folder / BACKUP_DIR / f"damaged-{name}")
        lines.append(f"--resume: {name} was damaged (the launcher was killed while Tune wrote it); restored Tune's "
                     f"state as of {when} from its last complete copy in {BACKUP_DIR}/{latest.name}")
    return lines


class StateGuard:
    """Background thread that calls :func:`snapshot` every ``period`` seconds while a launch runs (local
    storage only; a no-op elsewhere). Use as a context manager around ``Tuner.fit``."""

    def __init__(self, experiment: str, period: float = 1.0):
        self.experiment = experiment
        self.period = period
        self.enabled = is_local(experiment)
        self._stop = threading.Event()
        self._seen: dict[str, tuple[int, int]] = {}
        self._thread = threading.Thread(target=self._loop, name="diml-tune-state-guard", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self._backup()

    def _backup(self) -> None:
        try:
            snapshot(self.experiment, self._seen)
        except OSError:  # a full disk or a vanished folder must not take the launch down; the next pass retries
            pass

    def __enter__(self) -> StateGuard:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self._backup()  # the final state Tune wrote at the end of fit
