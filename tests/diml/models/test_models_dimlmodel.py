"""DIMLModel: grid pooling as the authors do, one shared head, row-major cells, frozen BatchNorm."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from diml.models import BackboneOutput, DIMLModel, build_model, pool_to_grid


class MapBackbone(nn.Module):
    """A stub backbone returning a fixed feature map (and its mean as the global input)."""

    out_channels = 3
    min_size = 1

    def __init__(self, fmap):
        super().__init__()
        self.fmap = fmap

    def forward(self, images):
        fmap = self.fmap.expand(images.shape[0], -1, -1, -1)
        return BackboneOutput(fmap, fmap.mean(dim=(2, 3)))


def _block_mean_reference(fmap, grid, align_corners=True):
    """Bilinear up-sampling to 4*grid, then the mean of each 4x4 block, computed with explicit loops."""
    up = F.interpolate(fmap, size=(4 * grid, 4 * grid), mode="bilinear", align_corners=align_corners)
    out = torch.empty(fmap.shape[0], fmap.shape[1], grid, grid)
    for i in range(grid):
        for j in range(grid):
            out[:, :, i, j] = up[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean(dim=(2, 3))
    return out


def test_pool_to_grid_matches_block_means_of_the_upsampled_map():
    fmap = torch.randn(2, 5, 7, 3)
    torch.testing.assert_close(pool_to_grid(fmap, 4), _block_mean_reference(fmap, 4))
    torch.testing.assert_close(pool_to_grid(fmap, 2), _block_mean_reference(fmap, 2))
    torch.testing.assert_close(pool_to_grid(fmap, 4, align_corners=False), _block_mean_reference(fmap, 4, False))


def test_cells_are_row_major_and_share_the_global_head():
    fmap = torch.zeros(1, 3, 8, 8)
    fmap[0, 0, 0:2, 6:8] = 1.0  # hot top-right corner in channel 0 -> cell (row 0, col 3) = index 3
    fmap[0, 1, 6:8, 0:2] = 1.0  # hot bottom-left corner in channel 1 -> cell (row 3, col 0) = index 12
    model = DIMLModel(MapBackbone(fmap), embed_dim=3, grid=4)
    with torch.no_grad():
        model.head.weight.copy_(torch.eye(3))
        model.head.bias.zero_()
        global_emb, local_emb = model(torch.zeros(2, 3, 8, 8))
    assert local_emb.shape == (2, 3, 16)
    assert local_emb[0, 0].argmax() == 3 and local_emb[0, 1].argmax() == 12
    torch.testing.assert_close(global_emb[0], fmap[0].mean(dim=(1, 2)))
    # a random head: local = W @ pooled cell + b, global = W @ mean + b (same head, as a 1x1 convolution)
    nn.init.normal_(model.head.weight)
    nn.init.normal_(model.head.bias)
    with torch.no_grad():
        global_emb, local_emb = model(torch.zeros(1, 3, 8, 8))
        pooled = _block_mean_reference(fmap, 4).flatten(2)[0]  # (C, R)
        torch.testing.assert_close(local_emb[0], model.head.weight @ pooled + model.head.bias[:, None])
        torch.testing.assert_close(global_emb[0], model.head.weight @ fmap[0].mean(dim=(1, 2)) + model.head.bias)
        cells = model.cell_embeddings(torch.zeros(1, 3, 8, 8))
        torch.testing.assert_close(cells.flatten(2), local_emb)
        dense = model.dense_embeddings(torch.zeros(1, 3, 8, 8))
        torch.testing.assert_close(dense.mean(dim=(2, 3)), global_emb)  # linear head commutes with pooling


def test_real_backbone_global_equals_mean_of_dense_embeddings():
    torch.manual_seed(0)
    model = build_model("resnet18", embed_dim=16, grid=4).eval()
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        global_emb, local_emb = model(images)
        dense = model.dense_embeddings(images)
    assert dense.shape == (2, 16, 3, 3) and model.grid == 4
    torch.testing.assert_close(global_emb, dense.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)


def _bn_stats(model):
    return [m.running_mean.clone() for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("frozen_bn", [True, False])
def test_frozen_batchnorm_keeps_running_statistics(frozen_bn):
    torch.manual_seed(0)
    model = build_model("resnet18", embed_dim=8, frozen_bn=frozen_bn)
    model.eval()
    model.train()  # train() must not un-freeze
    before = _bn_stats(model)
    global_emb, local_emb = model(torch.randn(4, 3, 32, 32) * 3 + 1)
    (global_emb.sum() + local_emb.sum()).backward()
    after = _bn_stats(model)
    changed = [not torch.equal(a, b) for a, b in zip(before, after)]
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    if frozen_bn:
        assert not any(changed) and not any(m.training for m in bns)
        assert model.training and model.head.training and model.backbone.layer1.training
        assert bns[0].weight.grad is not None  # affine parameters still learn
    else:
        assert all(changed) and all(m.training for m in bns)


def test_invalid_inputs_and_options():
    model = build_model("inception_v3", embed_dim=4).eval()
    with pytest.raises(ValueError, match="too small for this backbone; use image_size >= 75"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="embed_dim"):
        build_model("resnet18", embed_dim=0)
    with pytest.raises(ValueError, match="grid"):
        build_model("resnet18", grid=0)
