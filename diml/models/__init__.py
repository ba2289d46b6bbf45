"""DIML models: torchvision backbones keeping their spatial map, grid pooling and a shared 1x1-conv embedding head.

``build_model(backbone, ...) -> DIMLModel``; ``DIMLModel(images (B, 3, H, W)) -> Embeddings(global_emb (B, D),
local_emb (B, D, R))`` with ``R = grid * grid`` row-major cells.
"""

from diml.models.backbones import (
    BackboneEntry,
    BackboneOutput,
    build_backbone,
    get_backbone_entry,
    list_backbones,
    register_backbone,
)
from diml.models.model import DIMLModel, Embeddings, build_model, pool_to_grid

__all__ = [
    "BackboneEntry",
    "BackboneOutput",
    "DIMLModel",
    "Embeddings",
    "build_backbone",
    "build_model",
    "get_backbone_entry",
    "list_backbones",
    "pool_to_grid",
    "register_backbone",
]
