"""The authors' protocol from the paper specs: optimizer groups per loss, pooling and global vector, augmentation,
weights by name; and the dry run of the full grid on a machine without the datasets."""

import pathlib

import pytest
import torch

from diml.models import DIMLModel
from pipeline.launch.cli import main as launch_main
from pipeline.launch.study import SpecError, build_study, load_spec_file
from pipeline.trial import build

SPECS = pathlib.Path(__file__).resolve().parents[3] / "specs"
MODEL_LR, MODEL_DECAY = 1e-5, 4e-4
# The authors' rates, written out from wl-zhao/DIML parameters.py, criteria/*.py and scripts/baselines/sop_runs.sh.
AUTHORS = {"margin": 5e-4, "proxynca": 50 * MODEL_LR, "softtriple": MODEL_LR, "softmax": 1e-5, "arcface": 5e-4}
AUTHORS_SOP = AUTHORS | {"softmax": 2e-3, "softtriple": 1.0}


def _study(name, monkeypatch, tmp_path):
    monkeypatch.setenv("DIML_DATA", str(tmp_path / "absent"))
    return build_study(load_spec_file(SPECS / name), source=name, check_paths=False)


@pytest.mark.parametrize("name, expected", [("paper/cub200.yaml", AUTHORS), ("paper/sop.yaml", AUTHORS_SOP)])
def test_optimizer_of_every_paper_trial_has_the_authors_groups(name, expected, monkeypatch, tmp_path):
    seen = set()
    for trial in _study(name, monkeypatch, tmp_path).trials:
        spec = trial.spec
        if trial.spec.seed:
            continue
        model = torch.nn.Linear(3, spec.model.embed_dim)  # stands in for the resnet50: only its group matters
        optimizer = build.build_optimizer(spec, model, build.build_loss(spec, num_classes=5))
        groups = {g["name"]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups}
        model_lr = 0.1 if spec.loss.name == "softtriple" and spec.data.dataset == "sop" else MODEL_LR
        assert groups.pop("model") == (model_lr, MODEL_DECAY)
        if spec.loss.name in expected:
            assert groups == {"loss": (pytest.approx(expected[spec.loss.name], rel=1e-12), 0.0)}, spec.loss.name
            seen.add(spec.loss.name)
        else:
            assert groups == {}, spec.loss.name
    assert seen == set(expected)


def test_paper_specs_pool_and_select_as_the_authors(monkeypatch, tmp_path):
    for trial in _study("paper/cars196.yaml", monkeypatch, tmp_path).trials:
        spec = trial.spec
        assert spec.model.pretrained == "IMAGENET1K_V1" and spec.model.align_corners
        diml = spec.loss.similarity == "diml"
        assert build.global_vector(spec) == ("cell_mean" if diml else "map_mean")
        assert spec.evaluation.selection_metric == ("diml_K100/R_at_1" if diml else "global/R_at_1")
        assert spec.evaluation.every_n_epochs == 1
        assert spec.loss.params.get("count", "triplets") == "triplets"


def _spec(**sections):
    raw = {"name": "t", "model": {"backbone": "resnet18", "embed_dim": 8, "grid": 2},
           "batch": {"size": 4, "images_per_class": 2}, "resources": {"workers_per_trial": 1}}
    for key, value in sections.items():
        raw[key] = raw.get(key, {}) | value
    return build_study(raw).trials[0].spec


def test_built_model_and_checkpoint_config_follow_the_spec():
    spec = _spec(loss={"name": "multisimilarity", "similarity": "diml"})
    model = build.build_model(spec)
    assert isinstance(model, DIMLModel) and model.global_vector == "cell_mean" and model.align_corners
    assert {k: build.model_config(spec, model)[k] for k in ("align_corners", "global_vector")} == {
        "align_corners": True, "global_vector": "cell_mean"}
    other = _spec(model={"align_corners": False, "global_vector": "map_mean"},
                  loss={"name": "multisimilarity", "similarity": "diml"})
    model = build.build_model(other)
    assert model.global_vector == "map_mean" and model.align_corners is False


def test_weights_are_validated_by_name_without_downloading():
    assert _spec(model={"backbone": "resnet50", "pretrained": "imagenet1k_v2"}).model.pretrained == "IMAGENET1K_V2"
    assert _spec(model={"backbone": "resnet50", "pretrained": "DEFAULT"}).model.pretrained == "IMAGENET1K_V2"
    assert _spec(model={"pretrained": "none"}).model.pretrained is False
    assert _spec(model={"pretrained": True}).model.pretrained is True
    with pytest.raises(SpecError, match="model.pretrained: unknown weights 'IMAGENET1K_V3' for backbone 'resnet18'"):
        _spec(model={"pretrained": "IMAGENET1K_V3"})


