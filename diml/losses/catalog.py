"""The loss registry :data:`LOSSES`: one entry per loss name, with its hyperparameters and defaults.

Defaults are the values of the DIML authors' code base (wl-zhao/DIML ``parameters.py``, itself Roth et al.'s
benchmark) unless stated.  Each entry's ``info`` says how :func:`diml.losses.build_loss` builds it:

* ``metric``: the pair metric of a pair-based loss -- ``"euclidean"`` (PML ``LpDistance`` of normalised vectors;
  structural: :class:`~diml.losses.StructuralDistance`), ``"cosine"`` (PML ``CosineSimilarity``/normalised dot
  product; structural: :class:`~diml.losses.StructuralSimilarity`), ``"snr"`` (PML ``SNRDistance``; structural:
  ``StructuralDistance(cell_distance="snr")``) -- or ``None`` for proxy/classification/embedding-geometry losses,
  which only run on the global embedding.
* ``miner``: whether the loss takes a miner's indices (``False``: it selects its own pairs or uses proxies).
* ``mined_pairs_only``: given a miner, the loss reads only the mined (anchor, positive) and (anchor, negative)
  entries of the distance matrix, so the structural distance matches only those pairs.
* ``positive_pairs``: whether the loss needs two images of a class in a batch (default: every loss with a pair
  ``metric``); a batch of one image per class gives such a loss nothing to learn from.

Every factory takes the resolved hyperparameters plus ``num_classes`` and ``embed_dim`` and returns a PML loss with
its default (global) distance; ``build_loss`` swaps in the structural distance for ``similarity="diml"``.
"""

from __future__ import annotations

from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import regularizers as pml_regularizers
from pytorch_metric_learning.reducers import MeanReducer

from .pair_losses import (
    BoundedHistogramLoss,
    CountedMarginLoss,
    GeneralizedLiftedLoss,
    MinedMultiSimilarityLoss,
    NormalizedAngularLoss,
    QuadrupletLoss,
)
from .registry import Param, Registry, boolean, choice, integer, number

LOSSES = Registry("loss")

_POSITIVE = number(low=0, low_open=True)
_NON_NEGATIVE = number(low=0)


@LOSSES.register(
    "margin",
    params={
        "margin": Param(0.2, _NON_NEGATIVE),
        "beta": Param(1.2, _NON_NEGATIVE),
        "nu": Param(0.0, _NON_NEGATIVE),
        "learn_beta": Param(True, boolean),
        "count": Param("terms", choice("terms", "triplets")),
    },
    metric="euclidean",
    miner=True,
    mined_pairs_only=True,
)
def _margin(margin, beta, nu, learn_beta, count, *, num_classes, embed_dim):
    """Margin loss (Wu et al. 2017): ``[d_ap - beta_y + margin]_+ + [beta_y - d_an + margin]_+`` over triplets,
    divided by the number of non-zero terms (``count="terms"``, Wu et al. and PML) or, as the authors' code
    computes it, by the number of triplets with a non-zero term (``count="triplets"``; see
    :class:`CountedMarginLoss`); ``beta`` is one learnable value per class (``learn_beta``, a parameter of the
    module so it can get its own learning rate).  With ``similarity="diml"`` this is the paper's margin-DIML."""
    return CountedMarginLoss(
        count=count, margin=margin, nu=nu, beta=beta, learn_beta=learn_beta,
        num_classes=num_classes if learn_beta else None,
    )


@LOSSES.register(
    "triplet",
    params={"margin": Param(0.2, _NON_NEGATIVE), "swap": Param(False, boolean), "smooth_loss": Param(False, boolean)},
    metric="euclidean",
    miner=True,
    mined_pairs_only=True,
)
def _triplet(margin, swap, smooth_loss, *, num_classes, embed_dim):
    """Triplet loss ``[d_ap - d_an + margin]_+`` averaged over all given triplets (the authors' mean; PML's default
    averages the non-zero ones only)."""
    return pml_losses.TripletMarginLoss(margin=margin, swap=swap, smooth_loss=smooth_loss, reducer=MeanReducer())


@LOSSES.register(
    "contrastive",
    params={"pos_margin": Param(0.0, _NON_NEGATIVE), "neg_margin": Param(1.0, _NON_NEGATIVE)},
    metric="euclidean",
    miner=True,
    mined_pairs_only=True,
)
def _contrastive(pos_margin, neg_margin, *, num_classes, embed_dim):
    """Contrastive loss: ``mean_pos [d - pos_margin]_+ + mean_neg [neg_margin - d]_+`` (the authors' means)."""
    return pml_losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin, reducer=MeanReducer())


