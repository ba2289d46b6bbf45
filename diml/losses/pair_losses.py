r"""Pair-based losses that pytorch-metric-learning lacks or defines differently from the DIML paper's study.

All take their distance by injection (``self.distance``), so they run structurally with
:class:`~diml.losses.structural.StructuralDistance` / :class:`~diml.losses.structural.StructuralSimilarity` exactly as
with the global distances.  Everything is batched over the ``(N, M)`` distance matrix.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.losses import (
    AngularLoss,
    BaseMetricLossFunction,
    GeneralizedLiftedStructureLoss,
    HistogramLoss,
    MarginLoss,
    MultiSimilarityLoss,
    NPairsLoss,
)
from pytorch_metric_learning.distances import DotProductSimilarity
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu


def pair_masks(labels, ref_labels, same_batch: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive (same label, not the sample itself) and negative masks: ``(N,)``, ``(M,)`` -> two ``(N, M)`` bool."""
    same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
    pos = same.clone()
    if same_batch:
        pos.fill_diagonal_(False)
    return pos, ~same


def element_losses(name: str, losses: torch.Tensor) -> dict:
    """A PML loss-dict entry reducing ``losses (K,)`` element-wise (a mean under ``MeanReducer``)."""
    return {name: {"losses": losses, "indices": torch.arange(len(losses), device=losses.device),
                   "reduction_type": "element"}}


class MinedMultiSimilarityLoss(MultiSimilarityLoss):
    r"""Multi-similarity loss with its pair mining, as in the DIML paper (Wang et al., CVPR 2019, Sec. 3-4).

    For anchor :math:`i` with positives :math:`P_i` and negatives :math:`N_i` (similarities :math:`s`), mining keeps
    :math:`\tilde N_i = \{n : s_{in} + m > \min_{p \in P_i} s_{ip}\}` and
    :math:`\tilde P_i = \{p : s_{ip} - m < \max_{n \in N_i} s_{in}\}`; then

    .. math:: \ell_i = \frac{1}{\alpha}\log\Big(1 + \sum_{p \in \tilde P_i} e^{-\alpha (s_{ip} - \lambda)}\Big)
                     + \frac{1}{\beta}\log\Big(1 + \sum_{n \in \tilde N_i} e^{\beta (s_{in} - \lambda)}\Big)

    averaged over the anchors whose mined sets are non-empty (one is empty iff the other is).  ``base`` is
    :math:`\lambda`, ``margin`` is :math:`m`; the paper uses :math:`\alpha = 2, \beta = 40, \lambda = 0.5, m = 0.1`.
    Mining and loss share one similarity matrix (one structural matching for both).  Requires a similarity
    (``distance.is_inverted``).
    """

    def __init__(self, alpha=2.0, beta=40.0, base=0.5, margin=0.1, **kwargs):
        super().__init__(alpha=alpha, beta=beta, base=base, **kwargs)
        self.margin = margin

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        if indices_tuple is not None:
            raise ValueError("indices_tuple must be None: the multi-similarity loss mines its own pairs")
        if not self.distance.is_inverted:
            raise ValueError("the multi-similarity loss needs a similarity (distance.is_inverted=True)")
        pos, neg = pair_masks(labels, ref_labels, embeddings is ref_emb)
        if not (pos.any() and neg.any()):
            return self.zero_losses()
        mat = self.distance(embeddings, ref_emb)
        sim = mat.detach()
        hardest_pos = sim.masked_fill(~pos, float("inf")).amin(dim=1, keepdim=True)
        hardest_neg = sim.masked_fill(~neg, float("-inf")).amax(dim=1, keepdim=True)
        mined_pos = pos & (sim - self.margin < hardest_neg)
        mined_neg = neg & (sim + self.margin > hardest_pos)
        rows = mined_pos.any(dim=1) & mined_neg.any(dim=1)
        if not rows.any():
            return self.zero_losses()
        per_row = super()._compute_loss(mat, mined_pos.to(mat.dtype), mined_neg.to(mat.dtype))["loss"]["losses"]
        return element_losses("loss", per_row.reshape(-1)[rows])


MARGIN_COUNTS = ("terms", "triplets")


class CountedMarginLoss(MarginLoss):
    r"""PML's margin loss with a choice of divisor (Wu et al. 2017):

    .. math:: L = \frac{\sum_t [d_{ap} - \beta_{y_a} + m]_+ + [\beta_{y_a} - d_{an} + m]_+}{Z}

    ``count="terms"``: :math:`Z` = the number of non-zero terms (Wu et al.'s MXNet code, PML); ``count="triplets"``:
    :math:`Z` = the number of triplets with a non-zero term -- what the authors' code computes
    (``torch.sum((pos_loss > 0.) + (neg_loss > 0.))``: adding two bool tensors in PyTorch is a logical *or*).
    """

    def __init__(self, *, count: str = "terms", **kwargs):
        if count not in MARGIN_COUNTS:
            raise ValueError(f"count must be one of {MARGIN_COUNTS} (got {count!r})")
        if count == "triplets" and kwargs.get("nu", 0):
            raise ValueError("count='triplets' (the authors' divisor) has no beta regulariser: set nu to 0")
        super().__init__(**kwargs)
        self.count = count

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        loss_dict = super().compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        term = loss_dict["margin_loss"]
        if self.count == "triplets" and "divisor" in term:
            term["divisor"] = torch.sum(term["losses"] > 0)  # both hinges are >= 0: sum > 0 iff one is active
        return loss_dict


