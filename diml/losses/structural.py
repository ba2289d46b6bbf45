r"""DIML's structural similarity as pytorch-metric-learning distances (Zhao et al., ICCV 2021, Sec. 3.2-3.3).

PML losses compute ``mat = self.distance(embeddings, ref_emb)`` and never look inside the embeddings, so the whole
structural machinery lives in these distance objects and every pair-based PML loss (margin, triplet, contrastive,
multi-similarity, ...) runs structurally without a copy of the loss.  The embeddings reach the distance *packed*:

    ``packed (N, D, R + 1)`` with ``packed[:, :, 0]`` the global vector and ``packed[:, :, 1:]`` the ``R`` cells,

built by :func:`pack_embeddings`.  PML normalises embeddings along ``dim=1`` (the channel axis), which for this
layout L2-normalises the global vector and every cell separately, exactly what DIML needs.

For a query ``q`` and a reference ``r`` with cells ``q_i``, ``r_j``, :func:`diml.ot.match` gives the cell cosines
:math:`S_{ij} = \cos(q_i, r_j)` and the optimal-transport plan :math:`T` (cross-attention marginals by default,
constant for the gradient by default).  With :math:`s_g = \cos(q_g, r_g)`:

* :class:`StructuralSimilarity` (inverted; the similarity of the paper's multi-similarity-DIML training loss):

  .. math:: s(q, r) = \sum_{ij} T_{ij}\,\frac{S_{ij} + s_g}{2}

* :class:`StructuralDistance` (not inverted; the margin-DIML distance):

  .. math:: d(q, r) = \frac{1}{2}\Big(\sum_{ij} T_{ij}\, d_{ij} + d_g\Big),
     \qquad d_{ij} = \lVert \hat q_i - \hat r_j\rVert_2 = \sqrt{2 - 2 S_{ij}},\quad d_g = \sqrt{2 - 2 s_g}

  with ``cell_distance="snr"`` the Euclidean distance is replaced by PML's signal-to-noise-ratio distance
  :math:`\operatorname{var}(\hat q - \hat r) / \operatorname{var}(\hat q)` (for the SNR loss).

``include_global=False`` drops the global term (then ``s = sum T S``, the paper's test-time similarity, and
``d = sum T d``).

**Marginal orientation.**  The row marginal of :math:`T` weights the query cells by the *reference's* global vector,
:math:`a_i \propto \mathrm{relu}(\hat r_g \cdot \hat q_i)`, and the column marginal weights the reference cells by
the query's global vector, :math:`b_j \propto \mathrm{relu}(\hat q_g \cdot \hat r_j)`; this is the orientation of
the paper and of the authors' evaluation code.  The authors' *training* losses (``criteria/margin_diml.py``,
``criteria/multisimilarity_diml.py`` in wl-zhao/DIML) pass the two marginals transposed (the weights computed for
the reference cells are used on the query cells' axis); we do not reproduce that bug: training and evaluation use the
same, correct orientation through :func:`diml.ot.match`.  The authors also compute the global vector as the mean of
the cells; here it is whatever the model produced (``diml.models`` derives it from the same map).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import BaseDistance

from diml import ot as diml_ot
from diml.options import OTOptions, as_options

GLOBAL_SLOT = 0
# Squared distances below this count as 0 (see euclidean_from_cosine): exact above 1e-4, bounded gradient at 0.
MIN_SQUARED_DISTANCE = 1e-8
# SNR denominators (the variance of a normalised vector) are clamped here; a constant vector has variance 0.
MIN_VARIANCE = 1e-12


def pack_embeddings(global_emb: torch.Tensor, local_emb: torch.Tensor) -> torch.Tensor:
    """``global_emb (N, D)``, ``local_emb (N, D, R)`` -> ``packed (N, D, R + 1)`` (global in slot 0)."""
    if global_emb.ndim != 2 or local_emb.ndim != 3 or local_emb.shape[:2] != global_emb.shape:
        raise ValueError(
            "local_emb must have shape (N, D, R) matching global_emb (N, D) "
            f"(got {tuple(global_emb.shape)} and {tuple(local_emb.shape)})"
        )
    return torch.cat([global_emb.unsqueeze(2), local_emb], dim=2)


def unpack_embeddings(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``packed (N, D, R + 1)`` -> ``(global (N, D), local (N, D, R))``."""
    return packed[:, :, GLOBAL_SLOT], packed[:, :, GLOBAL_SLOT + 1 :]