@LOSSES.register(
    "multisimilarity",
    params={
        "alpha": Param(2.0, _POSITIVE),
        "beta": Param(40.0, _POSITIVE),
        "base": Param(0.5, number(low=-1, high=1)),
        "margin": Param(0.1, _NON_NEGATIVE),
    },
    metric="cosine",
    miner=False,
)
def _multisimilarity(alpha, beta, base, margin, *, num_classes, embed_dim):
    """Multi-similarity loss with its own pair mining (:class:`MinedMultiSimilarityLoss`); with
    ``similarity="diml"`` this is the paper's multi-similarity-DIML."""
    return MinedMultiSimilarityLoss(alpha=alpha, beta=beta, base=base, margin=margin)


def _raw_embedding_options(normalize: bool, l2_weight: float, distance) -> dict:
    """PML keyword arguments: ``distance`` (normalising or not) and the authors' L2 penalty on the raw embeddings."""
    options = {"distance": distance}
    if l2_weight:
        options.update(embedding_regularizer=pml_regularizers.LpRegularizer(p=2), embedding_reg_weight=l2_weight)
    return options


@LOSSES.register(
    "lifted",
    params={"neg_margin": Param(1.0, _NON_NEGATIVE), "pos_margin": Param(0.0, _NON_NEGATIVE),
            "normalize": Param(True, boolean), "l2_weight": Param(0.0, _NON_NEGATIVE)},
    metric="euclidean",
    miner=True,
)
def _lifted(neg_margin, pos_margin, normalize, l2_weight, *, num_classes, embed_dim):
    """Generalized lifted structure loss (:class:`GeneralizedLiftedLoss`) on Euclidean distances of normalised
    embeddings, or, with ``normalize=False`` and ``l2_weight=0.005``, as the authors' baseline (Roth et al.'s
    ``criteria/lifted.py``): distances of the raw embeddings plus an L2 penalty on their norms."""
    return GeneralizedLiftedLoss(neg_margin=neg_margin, pos_margin=pos_margin, **_raw_embedding_options(
        normalize, l2_weight, pml_distances.LpDistance(normalize_embeddings=normalize, p=2, power=1)))


@LOSSES.register("npair", params={"normalize": Param(True, boolean), "l2_weight": Param(0.0, _NON_NEGATIVE)},
                 metric="cosine", miner=False)
def _npair(normalize, l2_weight, *, num_classes, embed_dim):
    """N-pair loss (Sohn 2016, PML ``NPairsLoss``): cross-entropy of each anchor's similarities to one positive per
    class, on normalised embeddings; ``normalize=False`` with ``l2_weight=0.005``: the authors' baseline (dot products
    of the raw embeddings plus an L2 penalty on their norms, which keeps them from growing without bound)."""
    return pml_losses.NPairsLoss(**_raw_embedding_options(
        normalize, l2_weight, pml_distances.DotProductSimilarity(normalize_embeddings=normalize)))


@LOSSES.register("histogram", params={"n_bins": Param(65, integer(low=2, high=10_000))}, metric="cosine", miner=True)
def _histogram(n_bins, *, num_classes, embed_dim):
    """Histogram loss (Ustinova & Lempitsky 2016, :class:`BoundedHistogramLoss`) with ``n_bins`` bins on [-1, 1]:
    the probability that a negative pair is more similar than a positive one, over the unordered pairs of the
    triplets."""
    return BoundedHistogramLoss(n_bins=n_bins)


@LOSSES.register(
    "snr",
    params={"pos_margin": Param(0.0, _NON_NEGATIVE), "neg_margin": Param(1.0, _NON_NEGATIVE)},
    metric="snr",
    miner=True,
    mined_pairs_only=True,
)
def _snr(pos_margin, neg_margin, *, num_classes, embed_dim):
    """Signal-to-noise-ratio contrastive loss (Yuan et al. 2019, PML ``SignalToNoiseRatioContrastiveLoss``, mean
    over non-zero pair losses)."""
    return pml_losses.SignalToNoiseRatioContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin)


@LOSSES.register(
    "quadruplet",
    params={"margin_1": Param(0.2, _NON_NEGATIVE), "margin_2": Param(0.2, _NON_NEGATIVE)},
    metric="euclidean",
    miner=True,
)
def _quadruplet(margin_1, margin_2, *, num_classes, embed_dim):
    """Quadruplet loss (:class:`QuadrupletLoss`)."""
    return QuadrupletLoss(margin_1=margin_1, margin_2=margin_2, reducer=MeanReducer())


@LOSSES.register(
    "circle",
    params={"m": Param(0.4, number(low=0, high=1)), "gamma": Param(80.0, _POSITIVE)},
    metric="cosine",
    miner=True,
)
def _circle(m, gamma, *, num_classes, embed_dim):
    """Circle loss (Sun et al. 2020, PML ``CircleLoss``; fine-grained retrieval defaults m=0.4, gamma=80)."""
    return pml_losses.CircleLoss(m=m, gamma=gamma)


