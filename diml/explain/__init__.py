"""Part-wise explanations of DIML's structural similarity (Zhao et al., ICCV 2021): data, figures and a CLI.

- :func:`explain_pair` / :func:`explain_images` -> :class:`Explanation` (plan, cell
  similarities, contributions ``T_ij * S_ij`` summing to the similarity, cell-weight heat maps, top cell pairs,
  optionally the exact ``ot.emd`` plan); ``to_json`` / ``Explanation.from_json``.
- :func:`plot_matching_flow` and :func:`plot_retrieval_panel` write PNG figures; :func:`rank_query` ranks one query
  before and after DIML re-ranking with an explanation per result.
- :func:`write_trial_explanations`: figures, JSON and ``index.html`` of seeded test queries (for the pipeline).
- :func:`load_checkpoint` (:mod:`diml.models.checkpoint`) and ``python -m diml.explain`` (:mod:`diml.explain.cli`).
"""

from diml.explain.explanation import CellPair, Explanation
from diml.explain.flow import plot_matching_flow
from diml.explain.pair import exact_plan, explain_images, explain_pair
from diml.explain.panel import panel_size, plot_retrieval_panel
from diml.explain.retrieval import QueryRanking, RankedItem, rank_query
from diml.explain.trial import write_trial_explanations
from diml.models.checkpoint import load_checkpoint

__all__ = [
    "CellPair",
    "Explanation",
    "QueryRanking",
    "RankedItem",
    "exact_plan",
    "explain_images",
    "explain_pair",
    "load_checkpoint",
    "panel_size",
    "plot_matching_flow",
    "plot_retrieval_panel",
    "rank_query",
    "write_trial_explanations",
]
