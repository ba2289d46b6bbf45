"""Kill-safe Ray Train state of one trial (runs in the trial's driver, inside Ray).

Ray Train V2 (Ray 2.60) rewrites a run's ``checkpoint_manager_snapshot.json`` in place when it registers a
checkpoint; a driver killed during that write leaves it cut off, and every retry of the trial then fails with
``CheckpointManagerInitializationError``. :func:`recover_train_run` sets such a snapshot aside and names the newest
whole checkpoint to resume from. (Tune's experiment state, on the launcher side, is :mod:`pipeline.launch.tune_state`.)
"""

from __future__ import annotations

import json
import os
import pathlib

from pipeline.storage import is_local, local_path

TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # ray.train.v2._internal.constants, Ray 2.60


def _complete_checkpoint(folder: pathlib.Path, state_file: str) -> bool:
    """Whether ``folder`` holds a whole ``state_file`` (torch.save's zip: every member's CRC is checked)."""
    import zipfile

    try:
        with zipfile.ZipFile(folder / state_file) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def recover_train_run(run_dir: str, state_file: str) -> tuple[str | None, str | None]:
    """Ray Train's own resume state of one trial, made usable after a kill: Train V2 rewrites
    ``checkpoint_manager_snapshot.json`` in place when it registers a checkpoint, and a damaged one fails the
    trial on every retry. Returns ``(checkpoint folder to resume from, message)``, both None when Train resumes
    by itself (its snapshot is whole, or there is neither a snapshot nor a checkpoint) or the storage is not
    local. A damaged snapshot is set aside (renamed, never deleted), so Train starts the run afresh in the same
    folder, and the newest checkpoint whose ``state_file`` is whole is returned for the trial to resume from; so
    it is when the snapshot is missing beside checkpoints (set aside by an earlier attempt that was stopped before
    Train wrote a new one)."""
    if not is_local(run_dir):
        return None, None
    folder = local_path(run_dir)
    snapshot_path = folder / TRAIN_SNAPSHOT
    try:
        json.loads(snapshot_path.read_bytes())
        return None, None
    except FileNotFoundError:
        damaged = False
    except ValueError:
        damaged = True
        os.replace(snapshot_path, folder / f".set-aside-{TRAIN_SNAPSHOT}")
    checkpoints = sorted((p for p in folder.glob("checkpoint_*") if p.is_dir()), reverse=True)
    if not checkpoints and not damaged:
        return None, None
    resume = next((p for p in checkpoints if _complete_checkpoint(p, state_file)), None)
    what = ("was damaged (a kill while Train wrote it); set aside as .set-aside-" + TRAIN_SNAPSHOT if damaged
            else "is missing")
    where = f"continues from {resume.name}" if resume else "has no whole checkpoint and starts over"
    return str(resume) if resume else None, f"Ray Train's {TRAIN_SNAPSHOT} of {folder.name} {what}; the trial {where}"