@LOSSES.register("proxynca", params={"softmax_scale": Param(9.0, _POSITIVE)}, metric=None, miner=False)
def _proxynca(softmax_scale, *, num_classes, embed_dim):
    """Proxy-NCA (Movshovitz-Attias et al. 2017, PML ``ProxyNCALoss``): softmax over ``-scale * d^2`` to the
    normalised proxies.  The authors scale embeddings and proxies to radius 3 (scale 9 = 3^2) and leave the
    positive proxy out of the denominator; PML keeps it in."""
    return pml_losses.ProxyNCALoss(num_classes=num_classes, embedding_size=embed_dim, softmax_scale=softmax_scale)


@LOSSES.register(
    "proxyanchor",
    params={"margin": Param(0.1, _NON_NEGATIVE), "alpha": Param(32.0, _POSITIVE)},
    metric=None,
    miner=False,
)
def _proxyanchor(margin, alpha, *, num_classes, embed_dim):
    """Proxy-anchor loss (Kim et al. 2020, PML ``ProxyAnchorLoss``, the paper's margin 0.1 and alpha 32)."""
    return pml_losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=embed_dim, margin=margin, alpha=alpha)


@LOSSES.register(
    "arcface",
    params={"margin": Param(28.6, number(low=0, high=90)), "scale": Param(16.0, _POSITIVE)},
    metric=None,
    miner=False,
)
def _arcface(margin, scale, *, num_classes, embed_dim):
    """ArcFace (Deng et al. 2019, PML ``ArcFaceLoss``); ``margin`` in degrees (28.6 = the authors' 0.5 rad),
    ``scale`` 16 as the authors."""
    return pml_losses.ArcFaceLoss(num_classes=num_classes, embedding_size=embed_dim, margin=margin, scale=scale)


@LOSSES.register(
    "softtriple",
    params={
        "centers_per_class": Param(2, integer(low=1)),
        "la": Param(8.0, _POSITIVE),
        "gamma": Param(0.1, _POSITIVE),
        "margin": Param(0.01, _NON_NEGATIVE),
        "reg_weight": Param(0.2, _NON_NEGATIVE),
    },
    metric=None,
    miner=False,
)
def _softtriple(centers_per_class, la, gamma, margin, reg_weight, *, num_classes, embed_dim):
    """SoftTriple (Qian et al. 2019, PML ``SoftTripleLoss``) with ``reg_weight`` times PML's sparse-centres
    regulariser (the paper's adaptive-centre term; only with two or more centres per class)."""
    regularizer = None
    if reg_weight > 0 and centers_per_class > 1:
        regularizer = pml_regularizers.SparseCentersRegularizer(num_classes, centers_per_class)
    return pml_losses.SoftTripleLoss(
        num_classes=num_classes,
        embedding_size=embed_dim,
        centers_per_class=centers_per_class,
        la=la,
        gamma=gamma,
        margin=margin,
        weight_regularizer=regularizer,
        weight_reg_weight=reg_weight,
    )


@LOSSES.register("angular", params={"alpha": Param(45.0, number(low=0, high=90, low_open=True)),
                                    "angular_weight": Param(1.0, _POSITIVE),
                                    "npair_weight": Param(0.0, _NON_NEGATIVE),
                                    "l2_weight": Param(0.0, _NON_NEGATIVE)},
                 metric=None, miner=False, positive_pairs=True)
def _angular(alpha, angular_weight, npair_weight, l2_weight, *, num_classes, embed_dim):
    """Angular loss (Wang et al. 2017, :class:`NormalizedAngularLoss`, ``alpha`` in degrees) on normalised global
    embeddings; it uses the embedding vectors themselves, not a pair matrix, so it has no structural form.  The
    authors' version: ``angular_weight=2``, ``npair_weight=1`` (an N-pair term on the raw embeddings) and
    ``l2_weight=0.005``."""
    regularizer = {"embedding_regularizer": pml_regularizers.LpRegularizer(p=2),
                   "embedding_reg_weight": l2_weight} if l2_weight else {}
    return NormalizedAngularLoss(alpha=alpha, angular_weight=angular_weight, npair_weight=npair_weight,
                                 **regularizer)


@LOSSES.register("softmax", params={"temperature": Param(0.05, _POSITIVE)}, metric=None, miner=False)
def _softmax(temperature, *, num_classes, embed_dim):
    """Normalized softmax (Zhai & Wu 2019, PML ``NormalizedSoftmaxLoss``) with the authors' temperature 0.05."""
    return pml_losses.NormalizedSoftmaxLoss(num_classes=num_classes, embedding_size=embed_dim, temperature=temperature)
