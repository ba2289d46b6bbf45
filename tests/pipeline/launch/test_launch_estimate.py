"""The dry run's GPU-hours estimate against the arithmetic written out by hand."""

import pytest

from pipeline.launch.estimate import by_backbone, trial_gpu_hours
from pipeline.launch.study import build_study

RAW = {"name": "e", "epochs": 2, "data": {"dataset": "cub200", "root": "/nowhere", "loader_workers": 6},
       "model": {"backbone": "resnet50"}, "evaluation": {"depths": [100]},
       "resources": {"workers_per_trial": 1, "use_gpu": True, "gpus_per_worker": 1}}


def _spec(**changes):
    raw = {k: (v | changes.get(k, {}) if isinstance(v, dict) else v) for k, v in RAW.items()}
    raw.update({k: v for k, v in changes.items() if k not in RAW})
    return build_study(raw, check_paths=False).trials[0].spec


def test_loader_bound_resnet50_trial():
    # 5864 train images at min(2300, 6 x 250) img/s per epoch; 3 test evaluations (2 epochs + final) of
    # 5924 images at min(3 x 2300, 1500) img/s plus 5924 x 100 re-ranked pairs at 1e6 pairs/s
    expected = (2 * 5864 / 1500 + 3 * (5924 / 1500 + 5924 * 100 / 1e6)) / 3600
    assert trial_gpu_hours(_spec()) == pytest.approx(expected, rel=1e-9)


def test_gpu_bound_diml_vit_trial_with_a_validation_split():
    spec = _spec(model={"backbone": "vit_b_16"}, loss={"name": "multisimilarity", "similarity": "diml"},
                 data={"val_fraction": 0.5})
    rate = 2300 * 4.1 / 17.6 / 1.72  # vit at 224 px, MS-DIML step cost
    expected = (2 * 2932 / rate + 2 * (2932 / min(3 * 2300 * 4.1 / 17.6, 1500) + 2932 * 100 / 1e6)
                + 5924 / min(3 * 2300 * 4.1 / 17.6, 1500) + 5924 * 100 / 1e6) / 3600
    assert trial_gpu_hours(spec) == pytest.approx(expected, rel=1e-9)


def test_cpu_trials_are_not_estimated_and_lines_sum_per_backbone():
    cpu = _spec(resources={"use_gpu": False, "gpus_per_worker": 0})
    assert trial_gpu_hours(cpu) is None and by_backbone([cpu]) == []
    lines = by_backbone([_spec(), _spec()], samples=2)
    assert any(line.split()[:3] == ["resnet50", "4", "trials"] for line in lines)
