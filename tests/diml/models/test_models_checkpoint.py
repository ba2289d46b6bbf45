"""diml.models.checkpoint: the one checkpoint format, written by save_checkpoint and read back by its loaders."""

import pytest
import torch

from diml.data.transforms import DEFAULT_RESIZE_RATIO
from diml.models import build_model, load_checkpoint, model_config, read_checkpoint, save_checkpoint
from diml.models import checkpoint

CONFIG = {"backbone": "resnet18", "embed_dim": 16, "grid": 2, "frozen_bn": True, "image_size": 32,
          "align_corners": True, "global_vector": "map_mean", "eval_resize_ratio": 256 / 224}


def _model():
    torch.manual_seed(0)
    return build_model("resnet18", pretrained=False, embed_dim=16, grid=2, frozen_bn=True)


def test_a_saved_model_loads_back_with_the_same_outputs_and_entries(tmp_path):
    model = _model().eval()
    config = model_config(model, backbone="resnet18", image_size=32)
    assert config == CONFIG
    beta = {"beta": torch.tensor([0.5, 0.75])}
    path = tmp_path / "best_model.pt"
    save_checkpoint(path, model.state_dict(), config, loss_state=beta, epoch=4, spec={"seed": 3})
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == 1 and raw["epoch"] == 4 and raw["spec"] == {"seed": 3}
    assert raw["model_config"] == CONFIG and torch.equal(raw["loss"]["beta"], beta["beta"])
    loaded, loaded_config = load_checkpoint(path)
    assert loaded_config == CONFIG and not loaded.training and loaded.frozen_bn
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = model(images), loaded(images)
    assert torch.equal(expected.global_emb, got.global_emb) and torch.equal(expected.local_emb, got.local_emb)
    state = read_checkpoint(path)
    assert state["epoch"] == 4 and torch.equal(state["loss"]["beta"], beta["beta"])
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())


def test_files_from_before_the_version_field_read_as_version_1(tmp_path):
    model = _model()
    path = tmp_path / "old.pt"
    torch.save({"model": model.state_dict(), "model_config": CONFIG}, path)
    state = read_checkpoint(path)
    assert state["format_version"] == 1 and state["loss"] is None and state["epoch"] is None
    assert load_checkpoint(path)[1] == CONFIG


def test_the_eval_resize_ratio_is_recorded_and_read_as_the_authors_where_it_is_missing(tmp_path):
    assert checkpoint.DEFAULT_RESIZE_RATIO == DEFAULT_RESIZE_RATIO  # a copy (diml.data imports diml.models)
    config = model_config(_model(), backbone="resnet18", image_size=32, eval_resize_ratio=1.0)
    assert config["eval_resize_ratio"] == 1.0 and checkpoint.eval_resize_ratio(config) == 1.0
    old = {k: v for k, v in CONFIG.items() if k != "eval_resize_ratio"}
    path = tmp_path / "old.pt"
    torch.save({"model": _model().state_dict(), "model_config": old}, path)
    assert checkpoint.eval_resize_ratio(load_checkpoint(path)[1]) == 256 / 224
    with pytest.raises(ValueError, match=r"config\['eval_resize_ratio'\] must be a number >= 1, got 0.5"):
        save_checkpoint(tmp_path / "x.pt", _model().state_dict(), CONFIG | {"eval_resize_ratio": 0.5})


def test_a_newer_format_and_bad_arguments_are_refused_with_the_fix(tmp_path):
    model = _model()
    path = tmp_path / "new.pt"
    torch.save({"format_version": 2, "model": model.state_dict(), "model_config": CONFIG}, path)
    with pytest.raises(ValueError, match=rf"checkpoint {path} has format_version 2; this diml reads versions 1 to 1"):
        read_checkpoint(path)
    with pytest.raises(ValueError, match=r"config\['grid'\] must be a int, got '2'"):
        save_checkpoint(tmp_path / "x.pt", model.state_dict(), CONFIG | {"grid": "2"})
    with pytest.raises(ValueError, match="extra entry 'format_version' is part of the checkpoint format"):
        save_checkpoint(tmp_path / "x.pt", model.state_dict(), CONFIG, format_version=3)
    assert not (tmp_path / "x.pt").exists()
