"""Kill-safe Tune state: complete-file checks, last-complete copies, repair before --resume, the guard thread."""

import json
import pathlib
import pickle
import time

import pytest
import yaml

from pipeline.launch import tune_state
from pipeline.launch.cli import main as launch_main


def _experiment(tmp_path):
    folder = tmp_path / "ray" / "exp-1"
    folder.mkdir(parents=True)
    state = {"trial_data": [["{\"trial_id\": \"a_00000\"}", "{}"]], "runner_data": {"x": 1}}
    (folder / "experiment_state-2026-11-27_00-00-00.json").write_text(json.dumps(state))
    # Tune writes the search algorithm's state as a pickle under a .json name
    (folder / "basic-variant-state-2026-11-27_00-00-00.json").write_bytes(pickle.dumps({"_iter": 2}))
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"param_space": {"trial": ["a", "b"]}}))
    (folder / "a_00000-label").mkdir()  # trial folders are not state files
    (folder / "a_00000-label" / "result.json").write_text("{")
    return folder


def test_is_complete_catches_every_truncation():
    data = json.dumps({"trial_data": [1, 2, 3], "runner_data": {"k": "v" * 50}}).encode()
    assert tune_state.is_complete(data)
    assert not any(tune_state.is_complete(data[:n]) for n in range(len(data)))
    blob = pickle.dumps({"a": list(range(40)), "b": "x" * 300}, protocol=5)
    assert tune_state.is_complete(blob)
    assert not any(tune_state.is_complete(blob[:n]) for n in range(len(blob)))
    assert not tune_state.is_complete(b"not a pickle at all")


STATE = "experiment_state-2026-11-27_00-00-00.json"
VARIANT = "basic-variant-state-2026-11-27_00-00-00.json"


def test_snapshot_takes_the_consistent_set_once_and_skips_damaged_or_busy_passes(tmp_path):
    folder = _experiment(tmp_path)
    seen = {}
    assert tune_state.snapshot(folder, seen, quiet=60) is None  # just written: Tune may be mid-way through its set
    first = tune_state.snapshot(folder, seen, quiet=0)
    assert first.name == "00000000"
    assert sorted(p.name for p in first.iterdir()) == sorted([STATE, VARIANT, "tuner.pkl"])
    assert tune_state.snapshot(folder, seen, quiet=0) is None  # unchanged: no new snapshot
    good = (folder / STATE).read_bytes()
    (folder / STATE).write_bytes(good[:10])  # caught mid-write: the pass is skipped, the last snapshot stays
    assert tune_state.snapshot(folder, seen, quiet=0) is None
    (folder / STATE).write_bytes(good.replace(b'"x": 1', b'"x": 2'))
    second = tune_state.snapshot(folder, seen, quiet=0)
    third_state = good.replace(b'"x": 1', b'"x": 3')
    (folder / STATE).write_bytes(third_state)
    third = tune_state.snapshot(folder, seen, quiet=0)
    assert (second.name, third.name) == ("00000001", "00000002")
    assert sorted(p.name for p in (folder / tune_state.BACKUP_DIR).iterdir()) == ["00000001", "00000002"]  # keep 2
    assert (third / STATE).read_bytes() == third_state


def test_snapshot_skips_a_set_that_changed_while_it_was_read(tmp_path, monkeypatch):
    folder = _experiment(tmp_path)
    real = pathlib.Path.read_bytes

    def read_then_tune_writes(path):
        data = real(path)
        if path.name == STATE:  # Tune's next copy lands between our reads of its files
            path.write_text(json.dumps({"trial_data": [], "runner_data": {"x": 9}}))
        return data

    monkeypatch.setattr(pathlib.Path, "read_bytes", read_then_tune_writes)
    assert tune_state.snapshot(folder, {}, quiet=0) is None
    monkeypatch.setattr(pathlib.Path, "read_bytes", real)
    assert tune_state.snapshot(folder, {}, quiet=0) is not None


