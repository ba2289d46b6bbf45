"""A trial's kill-safe Ray Train state: a damaged ``checkpoint_manager_snapshot.json`` is set aside and the newest
whole checkpoint resumed from."""

import json
import pathlib

from pipeline.trial.train_state import TRAIN_SNAPSHOT, recover_train_run


def _train_run(tmp_path, epochs=3):
    import torch

    run = tmp_path / "ray" / "train-abc_00001"
    for epoch in range(epochs):
        folder = run / f"checkpoint_2026-11-27_00-00-0{epoch}.000000"
        folder.mkdir(parents=True)
        torch.save({"epoch": epoch, "weights": torch.arange(1000.0) * epoch}, folder / "state.pt")
    (run / TRAIN_SNAPSHOT).write_text(json.dumps({"ray_version": "2.60.0", "checkpoint_results": []}))
    return run


def test_a_whole_train_snapshot_or_a_fresh_run_is_left_to_ray_train(tmp_path):
    run = _train_run(tmp_path)
    assert recover_train_run(str(run), "state.pt") == (None, None)
    assert (run / TRAIN_SNAPSHOT).exists()
    assert recover_train_run(str(tmp_path / "ray" / "train-new_00000"), "state.pt") == (None, None)
    assert recover_train_run("s3://bucket/train-abc_00001", "state.pt") == (None, None)


def test_a_damaged_train_snapshot_is_set_aside_and_the_newest_whole_checkpoint_resumed(tmp_path):
    import torch

    run = _train_run(tmp_path)
    snapshot = run / TRAIN_SNAPSHOT
    cut = snapshot.read_bytes()[:20]
    snapshot.write_bytes(cut)
    newest = run / "checkpoint_2026-11-27_00-00-02.000000" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:-200])  # the newest checkpoint was being copied too: not whole
    resume, message = recover_train_run(str(run), "state.pt")
    assert resume == str(run / "checkpoint_2026-11-27_00-00-01.000000")
    assert torch.load(pathlib.Path(resume) / "state.pt")["epoch"] == 1
    assert "was damaged" in message and "continues from checkpoint_2026-11-27_00-00-01.000000" in message
    assert not snapshot.exists() and (run / f".set-aside-{TRAIN_SNAPSHOT}").read_bytes() == cut
    # a retry stopped before Train wrote a new snapshot still resumes, rather than starting over
    resume_again, message = recover_train_run(str(run), "state.pt")
    assert resume_again == resume and "is missing" in message


def test_a_damaged_train_snapshot_without_a_whole_checkpoint_starts_over(tmp_path):
    run = _train_run(tmp_path, epochs=1)
    (run / TRAIN_SNAPSHOT).write_bytes(b"")
    (run / "checkpoint_2026-11-27_00-00-00.000000" / "state.pt").write_bytes(b"PK\x03\x04")
    resume, message = recover_train_run(str(run), "state.pt")
    assert resume is None and "starts over" in message
