"""The model's cells and global vector against a transcription of the authors' pooling, and weights by name.

The authors (wl-zhao/DIML ``architectures/resnet50_diml.py``, ``evaluation/eval_diml.py``) up-sample the last map
bilinearly to 16 x 16 with ``align_corners=True``, average-pool it to 4 x 4, apply the 1x1 embedding convolution,
and take the mean of the 4 x 4 cell embeddings as the global vector of a DIML-trained model (a baseline's global
vector is ``last_linear(avgpool(map))``). The bilinear resampling is written out here by hand.
"""

import pytest
import torch
import torchvision

from diml.models import build_model, pool_to_grid, weights_name


def _bilinear_align_corners(fmap, size):
    """``(B, C, h, w) -> (B, C, size, size)``: output pixel ``i`` samples input position ``i * (h - 1) / (size - 1)``."""
    b, c, h, w = fmap.shape
    out = torch.empty(b, c, size, size, dtype=fmap.dtype)
    for i in range(size):
        y = i * (h - 1) / (size - 1) if size > 1 else 0.0
        y0 = min(int(y), h - 1)
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(size):
            x = j * (w - 1) / (size - 1) if size > 1 else 0.0
            x0 = min(int(x), w - 1)
            x1, fx = min(x0 + 1, w - 1), x - x0
            out[:, :, i, j] = ((1 - fy) * (1 - fx) * fmap[:, :, y0, x0] + (1 - fy) * fx * fmap[:, :, y0, x1]
                               + fy * (1 - fx) * fmap[:, :, y1, x0] + fy * fx * fmap[:, :, y1, x1])
    return out


def _authors_cells(fmap, weight, bias, grid=4):
    """The authors' DIML head: ``(B, C, h, w)`` -> cell embeddings ``(B, D, grid * grid)`` and their mean."""
    up = _bilinear_align_corners(fmap, 4 * grid)
    pooled = torch.stack([torch.stack([up[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean(dim=(2, 3))
                                       for j in range(grid)], dim=-1) for i in range(grid)], dim=-2)
    cells = torch.einsum("dc,bchw->bdhw", weight, pooled) + bias[None, :, None, None]
    cells = cells.flatten(2)
    return cells, cells.mean(dim=2)


@pytest.mark.parametrize("image_size", [96, 224])  # 3 x 3 and 7 x 7 resnet maps
def test_cells_and_global_vector_equal_the_authors_pooling(image_size):
    torch.manual_seed(0)
    model = build_model("resnet18", embed_dim=24, global_vector="cell_mean").double().eval()
    images = torch.randn(2, 3, image_size, image_size, dtype=torch.float64)
    with torch.no_grad():
        fmap = model.features(images).feature_map
        global_emb, local_emb = model(images)
    cells, mean = _authors_cells(fmap, model.head.weight, model.head.bias)
    torch.testing.assert_close(local_emb, cells, atol=1e-6, rtol=0)
    torch.testing.assert_close(global_emb, mean, atol=1e-6, rtol=0)


def test_map_mean_is_the_authors_baseline_global_vector_and_differs_from_the_cell_mean():
    torch.manual_seed(1)
    model = build_model("resnet18", embed_dim=24).double().eval()  # global_vector="map_mean"
    images = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    with torch.no_grad():
        fmap = model.features(images).feature_map
        global_emb, local_emb = model(images)
    baseline = fmap.mean(dim=(2, 3)) @ model.head.weight.T + model.head.bias  # last_linear(avgpool(map))
    torch.testing.assert_close(global_emb, baseline, atol=1e-9, rtol=0)
    assert (global_emb - local_emb.mean(dim=2)).abs().max() > 1e-3


def test_align_corners_is_one_setting_away_and_changes_the_cells():
    fmap = torch.randn(2, 5, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(pool_to_grid(fmap, 4), pool_to_grid(fmap, 4, align_corners=True))
    other = pool_to_grid(fmap, 4, align_corners=False)
    relative = ((other - pool_to_grid(fmap, 4)).flatten(1).norm(dim=1) / other.flatten(1).norm(dim=1))
    assert relative.min() > 1e-2
    model = build_model("resnet18", embed_dim=8, align_corners=False)
    assert model.align_corners is False and model.global_vector == "map_mean"
    with pytest.raises(ValueError, match="global_vector must be one of"):
        build_model("resnet18", global_vector="mean")


def test_weights_are_named_from_torchvision_enums_without_downloading():
    assert weights_name("resnet50", "IMAGENET1K_V1") == "IMAGENET1K_V1"
    assert weights_name("resnet50", "imagenet1k_v2") == "IMAGENET1K_V2"
    assert weights_name("resnet50", "DEFAULT") == "IMAGENET1K_V2"  # what pretrained: true gave before
    assert weights_name("resnet50", True) == "IMAGENET1K_V2"
    assert weights_name("googlenet", True) == "IMAGENET1K_V1"
    for none in (False, None, "none", "False"):
        assert weights_name("resnet50", none) is None
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET1K_V2' for backbone 'googlenet'.*IMAGENET1K_V1"):
        weights_name("googlenet", "IMAGENET1K_V2")
    with pytest.raises(ValueError, match="true, false or a weights name"):
        weights_name("resnet50", 1)


def test_named_weights_load_that_enum_members_file(tmp_path, monkeypatch):
    """``pretrained="IMAGENET1K_V1"`` loads the file of that member from the torch hub cache (pre-seeded)."""
    torch.manual_seed(3)
    member = torchvision.models.get_model_weights("resnet18").IMAGENET1K_V1
    source = torchvision.models.resnet18(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / member.url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_model("resnet18", pretrained="imagenet1k_v1")
    key = "layer3.0.conv1.weight"
    assert torch.equal(model.backbone.state_dict()[key], source.state_dict()[key])
