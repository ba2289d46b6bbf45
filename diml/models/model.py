"""The DIML embedding model: a backbone map pooled to a grid, one embedding head for the cells and the global vector.

Following the authors' code (Zhao et al., ICCV 2021, ``architectures/resnet50_diml.py`` and
``evaluation/eval_diml.py`` in wl-zhao/DIML), the last feature map ``(B, C, h, w)`` is resized to the grid by bilinear
up-sampling to ``4 * grid`` (``align_corners=True`` as the authors; ``align_corners=False`` is the other choice) then
adaptive average pooling to ``grid x grid``. One linear head ``C -> D`` is applied as a 1x1 convolution to every cell
(``local_emb``). The global vector (``global_vector``) is either

* ``"map_mean"``: the head applied to the global input (the spatial mean of the map for CNNs, the class token for
  ViT) -- the authors' global vector of a baseline model (``last_linear(avgpool(map))``); because the head and the
  mean are linear it equals the mean of the dense (per-position) embeddings, so a model whose head was trained on
  the global embedding only already has test-time DIML cell embeddings, as in the paper's main table; or
* ``"cell_mean"``: the mean of the ``grid x grid`` cell embeddings -- the authors' global vector of a DIML-trained
  model (``feature_bank.mean(2)`` in their evaluation, ``batch.mean([2, 3])`` in their DIML losses).
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


ALIGN_CORNERS = True  # the authors' grid pooling
GLOBAL_VECTORS = ("map_mean", "cell_mean")


def pool_to_grid(feature_map: torch.Tensor, grid: int, *, align_corners: bool = ALIGN_CORNERS) -> torch.Tensor:
    """Resize ``feature_map (B, C, h, w)`` to ``(B, C, grid, grid)`` as the authors do.

    Bilinear up-sampling to ``(4 * grid, 4 * grid)`` with ``align_corners`` (the authors: ``True``), then adaptive
    average pooling to ``(grid, grid)``.
    """
    up = F.interpolate(feature_map, size=(4 * grid, 4 * grid), mode="bilinear", align_corners=align_corners)
    return F.adaptive_avg_pool2d(up, grid)


class DIMLModel(nn.Module):
    """Backbone + grid pooling + one shared embedding head.

    ``forward(images (B, 3, H, W)) -> Embeddings(global_emb (B, D), local_emb (B, D, grid * grid))``.

    Attributes: ``backbone``, ``head`` (``nn.Linear(C, D)``), ``grid``, ``embed_dim``, ``frozen_bn``,
    ``align_corners`` (grid pooling, see :func:`pool_to_grid`), ``global_vector`` (``"map_mean"`` or
    ``"cell_mean"``, see the module docstring). With ``frozen_bn`` the backbone's BatchNorm layers stay in eval mode
    (running statistics frozen, affine parameters still trainable) even after ``model.train()``.
    """

    def __init__(self, backbone: nn.Module, *, embed_dim: int = 128, grid: int = 4, frozen_bn: bool = False,
                 align_corners: bool = ALIGN_CORNERS, global_vector: str = "map_mean") -> None:
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive integer, got {embed_dim}")
        if grid < 1:
            raise ValueError(f"grid must be a positive integer, got {grid}")
        if global_vector not in GLOBAL_VECTORS:
            raise ValueError(f"global_vector must be one of {GLOBAL_VECTORS}, got {global_vector!r}")
        if not isinstance(align_corners, bool):
            raise ValueError(f"align_corners must be true or false, got {align_corners!r}")
        self.align_corners = align_corners
        self.global_vector = global_vector
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
        cells = self._apply_head(self._pool(fmap)).flatten(2)
        global_emb = cells.mean(dim=2) if self.global_vector == "cell_mean" else self.head(global_input)
        return Embeddings(global_emb, cells)

    def _pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return pool_to_grid(fmap, self.grid, align_corners=self.align_corners)

    def cell_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """The cell embeddings as a map, for explanations: ``(B, D, grid, grid)`` (same values as ``local_emb``)."""
        fmap, _ = self.features(images)
        return self._apply_head(self._pool(fmap))

    def dense_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """The head applied at every position of the unpooled map: ``(B, D, h, w)`` (finer heatmaps)."""
        fmap, _ = self.features(images)
        return self._apply_head(fmap)


def build_model(
    backbone: str,
    *,
    pretrained: bool | str | None = False,
    weights: str | None = None,
    embed_dim: int = 128,
    grid: int = 4,
    frozen_bn: bool = False,
    align_corners: bool = ALIGN_CORNERS,
    global_vector: str = "map_mean",
) -> DIMLModel:
    """Build a :class:`DIMLModel` on a named torchvision backbone (see :func:`diml.models.list_backbones`).

    ``pretrained`` names torchvision ImageNet weights of the backbone (``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"``,
    ``"DEFAULT"``, ... see :func:`diml.models.weights_name`; ``True`` means ``"DEFAULT"``, ``False``/``None``/
    ``"none"`` none); ``weights=PATH`` loads a torchvision state dict from a local file
    (``torch.load(..., weights_only=True)``). A missing file raises ``FileNotFoundError``; an unknown backbone or
    weights name raises ``ValueError`` listing the known ones.
    """
    net = build_backbone(backbone, pretrained=pretrained, weights_path=weights)
    return DIMLModel(net, embed_dim=embed_dim, grid=grid, frozen_bn=frozen_bn, align_corners=align_corners,
                     global_vector=global_vector)
