"""Where a trial's time goes (issue 26): the worker loop logs every part of the time split every epoch, and the
parts never add up to more than the epoch. Runs the real ``train_loop`` in this process with Ray's Train calls
faked (one worker, CPU); ``tests/e2e/test_e2e_grid.py`` checks the same metrics in MLflow after a real launch."""

from __future__ import annotations

import types

import pytest

from pipeline.specs import RunSpec, TrialLaunch
from pipeline.trial.timing import EPOCH_KEY, PARTS, metric_key


@pytest.fixture
def fake_train(monkeypatch):
    import ray.train
    import ray.train.torch
    import torch

    from pipeline.trial import worker

    reports, logged = [], []
    context = types.SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 1)
    monkeypatch.setattr(ray.train, "get_context", lambda: context)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray.train, "report", lambda metrics, checkpoint=None: reports.append(dict(metrics)))
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(worker.TrialLogger, "metrics", lambda self, metrics, step: logged.append((step, metrics)))
    return worker, reports, logged


@pytest.mark.parametrize("input_format", ["uint8", "float"])
def test_every_epoch_logs_the_whole_time_split_and_it_fits_in_the_epoch(fake_train, input_format, tmp_path):
    worker, reports, logged = fake_train
    spec = RunSpec.model_validate({
        "name": "timing", "epochs": 3,
        "data": {"dataset": "synthetic", "image_size": 32, "input": input_format,
                 "synthetic": {"num_classes": 8, "images_per_class": 4}},
        "model": {"backbone": "resnet18", "embed_dim": 8, "grid": 2, "frozen_bn": False},
        "batch": {"size": 8, "images_per_class": 2},
        "evaluation": {"depths": [3], "batch_size": 16, "explanations": 0},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1},
    })
    launch = TrialLaunch(tracking_uri=None, experiment_id=None, parent_run_id=None, storage_path=str(tmp_path))
    result = worker.train_loop({"spec": spec.model_dump(mode="json"), "launch": launch.model_dump(mode="json")})
    assert result["status"] == "ok"
    splits = {step: metrics for step, metrics in logged if EPOCH_KEY in metrics}
    assert sorted(splits) == [0, 1, 2]
    for step, metrics in splits.items():
        parts = [metrics[metric_key(part)] for part in PARTS]
        assert all(value >= 0 for value in parts), metrics
        assert sum(parts) <= metrics[EPOCH_KEY], (step, metrics)
        assert metrics[metric_key("train_step")] > 0 and metrics[metric_key("data_wait")] > 0
        assert metrics[metric_key("eval")] > 0 and metrics[metric_key("checkpoint")] > 0
    # the last epoch also holds the final phase (the best epoch's test evaluation when it was not the last)
    assert len([r for r in reports if "best/epoch" in r]) == 1
