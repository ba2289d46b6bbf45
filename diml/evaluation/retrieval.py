"""Two-stage retrieval for one chunk of queries: global cosine top-L, then re-ranking of the first K at each depth.

Both stages work on a chunk of queries at once; no ``N x N`` matrix is ever formed (``(B, N)`` per chunk).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

CandidateSimilarity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``f(q_local (B, C, R), q_global (B, C), c_local (B, K, C, R), c_global (B, K, C)) -> (B, K)``, the signature of
:func:`diml.ot.structural_similarity_candidates`."""


def global_top(
    query_global: torch.Tensor, gallery_global: torch.Tensor, query_index: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``length`` gallery items by cosine similarity, each query excluded from its own list.

    Args:
        query_global: ``(B, D)`` L2-normalised query embeddings.
        gallery_global: ``(N, D)`` L2-normalised gallery embeddings (the queries are rows ``query_index`` of it).
        query_index: ``(B,)`` int64 row of each query in the gallery.
        length: how many results to keep, ``<= N - 1``.

    Returns:
        ``(scores (B, length), index (B, length))``, sorted by decreasing cosine.
    """
    sim = query_global @ gallery_global.T
    rows = torch.arange(sim.shape[0], device=sim.device)
    sim[rows, query_index] = float("-inf")
    return torch.topk(sim, length, dim=1, largest=True, sorted=True)


def rerank_depths(
    cand_index: torch.Tensor, cand_global: torch.Tensor, stage2: torch.Tensor, depths: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Re-rank the first ``d`` global candidates by ``stage2 + global`` for every depth ``d``; the rest keep their order.

    Each depth re-orders its own first ``d`` candidates (a permutation of them), so no ranking has a duplicate and a
    smaller depth never borrows candidates from a larger one. Ties keep the global order (stable sort).

    Args:
        cand_index: ``(B, L)`` gallery indices in global order.
        cand_global: ``(B, L)`` their global cosine scores.
        stage2: ``(B, K)`` stage-2 (structural) scores of the first ``K >= max(depths)`` candidates.
        depths: re-ranking depths, each ``<= K``.

    Returns:
        ``{d: (B, L) int64 ranking}``.
    """
    rankings = {}
    for depth in depths:
        final = stage2[:, :depth] + cand_global[:, :depth]
        order = torch.argsort(final, dim=1, descending=True, stable=True)
        head = cand_index[:, :depth].gather(1, order)
        rankings[depth] = torch.cat([head, cand_index[:, depth:]], dim=1)
    return rankings


def candidate_scores(
    similarity: CandidateSimilarity,
    local_emb: torch.Tensor,
    global_emb: torch.Tensor,
    query_index: torch.Tensor,
    cand_index: torch.Tensor,
) -> torch.Tensor:
    """Stage-2 score of each query with each of its own candidates.

    Args:
        similarity: see :data:`CandidateSimilarity`.
        local_emb: ``(N, C, R)`` cell embeddings of the whole gallery (not necessarily normalised).
        global_emb: ``(N, C)`` global embeddings of the whole gallery (not necessarily normalised).
        query_index: ``(B,)`` int64.
        cand_index: ``(B, K)`` int64.

    Returns:
        ``(B, K)`` scores.
    """
    device = global_emb.device
    query_index = query_index.to(device)
    cand_index = cand_index.to(device)
    scores = similarity(
        local_emb[query_index], global_emb[query_index], local_emb[cand_index], global_emb[cand_index]
    )
    if scores.shape != cand_index.shape:
        raise ValueError(
            f"candidate_similarity returned shape {tuple(scores.shape)}, expected {tuple(cand_index.shape)}: "
            "it must return one score per (query, candidate)"
        )
    return scores.to(torch.float32)
