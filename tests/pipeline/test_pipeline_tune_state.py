"""Kill-safe Tune state: complete-file checks, last-complete copies, repair before --resume, the guard thread."""

import json
import pickle
import time

import pytest
import yaml

from pipeline import tune_state
from pipeline.launch import main as launch_main


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


def test_snapshot_takes_the_complete_set_once_and_skips_a_pass_with_a_damaged_file(tmp_path):
    folder = _experiment(tmp_path)
    seen = {}
    first = tune_state.snapshot(folder, seen)
    assert first.name == "00000000"
    assert sorted(p.name for p in first.iterdir()) == sorted([STATE, VARIANT, "tuner.pkl"])
    assert tune_state.snapshot(folder, seen) is None  # unchanged: no new snapshot
    good = (folder / STATE).read_bytes()
    (folder / STATE).write_bytes(good[:10])  # caught mid-write: the pass is skipped, the last snapshot stays
    assert tune_state.snapshot(folder, seen) is None
    (folder / STATE).write_bytes(good.replace(b'"x": 1', b'"x": 2'))
    second = tune_state.snapshot(folder, seen)
    third_state = good.replace(b'"x": 1', b'"x": 3')
    (folder / STATE).write_bytes(third_state)
    third = tune_state.snapshot(folder, seen)
    assert (second.name, third.name) == ("00000001", "00000002")
    assert sorted(p.name for p in (folder / tune_state.BACKUP_DIR).iterdir()) == ["00000001", "00000002"]  # keep 2
    assert (third / STATE).read_bytes() == third_state


def test_repair_puts_the_whole_snapshot_back_when_one_file_is_damaged(tmp_path):
    folder = _experiment(tmp_path)
    tune_state.snapshot(folder)
    assert tune_state.repair(folder) == []  # nothing damaged: nothing touched
    good_state, good_variant = (folder / STATE).read_bytes(), (folder / VARIANT).read_bytes()
    # the search state moved on after the snapshot, then the experiment state was cut off: restoring only the
    # damaged file would pair an old trial list with a newer search state, so both come back as one set
    (folder / VARIANT).write_bytes(pickle.dumps({"_iter": 3}))
    (folder / STATE).write_bytes(b"")
    lines = tune_state.repair(folder)
    assert len(lines) == 1 and STATE in lines[0] and "restored Tune's state as of" in lines[0]
    assert (folder / STATE).read_bytes() == good_state and (folder / VARIANT).read_bytes() == good_variant
    (folder / "tuner.pkl").unlink()
    assert "tuner.pkl was damaged" in tune_state.repair(folder)[0]
    assert pickle.loads((folder / "tuner.pkl").read_bytes()) == {"param_space": {"trial": ["a", "b"]}}
    assert (folder / "a_00000-label" / "result.json").read_text() == "{"  # trial folders are Tune's business


def test_repair_sets_aside_a_damaged_file_newer_than_the_snapshot(tmp_path):
    folder = _experiment(tmp_path)
    tune_state.snapshot(folder)
    newer = folder / "experiment_state-2026-11-28_00-00-00.json"  # a resumed session's state, cut off
    newer.write_bytes(b'{"trial_data": [')
    assert newer.name in tune_state.repair(folder)[0]
    assert not newer.exists()  # Tune restores the newest name: the damaged one must not be it
    assert (folder / tune_state.BACKUP_DIR / f"damaged-{newer.name}").read_bytes() == b'{"trial_data": ['
    assert json.loads((folder / STATE).read_text())["runner_data"] == {"x": 1}


def test_repair_without_a_snapshot_names_the_file_and_changes_nothing(tmp_path):
    folder = _experiment(tmp_path)
    damaged = (folder / VARIANT).read_bytes()[:-3]
    (folder / VARIANT).write_bytes(damaged)
    with pytest.raises(tune_state.DamagedState, match=f"{VARIANT} is damaged .* without --resume"):
        tune_state.repair(folder)
    assert (folder / VARIANT).read_bytes() == damaged


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
    assert not tune_state.StateGuard("s3://bucket/exp").enabled


def test_resume_with_a_damaged_state_and_no_copy_stops_before_ray(tmp_path, monkeypatch, capsys):
    import ray

    from e2e_support import TINY_SPEC

    from pipeline.grid import build_plan, load_spec_file
    from pipeline.launch import launch_id, storage_path

    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({**TINY_SPEC, "resources": {**TINY_SPEC["resources"],
                                                               "storage_path": str(tmp_path / "ray")}}))
    plan = build_plan(load_spec_file(spec), source=spec, sets=[])
    storage = storage_path(plan)
    folder = tmp_path / "ray" / "tiny-exp"
    folder.mkdir(parents=True)
    (folder / "experiment_state-2026-11-27_00-00-00.json").write_bytes(b"")
    (tmp_path / "ray" / f"{launch_id(plan)}.latest.json").write_text(json.dumps(
        {"tune_name": "tiny-exp", "parent_run_id": "0" * 32, "experiment_id": "0"}))
    assert storage == str(tmp_path / "ray")
    assert launch_main([str(spec), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "experiment_state-2026-11-27_00-00-00.json is damaged" in err and "without --resume" in err
