"""The DIML embedding model: a backbone map pooled to a grid, one embedding head for the cells and the global vector.

Following the authors' code (Zhao et al., ICCV 2021), the last feature map ``(B, C, h, w)`` is resized to the grid by
bilinear up-sampling to ``4 * grid`` then adaptive average pooling to ``grid x grid``. One linear head ``C -> D`` is
applied as a 1x1 convolution to every cell (``local_emb``) and to the global input (``global_emb``: the spatial mean
of the map for CNNs, the class token for ViT). Because the head and the pooling are both linear, the global
embedding of a CNN equals the mean of its dense (per-position) embeddings, and a model whose head was trained on the
global embedding only (a baseline) already has test-time DIML cell embeddings, as in the paper's main table.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from diml.models.backbones import build_backbone


class Embeddings(NamedTuple):
    """``global_emb: (B, D)``, ``local_emb: (B, D, R)`` with ``R = grid * grid`` cells in row-major order.

    Neither is L2-normalised: consumers normalise.
    """

    global_emb: torch.Tensor
    local_emb: torch.Tensor


def pool_to_grid(feature_map: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize ``feature_map (B, C, h, w)`` to ``(B, C, grid, grid)`` as the authors do.

    Bilinear up-sampling to ``(4 * grid, 4 * grid)``, then adaptive average pooling to ``(grid, grid)``.
    """
    up = F.interpolate(feature_map, size=(4 * grid, 4 * grid), mode="bilinear", align_corners=False)
    return F.adaptive_avg_pool2d(up, grid)


class DIMLModel(nn.Module):
    """Backbone + grid pooling + one shared embedding head.

    ``forward(images (B, 3, H, W)) -> Embeddings(global_emb (B, D), local_emb (B, D, grid * grid))``.

    Attributes: ``backbone``, ``head`` (``nn.Linear(C, D)``), ``grid``, ``embed_dim``, ``frozen_bn``.
    With ``frozen_bn`` the backbone's BatchNorm layers stay in eval mode (running statistics frozen, affine
    parameters still trainable) even after ``model.train()``.
    """

    def __init__(self, backbone: nn.Module, *, embed_dim: int = 128, grid: int = 4, frozen_bn: bool = False) -> None:
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive integer, got {embed_dim}")
        if grid < 1:
            raise ValueError(f"grid must be a positive integer, got {grid}")
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_channels, embed_dim)
        self.grid = grid
        self.embed_dim = embed_dim
        self.frozen_bn = frozen_bn
        self.train()

    def train(self, mode: bool = True) -> "DIMLModel":
        super().train(mode)
        if self.frozen_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        min_size = getattr(self.backbone, "min_size", 1)
        if min(images.shape[2:]) < min_size:
            raise ValueError(
                f"images of size {tuple(images.shape[2:])} are too small for this backbone; use image_size >= "
                f"{min_size}"
            )

    def _apply_head(self, maps: torch.Tensor) -> torch.Tensor:
        """The head as a 1x1 convolution: ``(B, C, h, w) -> (B, D, h, w)``."""
        return F.conv2d(maps, self.head.weight[:, :, None, None], self.head.bias)

    def features(self, images: torch.Tensor):
        """The backbone output: ``BackboneOutput(feature_map (B, C, h, w), global_input (B, C))``."""
        self._check_images(images)
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> Embeddings:
        """``images: (B, 3, H, W)`` -> ``Embeddings((B, D), (B, D, grid * grid))``."""
        fmap, global_input = self.features(images)
        cells = self._apply_head(pool_to_grid(fmap, self.grid))
        return Embeddings(self.head(global_input), cells.flatten(2))

    def cell_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """The cell embeddings as a map, for explanations: ``(B, D, grid, grid)`` (same values as ``local_emb``)."""
        fmap, _ = self.features(images)
        return self._apply_head(pool_to_grid(fmap, self.grid))

    def dense_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """The head applied at every position of the unpooled map: ``(B, D, h, w)`` (finer heatmaps)."""
        fmap, _ = self.features(images)
        return self._apply_head(fmap)


def build_model(
    backbone: str,
    *,
    pretrained: bool = False,
    weights: str | None = None,
    embed_dim: int = 128,
    grid: int = 4,
    frozen_bn: bool = False,
) -> DIMLModel:
    """Build a :class:`DIMLModel` on a named torchvision backbone (see :func:`diml.models.list_backbones`).

    ``pretrained=True`` loads torchvision's ImageNet weights through its weights API (``weights="DEFAULT"``);
    ``weights=PATH`` loads a torchvision state dict from a local file (``torch.load(..., weights_only=True)``).
    A missing file raises ``FileNotFoundError``; an unknown backbone raises ``ValueError`` listing the known ones.
    """
    net = build_backbone(backbone, pretrained=pretrained, weights_path=weights)
    return DIMLModel(net, embed_dim=embed_dim, grid=grid, frozen_bn=frozen_bn)