def test_repair_puts_the_whole_snapshot_back_when_one_file_is_damaged(tmp_path):
    folder = _experiment(tmp_path)
    tune_state.snapshot(folder, quiet=0)
    assert tune_state.repair(folder) == []  # the state on disk is the snapshot: nothing touched
    good_state, good_variant = (folder / STATE).read_bytes(), (folder / VARIANT).read_bytes()
    # the search state moved on after the snapshot, then the experiment state was cut off: restoring only the
    # damaged file would pair an old trial list with a newer search state, so both come back as one set
    (folder / VARIANT).write_bytes(pickle.dumps({"_iter": 3}))
    (folder / STATE).write_bytes(b"")
    lines = tune_state.repair(folder)
    assert len(lines) == 2 and "restoring Tune's state as of" in lines[0]
    assert f"{STATE} was damaged" in "".join(lines) and f"{VARIANT} is newer than the last snapshot" in "".join(lines)
    assert (folder / STATE).read_bytes() == good_state and (folder / VARIANT).read_bytes() == good_variant
    assert tune_state.repair(folder) == []
    (folder / "tuner.pkl").unlink()
    assert "tuner.pkl was missing" in tune_state.repair(folder)[0]
    assert pickle.loads((folder / "tuner.pkl").read_bytes()) == {"param_space": {"trial": ["a", "b"]}}
    assert (folder / "a_00000-label" / "result.json").read_text() == "{"  # trial folders are Tune's business


def test_repair_sets_aside_a_state_written_after_the_snapshot(tmp_path):
    folder = _experiment(tmp_path)
    tune_state.snapshot(folder, quiet=0)
    newer = folder / "experiment_state-2026-11-28_00-00-00.json"  # a resumed session's state, cut off
    newer.write_bytes(b'{"trial_data": [')
    assert "set aside" in tune_state.repair(folder)[0]
    assert not newer.exists()  # Tune restores the newest name: it must be the snapshot's
    assert (folder / tune_state.BACKUP_DIR / f"set-aside-{newer.name}").read_bytes() == b'{"trial_data": ['
    assert json.loads((folder / STATE).read_text())["runner_data"] == {"x": 1}


def test_repair_without_a_snapshot_names_the_damaged_file_and_changes_nothing(tmp_path):
    folder = _experiment(tmp_path)
    assert tune_state.repair(folder) == []  # a launch from before the guard, undamaged: Tune restores it as is
    assert tune_state.repair("s3://bucket/exp") == []  # remote storage: no snapshots, left to Tune
    damaged = (folder / VARIANT).read_bytes()[:-3]
    (folder / VARIANT).write_bytes(damaged)
    with pytest.raises(tune_state.DamagedState, match=f"{VARIANT} is damaged .* without --resume"):
        tune_state.repair(folder)
    assert (folder / VARIANT).read_bytes() == damaged


def test_a_kill_at_any_moment_of_tunes_writes_leaves_a_complete_consistent_state(tmp_path):
    """Tune's sync, emulated: each write copies the experiment state, then the search state, in place and in
    chunks, both tagged with the write's number. The guard runs alongside; the writer stops dead at a random
    chunk (the kill). After repair, both files are complete and from the same write.  The first two writes wait
    until the guard has a copy of each (so there is a write >= 1 to restore however slow the machine is); the
    writes after them race the guard freely until the kill."""
    import random
    import threading

    rng = random.Random(0)
    paced = 2
    for trial in range(6):
        folder = tmp_path / f"exp{trial}"
        folder.mkdir()
        kill_after = rng.randrange(10, 150)  # chunks written after the paced writes (10 chunks a write)
        files = {STATE: lambda n: json.dumps({"write": n, "pad": "x" * 20000}).encode(),
                 VARIANT: lambda n: pickle.dumps({"write": n, "pad": b"y" * 20000})}

        def tune_writes(folder, files, kill_after):
            n, chunks = 0, 0
            while True:
                for name, make in files.items():
                    data = make(n)
                    with open(folder / name, "wb") as f:
                        for i in range(0, len(data), 4096):
                            if n >= paced:
                                if chunks >= kill_after:
                                    return  # killed: this file stays cut off, the other one may be a write older
                                chunks += 1
                            f.write(data[i:i + 4096])
                            f.flush()
                            time.sleep(0.0005)
                    time.sleep(0.003)  # between two files of one write: the set on disk is mixed but complete
                if n < paced:
                    deadline = time.time() + 60
                    while len(tune_state._generations(folder)) <= n and time.time() < deadline:
                        time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.06))
                n += 1

        writer = threading.Thread(target=tune_writes, args=(folder, files, kill_after))
        with tune_state.StateGuard(str(folder), period=0.01, quiet=0.02, keep=10**6) as guard:
            writer.start()
            writer.join()
            guard._stop.set()  # the launcher dies with the writer: no final pass
        snapshots = tune_state._generations(folder)
        assert len(snapshots) >= paced
        for taken in snapshots:  # every snapshot is one write's set, whichever would be the newest at a kill
            assert json.loads((taken / STATE).read_bytes())["write"] == \
                pickle.loads((taken / VARIANT).read_bytes())["write"], (trial, taken.name)
        tune_state.repair(folder)
        state = json.loads((folder / STATE).read_bytes())
        variant = pickle.loads((folder / VARIANT).read_bytes())
        assert state["write"] == variant["write"] >= 1, trial