class GeneralizedLiftedLoss(GeneralizedLiftedStructureLoss):
    r"""Generalized lifted structure loss (Hermans et al., "In Defense of the Triplet Loss", 2017, p. 4):

    .. math:: \ell_i = \Big[\log \sum_{p \in P_i} e^{d_{ip} - m_+} + \log \sum_{n \in N_i} e^{m_- - d_{in}}\Big]_+

    averaged over the anchors that have both a positive and a negative.  PML's version fills the log of an empty
    sum with 0 (so a batch of distinct labels still has a loss); here such anchors contribute nothing, as the
    definition (:math:`\log 0 = -\infty`) says.
    """

    def _compute_loss(self, mat, pos_mask, neg_mask):
        rows = pos_mask.bool().any(dim=1) & neg_mask.bool().any(dim=1)
        per_row = super()._compute_loss(mat, pos_mask, neg_mask)["loss"]["losses"].reshape(-1)
        if not rows.any():
            return self.zero_losses()
        return element_losses("loss", per_row[rows])


class QuadrupletLoss(BaseMetricLossFunction):
    r"""Quadruplet loss (Chen et al., "Beyond Triplet Loss", CVPR 2017, Sec. 3), batched over all fourth samples.

    For each triplet :math:`(a, p, n)` (from the miner, else all triplets) and every sample :math:`m` whose label
    differs from both the anchor's and the negative's:

    .. math:: L = \operatorname{mean}_{(a,p,n)} [d_{ap} - d_{an} + \alpha_1]_+
                 + \operatorname{mean}_{(a,p,n),m} [d_{ap} - d_{nm} + \alpha_2]_+

    with the injected distance (Euclidean of normalised vectors by default, unsquared as in the authors' code base,
    which draws one random :math:`m` per triplet where we average over all of them).  With a similarity the
    differences are reversed (``distance.margin``).
    """

    def __init__(self, margin_1=0.2, margin_2=0.2, **kwargs):
        super().__init__(**kwargs)
        self.margin_1, self.margin_2 = margin_1, margin_2
        self.add_to_recordable_attributes(list_of_names=["margin_1", "margin_2"], is_stat=False)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        anchor, positive, negative = lmu.convert_to_triplets(indices_tuple, labels, ref_labels, t_per_anchor="all")
        if len(anchor) == 0:
            return self.zero_losses()
        mat = self.distance(embeddings, ref_emb)
        d_ap = mat[anchor, positive]
        triplet = torch.relu(self.distance.margin(d_ap, mat[anchor, negative]) + self.margin_1)
        fourth = (labels.unsqueeze(0) != labels[anchor].unsqueeze(1)) & (
            labels.unsqueeze(0) != labels[negative].unsqueeze(1)
        )  # (T, N)
        t_idx, m_idx = torch.where(fourth)
        losses = {"triplet_loss": {"losses": triplet, "indices": (anchor, positive, negative),
                                   "reduction_type": "triplet"}}
        if len(t_idx) == 0:
            losses["quadruplet_loss"] = self.zero_loss()
            return losses
        quad = torch.relu(self.distance.margin(d_ap[t_idx], mat[negative[t_idx], m_idx]) + self.margin_2)
        losses.update(element_losses("quadruplet_loss", quad))
        return losses

    def _sub_loss_names(self):
        return ["triplet_loss", "quadruplet_loss"]


HISTOGRAM_TOP_GAP = 1e-4  # below every bin width 2 / n_bins for n_bins <= 10_000


class BoundedHistogramLoss(HistogramLoss):
    """PML's histogram loss (Ustinova & Lempitsky, NeurIPS 2016) with similarities clamped into
    ``[-1, 1 - HISTOGRAM_TOP_GAP]`` before binning: PML indexes one bin past the end for a similarity of exactly 1
    (duplicate images, or float rounding just above 1) and crashes."""

    def compute_density(self, distances):
        return super().compute_density(distances.clamp(min=-1.0, max=1.0 - HISTOGRAM_TOP_GAP))



class NormalizedAngularLoss(AngularLoss):
    """PML's angular loss (Wang et al., "Deep Metric Learning with Angular Loss", ICCV 2017) on L2-normalised
    embeddings.  PML normalises the anchors and positives but multiplies by the raw negatives, so unnormalised model
    outputs would change its value.

    ``angular_weight`` scales the angular term; ``npair_weight > 0`` adds, as the authors' ``criteria/angular.py``
    does, the N-pair loss (:class:`~pytorch_metric_learning.losses.NPairsLoss`: one anchor-positive pair per class,
    softmax over the anchors' dot products with every class's positive) on the *raw*, unnormalised embeddings (the
    authors: ``npair + 2 * angular + 0.005 * mean |x|``; the L2 term is the loss's ``embedding_regularizer``).
    """

    def __init__(self, alpha=45.0, *, angular_weight: float = 1.0, npair_weight: float = 0.0, **kwargs):
        super().__init__(alpha=alpha, **kwargs)
        self.angular_weight, self.npair_weight = float(angular_weight), float(npair_weight)
        self.npair = NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False)) if npair_weight else None

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        same = ref_emb is embeddings
        raw = embeddings
        embeddings = self.distance.normalize(embeddings)
        ref_emb = embeddings if same else self.distance.normalize(ref_emb)
        losses = super().compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if self.angular_weight != 1.0 and isinstance(losses["loss"]["losses"], torch.Tensor):
            losses["loss"]["losses"] = losses["loss"]["losses"] * self.angular_weight
        if self.npair is None:
            return losses
        npair = self.npair.compute_loss(raw, labels, indices_tuple, raw, labels)["loss"]
        if isinstance(npair["losses"], torch.Tensor):
            npair["losses"] = npair["losses"] * self.npair_weight
        losses["npair_loss"] = npair
        return losses

    def _sub_loss_names(self):
        return ["loss", "npair_loss"] if getattr(self, "npair", None) is not None else ["loss"]