def euclidean_from_cosine(cos: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of unit vectors from their cosine, ``sqrt(2 - 2 cos)``, safe for the gradient.

    Squared distances below :data:`MIN_SQUARED_DISTANCE` (distances below 1e-4, the float32 noise level of
    ``2 - 2 cos``) give exactly 0 with a zero gradient instead of the infinite slope of ``sqrt`` at 0.
    """
    squared = 2.0 - 2.0 * cos
    apart = squared > MIN_SQUARED_DISTANCE
    return torch.where(apart, torch.sqrt(torch.where(apart, squared, torch.ones_like(squared))), 0.0)


def snr_matrix(query: torch.Tensor, ref: torch.Tensor, *, aligned: bool = False) -> torch.Tensor:
    """PML's SNR distance ``var(x - y) / var(x)`` between vectors of normalised ``query`` and ``ref``, batched.

    All pairs: ``query (Nq, n, C)``, ``ref (Nr, m, C)`` -> ``(Nq, Nr, n, m)``.  Aligned (``aligned=True``):
    ``query (P, n, C)``, ``ref (P, m, C)`` -> ``(P, n, m)``.  With centred vectors ``xc = x - mean(x)`` the ratio is
    ``|xc - yc|^2 / |xc|^2`` (the variance's 1/(C-1) cancels); the cross terms are one matrix product.
    """
    qc = query - query.mean(dim=-1, keepdim=True)
    rc = ref - ref.mean(dim=-1, keepdim=True)
    q_sq, r_sq = (qc * qc).sum(-1), (rc * rc).sum(-1)  # (N*, n), (N*, m)
    if aligned:
        cross = torch.einsum("pic,pjc->pij", qc, rc)
        q_sq, r_sq = q_sq[:, :, None], r_sq[:, None, :]
    else:
        cross = torch.einsum("qic,rjc->qrij", qc, rc)
        q_sq, r_sq = q_sq[:, None, :, None], r_sq[None, :, None, :]
    return torch.clamp(q_sq + r_sq - 2.0 * cross, min=0.0) / torch.clamp(q_sq, min=MIN_VARIANCE)


class PairTerms(NamedTuple):
    """What a structural formula needs for a set of pairs ``P``: ``(Nq, Nr)`` (all pairs) or ``(K,)`` (aligned).

    ``plan``, ``cell_sim``: ``(*P, R, R)`` from :mod:`diml.ot`; ``q_global (Nq|K, D)``, ``q_local (Nq|K, D, R)`` and
    the same for the references; ``aligned``: whether query ``k`` pairs with reference ``k`` only.
    """

    plan: torch.Tensor
    cell_sim: torch.Tensor
    q_global: torch.Tensor
    q_local: torch.Tensor
    r_global: torch.Tensor
    r_local: torch.Tensor
    aligned: bool

    def _unit(self, x):
        return F.normalize(x.to(self.cell_sim.dtype), dim=1)

    def global_cosine(self) -> torch.Tensor:
        """``(*P)`` cosine of the global vectors."""
        q, r = self._unit(self.q_global), self._unit(self.r_global)
        return (q * r).sum(-1) if self.aligned else q @ r.T

    def cell_snr(self) -> torch.Tensor:
        """``(*P, R, R)`` SNR distance of query cell ``i`` to reference cell ``j``."""
        q, r = self._unit(self.q_local).transpose(1, 2), self._unit(self.r_local).transpose(1, 2)
        return snr_matrix(q, r, aligned=self.aligned)

    def global_snr(self) -> torch.Tensor:
        """``(*P)`` SNR distance of the global vectors."""
        q, r = self._unit(self.q_global).unsqueeze(1), self._unit(self.r_global).unsqueeze(1)
        return snr_matrix(q, r, aligned=self.aligned)[..., 0, 0]


class _Structural(BaseDistance):
    """Shared unpacking, shape checks and matching; subclasses turn :class:`PairTerms` into values ``(*P)``.

    Inside :meth:`restricted_to` only the listed (query, reference) pairs are matched (one OT problem each, via
    :func:`diml.ot.match_candidates`) and every other entry of the matrix is NaN: a loss that reads only mined pairs
    (margin, triplet, contrastive, SNR with a miner) then costs ``O(pairs)`` instead of ``O(N^2)`` problems.
    """

    def __init__(self, *, ot: OTOptions = OTOptions(), include_global: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.ot = as_options(ot)
        self.include_global = include_global
        self._pairs = None

    def check_shapes(self, query_emb, ref_emb):
        for name, emb in (("query_emb", query_emb), ("ref_emb", ref_emb)):
            if emb is not None and (emb.ndim != 3 or emb.shape[2] < 2):
                raise ValueError(
                    f"{name} must be packed embeddings (N, D, R + 1) from diml.losses.pack_embeddings "
                    f"(got shape {tuple(emb.shape)})"
                )
        if ref_emb is not None and ref_emb.shape[1:] != query_emb.shape[1:]:
            raise ValueError(
                f"ref_emb (N, D, R + 1) must match query_emb in D and R (got {tuple(ref_emb.shape)} "
                f"and {tuple(query_emb.shape)})"
            )

    @contextlib.contextmanager
    def restricted_to(self, rows: torch.Tensor, cols: torch.Tensor):
        """Within the block, :meth:`compute_mat` computes only entries ``(rows[k], cols[k])`` (others NaN)."""
        self._pairs = (rows, cols)
        try:
            yield self
        finally:
            self._pairs = None

    def compute_mat(self, query_emb, ref_emb):
        """``query_emb (Nq, D, R + 1)``, ``ref_emb (Nr, D, R + 1)`` -> ``(Nq, Nr)``."""
        if self._pairs is not None:
            return self._compute_pairs(query_emb, ref_emb, *self._pairs)
        q_global, q_local = unpack_embeddings(query_emb)
        r_global, r_local = unpack_embeddings(ref_emb)
        m = diml_ot.match(q_local, q_global, r_local, r_global, ot=self.ot)
        return self.combine(PairTerms(m.plan, m.cell_sim, q_global, q_local, r_global, r_local, aligned=False))

    def _compute_pairs(self, query_emb, ref_emb, rows, cols):
        pairs = torch.unique(torch.stack([rows, cols]), dim=1)  # (2, K) distinct pairs
        values = self.pairwise_distance(query_emb[pairs[0]], ref_emb[pairs[1]])
        mat = torch.full((len(query_emb), len(ref_emb)), float("nan"), dtype=values.dtype, device=values.device)
        return mat.index_put((pairs[0], pairs[1]), values)

    def pairwise_distance(self, query_emb, ref_emb):
        """Aligned pairs ``(K, D, R + 1)`` x ``(K, D, R + 1)`` -> ``(K,)`` (one OT problem per pair)."""
        q_global, q_local = unpack_embeddings(query_emb)
        r_global, r_local = unpack_embeddings(ref_emb)
        m = diml_ot.match_candidates(q_local, q_global, r_local.unsqueeze(1), r_global.unsqueeze(1), ot=self.ot)
        return self.combine(PairTerms(m.plan[:, 0], m.cell_sim[:, 0], q_global, q_local, r_global, r_local,
                                      aligned=True))

    def combine(self, terms: PairTerms) -> torch.Tensor:
        raise NotImplementedError  # abstract: defined by each concrete distance below


class StructuralSimilarity(_Structural):
    """Structural similarity ``sum_ij T_ij (S_ij + s_g) / 2`` (inverted: larger is more similar).

    Args:
        ot: :class:`~diml.ot.OTOptions` of :func:`diml.ot.match`.
        include_global: ``False`` gives ``sum_ij T_ij S_ij``.
    """

    def __init__(self, *, ot: OTOptions = OTOptions(), include_global: bool = True, **kwargs):
        super().__init__(ot=ot, include_global=include_global, is_inverted=True, **kwargs)

    def combine(self, terms: PairTerms) -> torch.Tensor:
        plan, cell_sim = terms.plan, terms.cell_sim
        structural = (plan * cell_sim).sum(dim=(-1, -2))
        if not self.include_global:
            return structural
        return 0.5 * (structural + terms.global_cosine() * plan.sum(dim=(-1, -2)))


class StructuralDistance(_Structural):
    """Structural distance ``(sum_ij T_ij d_ij + d_g) / 2`` (not inverted).

    Args:
        ot: :class:`~diml.ot.OTOptions` of :func:`diml.ot.match`.
        include_global: ``False`` gives ``sum_ij T_ij d_ij``.
        cell_distance: ``"euclidean"`` (``sqrt(2 - 2 cos)`` of normalised vectors; margin-DIML) or ``"snr"``
            (PML's signal-to-noise-ratio distance of normalised vectors).
    """

    CELL_DISTANCES = ("euclidean", "snr")

    def __init__(
        self,
        *,
        ot: OTOptions = OTOptions(),
        include_global: bool = True,
        cell_distance: str = "euclidean",
        **kwargs,
    ):
        if cell_distance not in self.CELL_DISTANCES:
            raise ValueError(f"cell_distance must be one of {self.CELL_DISTANCES} (got {cell_distance!r})")
        super().__init__(ot=ot, include_global=include_global, is_inverted=False, **kwargs)
        self.cell_distance = cell_distance

    def combine(self, terms: PairTerms) -> torch.Tensor:
        euclidean = self.cell_distance == "euclidean"
        cells = euclidean_from_cosine(terms.cell_sim) if euclidean else terms.cell_snr()
        structural = (terms.plan * cells).sum(dim=(-1, -2))
        if not self.include_global:
            return structural
        d_global = euclidean_from_cosine(terms.global_cosine()) if euclidean else terms.global_snr()
        return 0.5 * (structural + d_global)
