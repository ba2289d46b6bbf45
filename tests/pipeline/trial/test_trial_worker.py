"""Worker checkpoints without Ray: everything a restarted trial needs comes back exactly."""

import torch

from diml.engine import TrainModule
from diml.losses import build_loss
from diml.models import build_model
from diml.models import read_checkpoint
from pipeline.trial.worker import BEST_FILE, Progress, _snapshot, load_checkpoint, save_checkpoint, selection_score


def _module():
    torch.manual_seed(0)
    model = build_model("resnet18", embed_dim=8, grid=2)
    loss = build_loss("margin", {}, similarity="global", num_classes=4, embed_dim=8, miner="distance")
    return TrainModule(model, loss)


def test_checkpoint_round_trip_restores_weights_loss_miner_optimizer_and_progress(tmp_path):
    module = _module()
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(4).repeat_interleave(2)
    module(images, labels).backward()
    opt.step()
    sched.step()
    best = _snapshot(module)
    progress = Progress(next_epoch=3, best_epoch=1, best_score=42.5, best_metrics={"test/global/R_at_1": 42.5})
    config = {"backbone": "resnet18", "embed_dim": 8, "grid": 2, "frozen_bn": False, "image_size": 32}
    save_checkpoint(str(tmp_path), module, opt, sched, progress, best, config)
    assert read_checkpoint(tmp_path / BEST_FILE)["model_config"] == config  # diml's one checkpoint format
    saved = {k: v.clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}

    fresh = _module()
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, step_size=1, gamma=0.5)
    restored, best_state = load_checkpoint(str(tmp_path), fresh, fresh_opt, fresh_sched)
    assert restored == progress
    for key, value in fresh.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, saved[key]), key
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    assert fresh_sched.get_last_lr() == sched.get_last_lr() == [5e-4]
    assert torch.equal(best_state["loss"]["loss.beta"], best["loss"]["loss.beta"])
    assert _same(best_state["loss"]["miner._extra_state"], best["loss"]["miner._extra_state"])


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_selection_score_reads_the_named_metric():
    results = {"global": {"R@1": 50.0, "MAP@R": 20.0}, "diml@100": {"R@1": 55.0}}
    assert selection_score(results, "global/R_at_1") == 50.0
    assert selection_score(results, "diml_K100/R_at_1") == 55.0
    import pytest

    with pytest.raises(ValueError, match="add its depth to evaluation.depths"):
        selection_score(results, "diml_K10/R_at_1")


def test_worker_chatter_is_kept_out_of_the_launcher_console():
    import logging

    import ray.train.v2._internal.execution.context as train_context

    from pipeline.trial.worker import quiet_worker_logs

    loggers = [train_context.logger, logging.getLogger("faiss.loader")]
    levels = [lg.level for lg in loggers]
    try:
        quiet_worker_logs()
        # Ray Train's per-report INFO line (all metrics, every epoch) and faiss's SIMD probing are silenced
        assert not any(lg.isEnabledFor(logging.INFO) for lg in loggers)
        assert all(lg.isEnabledFor(logging.WARNING) for lg in loggers)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def test_an_image_unreadable_at_evaluation_is_left_out_of_the_scores_and_counted(tmp_path):
    """``data.skip_bad_images``: an image that went bad after the scan of the splits is not scored (its row is
    dropped, the kept rows say which images they are) and is counted once for ``data/skipped_images``."""
    import pytest
    from PIL import Image

    from pipeline.launch.study import build_study
    from pipeline.trial import build
    from pipeline.trial.skipped import SkippedImages
    from pipeline.trial.worker import Context, evaluate_split

    for c, name in enumerate(("ant", "bee", "cat", "dog", "elk", "fox", "gnu", "hen")):
        for j in range(3):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.new("RGB", (16, 16), (30 * c, 20 * j, 90)).save(tmp_path / name / f"{j}.jpg")
    raw = {"name": "w", "data": {"dataset": "folder", "root": str(tmp_path), "image_size": 32,
                                 "skip_bad_images": True},
           "model": {"backbone": "resnet18", "embed_dim": 8, "grid": 2}, "batch": {"size": 4, "images_per_class": 2},
           "evaluation": {"depths": [3]}, "resources": {"workers_per_trial": 1}}
    spec = build_study(raw).trials[0].spec
    splits = build.build_splits(spec)
    test = splits.test
    bad = 1
    (tmp_path / test.image_id(bad)).write_bytes(b"gone bad since the scan")
    ctx = Context(spec=spec, rank=0, world_size=1, device=torch.device("cpu"), run_id=None, tracking_uri=None,
                  skipped=SkippedImages(splits))
    module = TrainModule(build.build_model(spec), build.build_loss(spec, splits.train.num_classes))
    with pytest.warns(UserWarning, match="skipped image"):
        results, embeddings = evaluate_split(module, test, ctx)
    kept = [i for i in range(len(test)) if i != bad]
    assert embeddings.metadata["indices"] == kept and embeddings.labels.tolist() == test.labels[kept].tolist()
    assert results["convention"]["num_queries"] == len(test) - 1
    assert ctx.skipped.metrics() == {"data/skipped_images": 1.0}
    assert ctx.skipped.new_tags() == {"skipped_images": test.image_id(bad)} and ctx.skipped.new_tags() == {}
    # a training batch dropped an image (diml.engine.EpochStats.skipped): counted with the others, once
    for _ in range(2):
        assert ctx.skipped.after_epoch(splits.train, [0], world_size=1) == {"data/skipped_images": 2.0}
    assert ctx.skipped.new_tags() == {"skipped_images": ", ".join(sorted([test.image_id(bad),
                                                                          splits.train.image_id(0)]))}