def test_guard_keeps_copies_while_running_and_after_the_last_write(tmp_path):
    folder = _experiment(tmp_path)
    state = folder / STATE
    first = folder / tune_state.BACKUP_DIR / "00000000" / STATE
    with tune_state.StateGuard(str(folder), period=0.05) as guard:
        assert guard.enabled
        deadline = time.time() + 10
        while not first.exists() and time.time() < deadline:
            time.sleep(0.02)
        assert first.exists()
        state.write_text(json.dumps({"trial_data": [], "runner_data": {"x": 2}}))
    latest = tune_state._generations(folder)[-1]
    assert json.loads((latest / STATE).read_text())["runner_data"] == {"x": 2}  # the exit takes the last write
    assert not guard._thread.is_alive()
    # fit raised: Tune's sync thread may still be mid-copy, so a just-written set is not taken on the way out
    state.write_text(json.dumps({"trial_data": [], "runner_data": {"x": 3}}))
    with pytest.raises(KeyboardInterrupt), tune_state.StateGuard(str(folder), period=60):
        raise KeyboardInterrupt
    assert tune_state._generations(folder)[-1] == latest
    assert not tune_state.StateGuard("s3://bucket/exp").enabled


def test_resume_with_a_damaged_state_and_no_copy_stops_before_ray(tmp_path, monkeypatch, capsys):
    import ray

    from e2e_support import TINY_SPEC

    from pipeline.launch.study import build_study, load_spec_file
    from pipeline.launch.cli import launch_id, storage_path

    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({**TINY_SPEC, "launch": {**TINY_SPEC["launch"],
                                                            "storage_path": str(tmp_path / "ray")}}))
    study = build_study(load_spec_file(spec), source=spec, sets=[])
    storage = storage_path(study)
    folder = tmp_path / "ray" / "tiny-exp"
    folder.mkdir(parents=True)
    (folder / "experiment_state-2026-11-27_00-00-00.json").write_bytes(b"")
    (tmp_path / "ray" / f"{launch_id(study)}.latest.json").write_text(json.dumps(
        {"tune_name": "tiny-exp", "parent_run_id": "0" * 32, "experiment_id": "0"}))
    assert storage == str(tmp_path / "ray")
    assert launch_main([str(spec), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "experiment_state-2026-11-27_00-00-00.json is damaged" in err and "without --resume" in err


def test_a_trial_of_an_experiment_tune_started_over_stops_the_launch():
    from types import SimpleNamespace

    from pipeline.launch.tune_run import _trial_dirname

    assert _trial_dirname(SimpleNamespace(trial_id="abc_00000", config={"trial": "margin_diml"})) == \
        "abc_00000-margin_diml"
    # what Tune creates after "Failed to restore the run state": the grid's label is gone (CI's KeyError: 'trial')
    with pytest.raises(tune_state.DamagedState, match="could not restore .* without --resume"):
        _trial_dirname(SimpleNamespace(trial_id="abc_00000", config={}))
