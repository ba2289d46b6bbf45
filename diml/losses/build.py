"""``build_loss``: a loss (and optional miner) by name, global or structural, as one ``nn.Module``."""

from __future__ import annotations

import torch
from torch import nn

from diml.options import OTOptions, as_options

from .catalog import LOSSES
from .miners import MINERS
from .registry import resolve_params
from .structural import StructuralDistance, StructuralSimilarity, pack_embeddings

SIMILARITIES = ("global", "diml")


class MetricLoss(nn.Module):
    """A built loss: ``forward(global_emb (B, D), local_emb (B, D, R) | None, labels (B,)) -> scalar``.

    The miner (if any) always mines on the global embedding; the loss sees the global embedding
    (``similarity="global"``) or the packed ``(B, D, R + 1)`` embeddings and a structural distance
    (``similarity="diml"``).  Learnable loss parameters (margin ``beta`` per class, proxies, class weights) are this
    module's ``parameters()``; the miner's random state is in its ``state_dict()``.

    With ``mined_pairs_only`` (a structural loss that reads only the mined pairs of the distance matrix), only the
    mined (anchor, positive) and (anchor, negative) pairs are matched: ``O(B)`` instead of ``O(B^2)`` OT problems.

    Attributes: ``name``, ``similarity``, ``num_classes``, ``embed_dim``, ``loss`` (the PML loss), ``miner`` (PML
    miner or ``None``), ``mined_pairs_only``.
    """

    def __init__(self, name: str, loss: nn.Module, miner: nn.Module | None, *, similarity: str, num_classes: int,
                 embed_dim: int, mined_pairs_only: bool = False):
        super().__init__()
        self.name, self.similarity = name, similarity
        self.num_classes, self.embed_dim = num_classes, embed_dim
        self.loss, self.miner = loss, miner
        self.mined_pairs_only = mined_pairs_only and similarity == "diml" and miner is not None

    def forward(self, global_emb: torch.Tensor, local_emb: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        self._check_inputs(global_emb, local_emb, labels)
        indices_tuple = self.miner(global_emb.detach(), labels) if self.miner is not None else None
        if self.similarity == "global":
            return self.loss(global_emb, labels, indices_tuple)
        embeddings = pack_embeddings(global_emb, local_emb)
        if not self.mined_pairs_only:
            return self.loss(embeddings, labels, indices_tuple)
        with self.loss.distance.restricted_to(*mined_pairs(indices_tuple)):
            return self.loss(embeddings, labels, indices_tuple)

    def _check_inputs(self, global_emb, local_emb, labels) -> None:
        if not isinstance(global_emb, torch.Tensor) or global_emb.ndim != 2 or global_emb.shape[1] != self.embed_dim:
            shape = tuple(global_emb.shape) if isinstance(global_emb, torch.Tensor) else type(global_emb).__name__
            raise ValueError(f"global_emb must have shape (B, {self.embed_dim}) (got {shape})")
        if local_emb is None and self.similarity == "diml":
            raise ValueError("local_emb (B, D, R) is required with similarity='diml'; pass the model's local_emb")
        if local_emb is not None and (local_emb.ndim != 3 or local_emb.shape[:2] != global_emb.shape):
            raise ValueError(
                f"local_emb must have shape (B, D, R) = ({global_emb.shape[0]}, {global_emb.shape[1]}, R) "
                f"(got {tuple(local_emb.shape)})"
            )
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or len(labels) != len(global_emb):
            raise ValueError(f"labels must be an int64 tensor of shape ({len(global_emb)},)")
        if labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64 (got {labels.dtype}); convert them with .long()")
        if len(labels) and bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise ValueError(
                f"labels must lie in [0, num_classes={self.num_classes}); remap the training labels to 0..C-1"
            )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, similarity={self.similarity!r}"


def mined_pairs(indices_tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns of the pairs a miner's tuple touches: triplets ``(a, p, n)`` or pairs ``(a1, p, a2, n)``."""
    if len(indices_tuple) == 3:
        anchor, positive, negative = indices_tuple
        return torch.cat([anchor, anchor]), torch.cat([positive, negative])
    anchor_1, positive, anchor_2, negative = indices_tuple
    return torch.cat([anchor_1, anchor_2]), torch.cat([positive, negative])


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1 (got {value!r})")


def _structural_distance(metric: str, ot: OTOptions):
    if metric == "cosine":
        return StructuralSimilarity(ot=ot)
    return StructuralDistance(ot=ot, cell_distance=metric)


def build_loss(
    name: str,
    params: dict | None = None,
    *,
    similarity: str = "global",
    num_classes: int,
    embed_dim: int,
    miner: str | None = None,
    miner_params: dict | None = None,
    ot: OTOptions = OTOptions(),
) -> MetricLoss:
    """Build loss ``name`` with hyperparameters ``params`` (unset ones take the defaults of :data:`LOSSES`).

    Args:
        similarity: ``"global"`` (pair losses on the global embedding) or ``"diml"`` (pair losses on the structural
            similarity/distance; not available for proxy/classification losses).
        num_classes: classes of the training labels (proxies, per-class margins); labels must lie in
            ``[0, num_classes)``.
        embed_dim: ``D``.
        miner: a name from :func:`list_miners` (only for losses that take mined indices) with ``miner_params``.
        ot: :class:`~diml.ot.OTOptions` of :func:`diml.ot.match`; used only with ``similarity="diml"`` (a
            training run uses :data:`diml.ot.TRIAL_TRAINING_OT`).
    Raises:
        ValueError: unknown name / hyperparameter, invalid value, or an impossible combination.
    """
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("embed_dim", embed_dim)
    resolved = check_loss(name, params, similarity=similarity, miner=miner, miner_params=miner_params)
    entry = LOSSES.get(name)
    metric = entry.info["metric"]
    ot = as_options(ot)
    miner_module = _build_miner(miner, miner_params)
    loss_module = entry.factory(**resolved, num_classes=num_classes, embed_dim=embed_dim)
    if similarity == "diml":
        loss_module.distance = _structural_distance(metric, ot)
    # A triplet loss with ``swap`` also reads the positive-negative distance, outside the mined pairs.
    mined_pairs_only = entry.info.get("mined_pairs_only", False) and not resolved.get("swap", False)
    return MetricLoss(name, loss_module, miner_module, similarity=similarity, num_classes=num_classes,
                      embed_dim=embed_dim, mined_pairs_only=mined_pairs_only)


def check_loss(name: str, params: dict | None = None, *, similarity: str = "global", miner: str | None = None,
               miner_params: dict | None = None) -> dict:
    """Check a loss choice against the registries without building anything (spec validation uses this).

    Returns the resolved hyperparameters of loss ``name``; raises ``ValueError`` for an unknown loss or miner, an
    unknown or invalid hyperparameter, or a combination that cannot work (a structural form of a proxy loss, a miner
    for a loss that selects its own pairs). :func:`build_loss` runs the same checks.
    """
    entry = LOSSES.get(name)
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES} (got {similarity!r})")
    resolved = resolve_params(f"loss {name!r}", entry.params, params)
    if similarity == "diml" and entry.info["metric"] is None:
        raise ValueError(
            f"loss {name!r} works on the global embedding (proxies/classes or embedding geometry) and has no "
            f"structural form; use similarity='global' (DIML can still re-rank at test time), or a pair loss: "
            f"{', '.join(n for n in LOSSES.names() if LOSSES.get(n).info['metric'])}"
        )
    raw = [f"params.{key}={resolved[key]!r}" for key, off in (("normalize", True), ("l2_weight", 0.0))
           if key in resolved and resolved[key] != off]
    if similarity == "diml" and raw:
        raise ValueError(
            f"loss {name!r}: {' and '.join(raw)} apply to the global similarity only (the structural similarity "
            "compares normalised cells); use similarity='global' for the authors' unnormalised baseline, or drop them"
        )
    if miner is None:
        if miner_params:
            raise ValueError("miner_params were given without a miner; pass miner=<name> or drop miner_params")
    elif not entry.info["miner"]:
        raise ValueError(
            f"loss {name!r} selects its own pairs or uses proxies and takes no miner; pass miner=None "
            f"(losses that take one: {', '.join(n for n in LOSSES.names() if LOSSES.get(n).info['miner'])})"
        )
    else:
        miner_entry = MINERS.get(miner)
        resolve_params(f"miner {miner!r}", miner_entry.params, miner_params)
    return resolved


def _build_miner(miner: str | None, miner_params: dict | None):
    if miner is None:
        return None
    entry = MINERS.get(miner)
    return entry.factory(**resolve_params(f"miner {miner!r}", entry.params, miner_params))


def needs_positive_pairs(name: str) -> bool:
    """Whether loss ``name`` learns from pairs of images of one class in a batch (pair, triplet, angular losses);
    proxy and classification losses learn from single images."""
    info = LOSSES.get(name).info
    return bool(info.get("positive_pairs", info["metric"] is not None))


def list_losses() -> list[str]:
    """Registered loss names, sorted."""
    return LOSSES.names()


def list_miners() -> list[str]:
    """Registered miner names, sorted."""
    return MINERS.names()
