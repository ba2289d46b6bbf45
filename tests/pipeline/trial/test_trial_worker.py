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
