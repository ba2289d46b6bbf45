r"""Batch miners, chosen by name from :data:`MINERS`.

Miners run on the **global** embedding with the Euclidean distance of L2-normalised vectors (as the authors' DIML
training code mines on the pooled feature), also when the loss itself is structural: mining then costs no optimal
transport.  The per-anchor samplers below follow the batch miners of the authors' code base (Roth et al., "Revisiting
Training Strategies and Generalization Performance in Deep Metric Learning", ICML 2020), batched:

* ``random``   -- per anchor a uniform positive and a uniform negative.
* ``semihard`` -- a uniform positive :math:`p`; a uniform negative among the semi-hard ones
  :math:`d_{ap} < d_{an} < d_{ap} + \text{margin}` (Schroff et al., FaceNet), else a uniform negative.
* ``softhard`` -- a uniform positive among those farther than the anchor's closest negative
  (:math:`d_{ap} > \min_n d_{an}`), else a uniform positive; a uniform negative among those closer than the anchor's
  farthest positive (:math:`d_{an} < \max_p d_{ap}`), else a uniform negative.
* ``distance`` -- distance-weighted sampling (Wu et al., "Sampling Matters in Deep Embedding Learning", ICCV 2017,
  Sec. 4): a uniform positive and a negative drawn with probability :math:`\propto q(d)^{-1}`,
  :math:`\log q(d)^{-1} = (2 - n)\log d - \tfrac{n - 3}{2}\log(1 - d^2/4)` for embedding dimension :math:`n`, with
  :math:`d` clamped below at ``lower_cutoff`` (0.5); negatives beyond ``upper_cutoff`` are excluded when it is set
  (the authors leave it off).  The authors hard-code :math:`n = 128`; we use the embedding's dimension.

Each yields one triplet per anchor that has a positive (another sample of its class) and a negative; anchors without
them are dropped (the authors' samplers then pick the anchor itself as its positive).  Random draws come from the
miner's own ``torch.Generator`` (``seed``), so DDP ranks that mine the same gathered batch draw the same triplets, and
its state is part of the module's ``state_dict`` (checkpoints resume the same draws).

Also registered, from pytorch-metric-learning: ``batchhard`` (hardest positive and negative per anchor) and
``multisimilarity`` (the pair mining of Wang et al., CVPR 2019, with ``epsilon``).
"""

from __future__ import annotations

import torch
from pytorch_metric_learning import miners as pml_miners

from .registry import Param, Registry, integer, number, optional

MINERS = Registry("miner")
_NEG_INF = float("-inf")
_SEED = {"seed": Param(0, integer(low=0))}


