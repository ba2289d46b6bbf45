"""DIML and baseline metric-learning losses (issue 3), chosen by name.

Public API:

* :func:`check_loss` (validate a choice without building it), :func:`build_loss` -> :class:`MetricLoss` (``forward(global_emb (B, D), local_emb (B, D, R), labels (B,))``),
  :func:`list_losses`, :func:`list_miners`.
* :class:`StructuralSimilarity` / :class:`StructuralDistance`: DIML's structural similarity as pytorch-metric-learning
  distances over packed embeddings (:func:`pack_embeddings`), usable with any PML pair loss or miner.

``build_loss("margin", {"beta": 1.2}, similarity="diml", ...)`` is the paper's margin-DIML and
``build_loss("multisimilarity", similarity="diml", ...)`` its multi-similarity-DIML.
"""

from .build import MetricLoss, build_loss, check_loss, list_losses, list_miners, needs_positive_pairs
from .param_groups import AUTHORS_LOSS_RATES, authors_loss_lr, loss_param_groups
from .structural import StructuralDistance, StructuralSimilarity, pack_embeddings, unpack_embeddings

__all__ = [
    "AUTHORS_LOSS_RATES",
    "MetricLoss",
    "StructuralDistance",
    "StructuralSimilarity",
    "authors_loss_lr",
    "build_loss",
    "check_loss",
    "list_losses",
    "list_miners",
    "loss_param_groups",
    "needs_positive_pairs",
    "pack_embeddings",
    "unpack_embeddings",
]
