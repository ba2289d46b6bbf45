"""DIML models: torchvision backbones keeping their spatial map, grid pooling and a shared 1x1-conv embedding head.

``build_model(backbone, ...) -> DIMLModel``; ``DIMLModel(images (B, 3, H, W)) -> Embeddings(global_emb (B, D),
local_emb (B, D, R))`` with ``R = grid * grid`` row-major cells.  :mod:`diml.models.checkpoint` is the one checkpoint
format of a trained model (:func:`save_checkpoint`, :func:`read_checkpoint`, :func:`load_checkpoint`).
"""

from diml.models.backbones import (
    BackboneEntry,
    BackboneOutput,
    build_backbone,
    get_backbone_entry,
    list_backbones,
    register_backbone,
    weights_name,
)
from diml.models.checkpoint import load_checkpoint, model_config, read_checkpoint, save_checkpoint
from diml.models.model import ALIGN_CORNERS, GLOBAL_VECTORS, DIMLModel, Embeddings, build_model, pool_to_grid

__all__ = [
    "ALIGN_CORNERS",
    "GLOBAL_VECTORS",
    "BackboneEntry",
    "BackboneOutput",
    "DIMLModel",
    "Embeddings",
    "build_backbone",
    "build_model",
    "get_backbone_entry",
    "list_backbones",
    "load_checkpoint",
    "model_config",
    "pool_to_grid",
    "read_checkpoint",
    "register_backbone",
    "save_checkpoint",
    "weights_name",
]
