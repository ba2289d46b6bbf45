"""One query's results before and after DIML re-ranking, each with its explanation.

Stage 1 and the re-ranking are :func:`diml.evaluation.retrieval.global_top` and
:func:`~diml.evaluation.retrieval.rerank_depths` (the functions the evaluation uses): the global cosine ranks the
gallery, then the first ``depth`` candidates are re-ordered by structural + global score. The structural scores come
from one batched float64 :func:`diml.explain.pair.match_query` call, so each displayed score is exactly the sum of its
explanation's contributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from diml.evaluation.retrieval import global_top, rerank_depths
from diml.explain.explanation import Explanation
from diml.explain.pair import explanation_at, match_query
from diml.ot import OTOptions


class RankedItem(NamedTuple):
    """One result: ``index`` (row of the gallery set), ``global_rank`` (1-based, in the global ranking), scores
    (``final_score = structural_score + global_score``, the re-ranking score) and its :class:`Explanation`."""

    index: int
    global_rank: int
    global_score: float
    structural_score: float
    final_score: float
    explanation: Explanation


class QueryRanking(NamedTuple):
    """``before``: the global top results; ``after``: the top results after re-ranking the first ``depth``."""

    query_index: int
    depth: int
    before: list[RankedItem]
    after: list[RankedItem]


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def rank_query(
    global_emb: torch.Tensor,
    local_emb: torch.Tensor,
    query_index: int,
    *,
    grid: int,
    top: int = 5,
    depth: int = 10,
    ot: OTOptions = OTOptions(),
    ids: Sequence[Any] | None = None,
    pairs: int = 5,
    exact: bool = False,
    device: str | torch.device = "cpu",
) -> QueryRanking:
    """Rank the set against its row ``query_index`` (excluded from its own results), globally and with DIML.

    Args:
        global_emb: ``(N, D)`` global embeddings of the whole set (the query is one of its rows).
        local_emb: ``(N, D, R)`` cell embeddings.
        query_index: the query's row.
        grid: cells per side (``R = grid * grid``).
        top: results listed per ranking (capped at ``N - 1``).
        depth: candidates re-ranked (capped at ``N - 1``); the structural score is computed for the first
            ``max(top, depth)`` global candidates.
        ids: ``N`` image identifiers stored in the explanations.
        pairs: matched cell pairs listed in each explanation; ``exact``: add the unregularised plan.
        ot: :class:`~diml.ot.OTOptions` of the matching; device: where it runs.

    Returns:
        :class:`QueryRanking`.
    """
    if not isinstance(global_emb, torch.Tensor) or global_emb.ndim != 2 or global_emb.shape[0] < 2:
        raise ValueError(f"global_emb must be an (N, D) tensor with N >= 2, got {tuple(getattr(global_emb, 'shape', ()))}")
    num = global_emb.shape[0]
    if not isinstance(local_emb, torch.Tensor) or local_emb.ndim != 3 or local_emb.shape[:2] != global_emb.shape:
        raise ValueError(f"local_emb must be (N, D, R) with (N, D) = {tuple(global_emb.shape)}, got "
                         f"{tuple(getattr(local_emb, 'shape', ()))}")
    _check_int("top", top, 1)
    _check_int("depth", depth, 1)
    if isinstance(query_index, bool) or not isinstance(query_index, int) or not 0 <= query_index < num:
        raise ValueError(f"query_index must be a row of the set, in [0, {num - 1}], got {query_index!r}")
    if ids is not None and len(ids) != num:
        raise ValueError(f"ids must hold one id per row ({num}), got {len(ids)}")
    top, depth = min(top, num - 1), min(depth, num - 1)
    length = max(top, depth)
    normalised = F.normalize(global_emb.float(), dim=1)
    _, cand = global_top(normalised[query_index:query_index + 1], normalised, torch.tensor([query_index]), length)
    matched = match_query(local_emb[query_index], global_emb[query_index], local_emb[cand[0]], global_emb[cand[0]],
                          grid=grid, ot=ot, device=device)
    structural = torch.from_numpy(matched.similarity)[None]
    reranked = rerank_depths(cand, torch.from_numpy(matched.global_similarity)[None], structural, [depth])[depth]
    position = {int(index): k for k, index in enumerate(cand[0].tolist())}
    cache: dict[int, RankedItem] = {}

    def item(index: int) -> RankedItem:
        if index not in cache:
            k = position[index]
            explanation = explanation_at(matched, k, grid=grid, ot=ot, top=pairs, exact=exact,
                                         query_id=None if ids is None else ids[query_index],
                                         ref_id=None if ids is None else ids[index])
            glob = float(matched.global_similarity[k])
            cache[index] = RankedItem(index, k + 1, glob, explanation.similarity, explanation.similarity + glob,
                                      explanation)
        return cache[index]

    before = [item(i) for i in cand[0, :top].tolist()]
    after = [item(i) for i in reranked[0, :top].tolist()]
    return QueryRanking(query_index, depth, before, after)
