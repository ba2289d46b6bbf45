"""Fixtures of the explanation tests: embeddings, a tiny model checkpoint and a gallery of images."""

import pytest
import torch
from explain_helpers import TINY_CONFIG, shape_image

from diml.models import build_model


@pytest.fixture
def embedding_set():
    """``(global (N, D), local (N, D, R), labels (N,))`` for N = 10 images, D = 8, grid 2, 5 classes."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(5).repeat_interleave(2)
    centres = torch.randn(5, 8, 4, generator=gen)
    local = centres[labels] + 0.7 * torch.randn(10, 8, 4, generator=gen)
    glob = local.mean(2) + 0.1 * torch.randn(10, 8, generator=gen)
    return glob, local, labels


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A pipeline-format checkpoint of a tiny untrained resnet18 (image size 32, grid 2); returns (path, model)."""
    torch.manual_seed(0)
    model = build_model("resnet18", pretrained=False, embed_dim=16, grid=2).eval()
    path = tmp_path / "best_model.pt"
    torch.save({"model": model.state_dict(), "model_config": dict(TINY_CONFIG), "epoch": 3}, path)
    return path, model


@pytest.fixture
def gallery(tmp_path):
    """A query PNG and a gallery folder of five PNGs (one in a sub-folder)."""
    folder = tmp_path / "gallery"
    (folder / "sub").mkdir(parents=True)
    query = tmp_path / "query.png"
    shape_image(0).save(query)
    for k in range(4):
        shape_image(k + 1).save(folder / f"g{k}.png")
    shape_image(9).save(folder / "sub" / "g9.png")
    (folder / "notes.txt").write_text("not an image")
    return query, folder