def sample_rows(log_weights: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one column per row with probability ``softmax(log_weights[row])`` (Gumbel-max trick).

    Args:
        log_weights: ``(N, M)``; ``-inf`` excludes a column.
        generator: CPU generator for the uniform draws (moved to ``log_weights.device`` afterwards).
    Returns:
        ``index (N,)`` int64 and ``valid (N,)`` bool (rows with at least one finite weight).
    """
    u = torch.rand(log_weights.shape, generator=generator, dtype=torch.float64).to(log_weights.device)
    gumbel = -torch.log(-torch.log(u.clamp(min=1e-300)))
    index = (log_weights.to(torch.float64) + gumbel).argmax(dim=1)
    return index, torch.isfinite(log_weights).any(dim=1)


def uniform(mask: torch.Tensor) -> torch.Tensor:
    """Log-weights ``0`` where ``mask`` else ``-inf``: ``(N, M)`` bool -> ``(N, M)`` float."""
    return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, _NEG_INF)


def uniform_or_fallback(mask: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Uniform over ``mask`` for rows where it selects something, else uniform over ``fallback``."""
    has_any = mask.any(dim=1, keepdim=True)
    return uniform(torch.where(has_any, mask, fallback))


class TripletSampler(pml_miners.BaseMiner):
    """One triplet per anchor: subclasses give log-weights for the positive, then for the negative.

    The weight hooks take ``dist (N, M)``, the masks ``pos``/``neg (N, M)``, the sampled ``d_ap (N, 1)`` and the
    embedding dimension ``dim``; ``mine`` returns ``(anchors, positives, negatives)`` int64 tensors of equal length.
    """

    def __init__(self, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.generator = torch.Generator().manual_seed(seed)

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state):
        self.generator.set_state(state["generator"])

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        dist = self.distance(embeddings, ref_emb)  # (N, M) Euclidean distances of normalised vectors
        same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
        pos = same.clone()
        if embeddings is ref_emb:
            pos.fill_diagonal_(False)
        neg = ~same
        positives, has_pos = sample_rows(self.positive_log_weights(dist, pos, neg), self.generator)
        d_ap = dist.gather(1, positives.unsqueeze(1))  # (N, 1)
        neg_log_weights = self.negative_log_weights(dist, pos, neg, d_ap, embeddings.shape[1])
        negatives, has_neg = sample_rows(neg_log_weights, self.generator)
        keep = has_pos & has_neg
        anchors = torch.arange(len(labels), device=labels.device)[keep]
        return anchors, positives[keep], negatives[keep]

    def positive_log_weights(self, dist, pos, neg):
        return uniform(pos)

    def negative_log_weights(self, dist, pos, neg, d_ap, dim):
        return uniform(neg)


@MINERS.register("random", params=_SEED)
class RandomTripletSampler(TripletSampler):
    """Uniform positive and uniform negative per anchor."""


@MINERS.register("semihard", params={**_SEED, "margin": Param(0.2, number(low=0, low_open=True))})
class SemihardTripletSampler(TripletSampler):
    """Uniform positive; uniform semi-hard negative ``d_ap < d_an < d_ap + margin``, else uniform negative."""

    def __init__(self, margin: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.margin = margin

    def negative_log_weights(self, dist, pos, neg, d_ap, dim):
        semihard = neg & (dist > d_ap) & (dist < d_ap + self.margin)
        return uniform_or_fallback(semihard, neg)


@MINERS.register("softhard", params=_SEED)
class SofthardTripletSampler(TripletSampler):
    """Positives farther than the closest negative, negatives closer than the farthest positive (else uniform)."""

    def positive_log_weights(self, dist, pos, neg):
        closest_neg = dist.masked_fill(~neg, float("inf")).amin(dim=1, keepdim=True)
        return uniform_or_fallback(pos & (dist > closest_neg), pos)

    def negative_log_weights(self, dist, pos, neg, d_ap, dim):
        farthest_pos = dist.masked_fill(~pos, _NEG_INF).amax(dim=1, keepdim=True)
        return uniform_or_fallback(neg & (dist < farthest_pos), neg)


@MINERS.register(
    "distance",
    params={
        **_SEED,
        "lower_cutoff": Param(0.5, number(low=0, high=2, low_open=True)),
        "upper_cutoff": Param(None, optional(number(low=0, high=2, low_open=True))),
    },
)
class DistanceWeightedSampler(TripletSampler):
    """Uniform positive; negative with probability proportional to the inverse sphere density ``q(d)^-1``."""

    def __init__(self, lower_cutoff: float = 0.5, upper_cutoff: float | None = None, **kwargs):
        super().__init__(**kwargs)
        if upper_cutoff is not None and upper_cutoff <= lower_cutoff:
            raise ValueError(
                f"upper_cutoff must exceed lower_cutoff (got {upper_cutoff} <= {lower_cutoff}); raise it or pass None"
            )
        self.lower_cutoff, self.upper_cutoff = lower_cutoff, upper_cutoff

    def negative_log_weights(self, dist, pos, neg, d_ap, dim):
        n = float(dim)
        d = dist.clamp(min=self.lower_cutoff)
        one_minus = torch.clamp(1.0 - 0.25 * d * d, min=1e-8)
        log_q_inv = (2.0 - n) * torch.log(d) - 0.5 * (n - 3.0) * torch.log(one_minus)
        allowed = neg if self.upper_cutoff is None else neg & (dist <= self.upper_cutoff)
        allowed = torch.where(allowed.any(dim=1, keepdim=True), allowed, neg)
        return log_q_inv.masked_fill(~allowed, _NEG_INF)


@MINERS.register("batchhard")
def _batch_hard():
    return pml_miners.BatchHardMiner()


@MINERS.register("multisimilarity", params={"epsilon": Param(0.1, number(low=0))})
def _multi_similarity(epsilon):
    return pml_miners.MultiSimilarityMiner(epsilon=epsilon)
