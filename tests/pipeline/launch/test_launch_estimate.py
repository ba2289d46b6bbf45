"""The dry run's GPU-hours estimate against the arithmetic written out by hand, from the measured rates."""

import pytest

from pipeline.launch.estimate import RATES, by_backbone, trial_gpu_hours
from pipeline.launch.study import build_study

RAW = {"name": "e", "epochs": 2, "data": {"dataset": "cub200", "root": "/nowhere", "loader_workers": 6},
       "model": {"backbone": "resnet50"}, "evaluation": {"depths": [100]},
       "resources": {"workers_per_trial": 1, "use_gpu": True, "gpus_per_worker": 1}}
FLOAT, UINT8, CACHED = (RATES[f"loader/{k}"].value for k in ("float", "uint8", "uint8_cached"))
FP32, COMPILED = RATES["resnet50/fp32"].value, RATES["resnet50/compiled"].value


def _spec(**changes):
    raw = {k: (v | changes.get(k, {}) if isinstance(v, dict) else changes.get(k, v)) for k, v in RAW.items()}
    raw.update({k: v for k, v in changes.items() if k not in RAW})
    return build_study(raw, check_paths=False).trials[0].spec


def test_every_rate_says_where_it_was_measured():
    assert all(rate.value > 0 and len(rate.source) > 20 for rate in RATES.values())
    assert UINT8 > FLOAT and CACHED > UINT8


def test_loader_bound_resnet50_trial_on_the_float_path():
    # 5864 train images at min(fp32 step, 6 float workers) img/s per epoch; 3 test evaluations (2 epochs + final)
    # of 5924 images at min(3 x step, 6 workers) img/s plus 5924 x 100 re-ranked pairs at 1e6 pairs/s
    loader = 6 * FLOAT
    assert loader < FP32
    expected = (2 * 5864 / loader + 3 * (5924 / min(3 * FP32, loader) + 5924 * 100 / 1e6)) / 3600
    assert trial_gpu_hours(_spec(data={"input": "float"})) == pytest.approx(expected, rel=1e-9)


def test_uint8_path_with_the_decoded_cache_after_the_first_epoch():
    spec = _spec(data={"decoded_cache_gb": 4.0}, epochs=4)  # 5864 x 562,500 bytes = 3.3 GB: all of CUB fits
    per_image = (3 / 4) / CACHED + (1 / 4) / UINT8  # the first of 4 epochs decodes
    train_rate = min(FP32, 6 / per_image)
    eval_rate = min(3 * FP32, 6 * UINT8)
    expected = (4 * 5864 / train_rate + 5 * (5924 / eval_rate + 5924 * 100 / 1e6)) / 3600
    assert trial_gpu_hours(spec) == pytest.approx(expected, rel=1e-9)


def test_gpu_bound_diml_vit_trial_with_a_validation_split():
    spec = _spec(model={"backbone": "vit_b_16"}, loss={"name": "multisimilarity", "similarity": "diml"},
                 data={"val_fraction": 0.5})
    backbone = FP32 * 4.1 / 17.6  # vit at 224 px
    rate = backbone / RATES["diml/multisimilarity"].value  # MS-DIML step cost
    eval_rate = min(3 * backbone, 6 * UINT8)
    expected = (2 * 2932 / rate + 2 * (2932 / eval_rate + 2932 * 100 / 1e6)
                + 5924 / eval_rate + 5924 * 100 / 1e6) / 3600
    assert trial_gpu_hours(spec) == pytest.approx(expected, rel=1e-9)


def test_compiled_and_bf16_steps_use_their_own_rates():
    compiled = _spec(model={"compile": True, "amp": True}, data={"loader_workers": 64}, evaluation={"depths": [1]})
    bf16 = _spec(model={"amp": True}, data={"loader_workers": 64}, evaluation={"depths": [1]})
    assert trial_gpu_hours(compiled) < trial_gpu_hours(bf16)
    diml = _spec(model={"compile": True}, loss={"similarity": "diml"}, data={"loader_workers": 64})
    plain = _spec(model={"compile": True}, data={"loader_workers": 64})
    train = 2 * 5864
    extra = train / (COMPILED / RATES["diml/compiled"].value) - train / COMPILED
    assert (trial_gpu_hours(diml) - trial_gpu_hours(plain)) * 3600 == pytest.approx(extra, rel=1e-9)


def test_cpu_trials_are_not_estimated_and_lines_sum_per_backbone():
    cpu = _spec(resources={"use_gpu": False, "gpus_per_worker": 0})
    assert trial_gpu_hours(cpu) is None and by_backbone([cpu]) == []
    lines = by_backbone([_spec(), _spec()], samples=2)
    assert any(line.split()[:3] == ["resnet50", "4", "trials"] for line in lines)
