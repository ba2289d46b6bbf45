"""Optimal transport for DIML (Zhao et al., ICCV 2021): one batched entropic solver and the structural similarity.

Public API: :class:`OTOptions` (every option and its default, one frozen dataclass taken by every function here
as ``ot=``; :data:`TRIAL_EVALUATION_OT` and :data:`TRIAL_TRAINING_OT` are a training run's defaults;
:mod:`diml.options`), :func:`sinkhorn` / :class:`SinkhornResult` (generic batched solver, :mod:`diml.ot.sinkhorn`) and
:func:`match`, :func:`match_candidates` / :class:`Matching` (:mod:`diml.ot.matching`, where the equations and the
orientation are documented), :func:`structural_similarity`, :func:`structural_similarity_candidates`
(:mod:`diml.ot.similarity`, memory-bounded).
"""

from diml.ot.matching import Matching, match, match_candidates
from diml.options import TRIAL_EVALUATION_OT, TRIAL_TRAINING_OT, OTOptions
from diml.ot.similarity import structural_similarity, structural_similarity_candidates
from diml.ot.sinkhorn import SinkhornResult, sinkhorn

__all__ = [
    "Matching",
    "OTOptions",
    "SinkhornResult",
    "TRIAL_EVALUATION_OT",
    "TRIAL_TRAINING_OT",
    "match",
    "match_candidates",
    "sinkhorn",
    "structural_similarity",
    "structural_similarity_candidates",
]
