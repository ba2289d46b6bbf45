"""A checkpoint rebuilds its model with the pooling it was trained with (align_corners, global vector)."""

import torch
from explain_helpers import TINY_CONFIG

from diml.models import load_checkpoint
from diml.models import build_model


def _save(tmp_path, name, model, config):
    path = tmp_path / name
    torch.save({"model": model.state_dict(), "model_config": config}, path)
    return path


def test_pooling_keys_are_honoured_and_old_checkpoints_keep_their_pooling(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", embed_dim=16, grid=2, global_vector="cell_mean").eval()
    images = torch.randn(2, 3, 32, 32)
    new = _save(tmp_path, "new.pt", model,
                dict(TINY_CONFIG) | {"align_corners": True, "global_vector": "cell_mean"})
    loaded, _ = load_checkpoint(new)
    assert loaded.align_corners is True and loaded.global_vector == "cell_mean"
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).global_emb, model(images).global_emb)
    old, _ = load_checkpoint(_save(tmp_path, "old.pt", model, dict(TINY_CONFIG)))
    assert old.align_corners is False and old.global_vector == "map_mean"  # how models pooled before the keys