def test_augmentation_section_is_validated_and_reaches_the_data():
    spec = _spec(data={"augmentation": {"crop_scale": [0.8, 1.0], "flip": False}, "input": "float"})
    train = build.build_splits(spec).train.transform
    names = [type(t).__name__ for t in train.transforms]
    assert train.transforms[0].scale == (0.8, 1.0) and "RandomHorizontalFlip" not in names
    default = build.build_splits(_spec(data={"input": "float"})).train.transform.transforms[0]
    assert build.augmentation(_spec()).crop_scale is None and default.scale == (0.5, 1.0)  # synthetic's default
    uint8 = build.build_splits(_spec(data={"augmentation": {"crop_scale": [0.8, 1.0], "flip": False}}))
    assert uint8.train.transform.augmentation.crop_scale == (0.8, 1.0) and not uint8.train.transform.augmentation.flip
    assert build.build_splits(_spec()).train.transform.augmentation.crop_scale == (0.5, 1.0)  # the uint8 default
    with pytest.raises(SpecError, match="data.augmentation: .*crop_scale must satisfy 0 < low <= high <= 1"):
        _spec(data={"augmentation": {"crop_scale": [0.9, 0.2]}})
    with pytest.raises(SpecError, match="data.augmentation.mirror: unknown key|'mirror' is not a spec field"):
        _spec(data={"augmentation": {"mirror": False}})


def test_full_grid_dry_run_lists_losses_backbones_datasets_seeds_without_the_data(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DIML_DATA", str(tmp_path / "not-here"))
    assert launch_main([str(SPECS / "full_grid.yaml"), "--dry-run", "--assume-resources", "CPU=64,GPU=8"]) == 0
    out = capsys.readouterr().out
    assert "trials: 540" in out
    for backbone in ("resnet50", "googlenet", "vit_b_16"):
        line = next(line for line in out.splitlines() if line.strip().startswith(backbone) and "GPU-h" in line)
        assert "180 trials" in line and float(line.split("trials")[1].split("GPU-h")[0]) > 0
    assert "dataset root(s) missing here" in out
    study = build_study(load_spec_file(SPECS / "full_grid.yaml"), check_paths=False)
    cells = {}
    for t in study.trials:
        cells.setdefault((t.spec.data.dataset, t.spec.model.backbone, t.spec.seed), set()).add(
            repr(t.spec.loss.model_dump(exclude={"ot"})))
    assert len(study.trials) == 540 and len(cells) == 3 * 3 * 3
    assert all(len(losses) == 20 for losses in cells.values())
    heads = {(t.spec.model.backbone, t.spec.model.embed_dim, t.spec.data.image_size) for t in study.trials}
    assert heads == {("resnet50", 128, 224), ("googlenet", 512, 224), ("vit_b_16", 384, 224)}
    # a real launch (not a dry run) still refuses the missing roots
    assert launch_main([str(SPECS / "full_grid.yaml")]) == 2
    assert "does not exist or is not a folder" in capsys.readouterr().err


def test_selection_by_a_reranked_metric_needs_its_depth():
    spec = _spec(evaluation={"depths": [10, 100], "selection_metric": "diml_K100/R_at_1"})
    assert spec.evaluation.selection_metric == "diml_K100/R_at_1"
    with pytest.raises(SpecError, match="depth 50 is not evaluated .evaluation.depths .*add 50 to evaluation.depths"):
        _spec(evaluation={"depths": [10, 100], "selection_metric": "diml_K50/R_at_1"})


@pytest.mark.parametrize("name", ["paper/cub200.yaml", "paper/cars196.yaml", "paper/sop.yaml", "full_grid.yaml"])
def test_paper_trials_train_the_authors_unnormalised_baselines(name, monkeypatch, tmp_path):
    """lifted, N-pair and angular as the authors train them (docs/FIDELITY.md row 6c); every other loss normalised."""
    seen = set()
    for trial in _study(name, monkeypatch, tmp_path).trials:
        spec = trial.spec
        if spec.seed or spec.loss.similarity != "global":
            continue
        loss = build.build_loss(spec, num_classes=5).loss
        if spec.loss.name in ("lifted", "npair"):
            assert loss.distance.normalize_embeddings is False and loss.embedding_reg_weight == 0.005
            seen.add(spec.loss.name)
        elif spec.loss.name == "angular":
            assert (loss.angular_weight, loss.npair_weight, loss.embedding_reg_weight) == (2.0, 1.0, 0.005)
            assert loss.npair.distance.normalize_embeddings is False
            seen.add(spec.loss.name)
        elif hasattr(loss, "distance") and hasattr(loss.distance, "normalize_embeddings"):
            assert loss.distance.normalize_embeddings, spec.loss.name
    assert seen == {"lifted", "npair", "angular"}
