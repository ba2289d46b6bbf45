"""Kill-safe Tune state on local storage: snapshots of Tune's state files and their repair before ``--resume``
(a trial's own Ray Train state is :mod:`pipeline.trial.train_state`).

Tune (Ray 2.60) writes its experiment state non-atomically: the driver dumps it into a staging folder and a
background thread copies that folder over ``<storage>/<experiment>/`` in place. A launcher killed during that copy
leaves a truncated ``experiment_state-*.json`` (or ``basic-variant-state-*.json``, a pickle, or ``tuner.pkl``), and
``Tuner.restore`` then fails: Tune logs "Failed to restore the run state" and starts the experiment over with new
trial ids, which would train every finished trial again under new MLflow runs (seen in CI as ``KeyError: 'trial'``).

While a launch runs, :class:`StateGuard` snapshots the set of state files into ``.diml-state/<n>/`` inside the
experiment folder whenever it changed and is consistent: complete files, quiet for a moment, unchanged while read
(written under a hidden name, then renamed: a kill never leaves a partial snapshot). Before ``--resume`` restores
the experiment, :func:`repair` puts the newest snapshot back when the files on disk differ from it, and says so;
damage without a snapshot stops the resume with an error naming the file, before anything starts.

A restored state can be a second or two older than the kill. That costs nothing: a trial that finished in that
time is started again, finds its finished MLflow run and returns at once; a trial the search generated in that
time is generated again with the same trial id (the search state is restored with it), so it finds its MLflow run
and its Train checkpoints.

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

from pipeline.storage import is_local, local_path

BACKUP_DIR = ".diml-state"
STATE_SUFFIXES = (".json", ".pkl")


class DamagedState(RuntimeError):
    """Tune's state cannot be restored as it was (a damaged file without a snapshot, or a restore that Tune gave up
    on): the launch stops rather than train finished trials again."""


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


def _write_synced(path: pathlib.Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write_synced(tmp, data)
    os.replace(tmp, path)


def _generations(folder: pathlib.Path) -> list[pathlib.Path]:
    """The snapshots under ``.diml-state``, oldest first (folders named by a counter; a folder whose name starts
    with a dot is one being written)."""
    return sorted((p for p in (folder / BACKUP_DIR).glob("[0-9]*") if p.is_dir()), key=lambda p: int(p.name))


def _signature(path: pathlib.Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def snapshot(experiment: str | pathlib.Path, seen: dict[str, tuple[int, int]] | None = None, keep: int = 2,
             quiet: float = 0.25) -> pathlib.Path | None:
    """Copy Tune's state files of ``experiment`` together into a new snapshot folder of ``.diml-state``; returns
    the new folder, or None when nothing was taken (try again later).

    A snapshot is taken only of a consistent set: some file changed since ``seen``, none changed in the last
    ``quiet`` seconds nor while it was read (Tune copies its files one after another: a set read mid-copy would
    pair one write's experiment state with another's search state), and every file is complete. The set matters
    because Tune reads it as one: an experiment state older than its search state loses the trials the search
    had already generated. The set is written in a hidden folder and renamed into place, so a kill never leaves
    a partial snapshot; the ``keep`` newest are kept."""
    folder = local_path(str(experiment))
    seen = {} if seen is None else seen
    try:
        paths = _state_files(folder)
        before = {p.name: _signature(p) for p in paths}
        if not before or before == seen or time.time_ns() - max(m for m, _ in before.values()) < quiet * 1e9:
            return None
        contents = {p.name: p.read_bytes() for p in paths}
        if {p.name: _signature(p) for p in _state_files(folder)} != before:
            return None
    except FileNotFoundError:
        return None
    if not all(is_complete(data) for data in contents.values()):
        return None
    generations = _generations(folder)
    number = int(generations[-1].name) + 1 if generations else 0
    staging = folder / BACKUP_DIR / f".{number:08d}.{os.getpid()}"
    staging.mkdir(parents=True)
    for name, data in contents.items():
        _write_synced(staging / name, data)
    target = folder / BACKUP_DIR / f"{number:08d}"
    os.rename(staging, target)
    for old in (generations + [target])[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    seen.clear()
    seen.update(before)
    return target


def repair(experiment: str | pathlib.Path) -> list[str]:
    """Put Tune's state of ``experiment`` back to its newest snapshot when the files on disk differ from it (a
    file damaged, missing or added, or just newer: the launcher was killed after Tune's last write that the guard
    saw whole, and that write may be damaged or mixed with the one before). Returns what was done, one line per
    file; [] when the state on disk is the newest snapshot or there is no snapshot and nothing is damaged.
    Raises :class:`DamagedState` when a file is damaged and there is no snapshot (nothing is changed then).
    Remote storage is left to Tune (no snapshots are taken there)."""
    if not is_local(str(experiment)):
        return []
    folder = local_path(str(experiment))
    live = {p.name: p.read_bytes() for p in _state_files(folder)}
    damaged = sorted(name for name, data in live.items() if not is_complete(data))
    generations = _generations(folder)
    if not generations:
        if damaged:
            names = ", ".join(str(folder / name) for name in damaged)
            raise DamagedState(
                f"--resume: Tune's state file {names} is damaged (the launcher was killed while Tune wrote it) "
                f"and there is no complete copy in {folder / BACKUP_DIR}; launch again without --resume to start "
                "this spec anew (runs already logged to MLflow stay where they are)")
        return []
    latest = generations[-1]
    saved = {p.name: p.read_bytes() for p in _state_files(latest)}
    if saved == live:
        return []
    when = time.strftime("%H:%M:%S", time.localtime(latest.stat().st_mtime))
    lines = []
    for name in sorted(set(live) | set(saved)):
        if live.get(name) == saved.get(name):
            continue
        what = ("was damaged (the launcher was killed while Tune wrote it)" if name in damaged else
                "was missing" if name not in live else "is newer than the last snapshot")
        if name not in saved:
            what += f"; set aside to {BACKUP_DIR}/set-aside-{name}"
        lines.append(f"--resume: {name} {what}; restoring Tune's state as of {when}, its last consistent "
                     f"snapshot ({BACKUP_DIR}/{latest.name})")
    for name in live.keys() - saved.keys():  # Tune restores the newest name: one newer than the snapshot must go
        os.replace(folder / name, folder / BACKUP_DIR / f"set-aside-{name}")
    # damaged files last: a kill during the repair leaves one damaged, so the next --resume repairs again
    for name in sorted(saved, key=lambda name: (name in damaged or name not in live, name)):
        if live.get(name) != saved[name]:
            _write_atomic(folder / name, saved[name])
    return lines


class StateGuard:
    """Background thread that calls :func:`snapshot` every ``period`` seconds while a launch runs (local
    storage only; a no-op elsewhere). Use as a context manager around ``Tuner.fit``."""

    def __init__(self, experiment: str, period: float = 1.0, quiet: float = 0.25, keep: int = 2):
        self.experiment = experiment
        self.period = period
        self.quiet = quiet
        self.keep = keep
        self.enabled = is_local(experiment)
        self._stop = threading.Event()
        self._seen: dict[str, tuple[int, int]] = {}
        self._thread = threading.Thread(target=self._loop, name="diml-tune-state-guard", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self._backup()

    def _backup(self) -> None:
        try:
            snapshot(self.experiment, self._seen, keep=self.keep, quiet=self.quiet)
        except OSError:  # a full disk or a vanished folder must not take the launch down; the next pass retries
            pass

    def __enter__(self) -> StateGuard:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            if exc_type is None:  # fit returned: Tune synced its final state (and waited for it) and writes no more
                self.quiet = 0.0  # otherwise its sync thread may still be copying: the quiet rule stays
            self._backup()
