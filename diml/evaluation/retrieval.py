"""Two-stage retrieval: global cosine top-L, stage-2 scores of the first K candidates, re-ranking at each depth.

No ``N x N`` matrix is ever formed: stage 1 works on ``(B, N)`` blocks of queries and keeps ``(N, L)`` results;
stage 2 scores ``(query, candidate)`` pairs in chunks. The structural similarity is symmetric (swapping the two images
transposes the cost and swaps the two marginals, so the plan is transposed and the similarity unchanged), and
top-K lists are largely mutual (about 89 % of the pairs of a 100-NN graph, measured on synthetic galleries): with
``symmetric=True`` every unordered pair is scored once, which nearly halves the OT work.
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


def global_candidates(
    normalised: torch.Tensor, queries: torch.Tensor, length: int, query_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`global_top` for ``queries`` against the whole gallery, ``query_chunk`` queries at a time.

    Args:
        normalised: ``(N, D)`` L2-normalised global embeddings.
        queries: ``(Q,)`` int64 gallery rows used as queries.

    Returns:
        ``(scores (Q, length) float32, index (Q, length) int64)``.
    """
    parts = [global_top(normalised[q], normalised, q, length) for q in queries.split(query_chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def unique_pairs(queries: torch.Tensor, cand: torch.Tensor, num_images: int):
    """Unordered pairs ``{query, candidate}`` without repetition.

    Args:
        queries: ``(Q,)`` int64; ``cand``: ``(Q, K)`` int64 candidates of each query (never the query itself).

    Returns:
        ``(low (U,), high (U,), inverse (Q, K))`` with ``low < high`` and pair ``inverse[i, j]`` being
        ``{queries[i], cand[i, j]}``.
    """
    q = queries[:, None].expand_as(cand)
    key = torch.minimum(q, cand) * num_images + torch.maximum(q, cand)
    unique, inverse = torch.unique(key, sorted=True, return_inverse=True)
    return unique // num_images, unique % num_images, inverse


def pair_scores(
    similarity: CandidateSimilarity,
    local_emb: torch.Tensor,
    global_emb: torch.Tensor,
    queries: torch.Tensor,
    cand: torch.Tensor,
    *,
    pair_chunk: int,
    symmetric: bool,
    progress: bool = False,
) -> torch.Tensor:
    """Stage-2 score of each query with each of its candidates, ``pair_chunk`` pairs per call of ``similarity``.

    Args:
        similarity: see :data:`CandidateSimilarity`.
        local_emb: ``(N, C, R)`` cell embeddings of the gallery (not necessarily normalised).
        global_emb: ``(N, C)`` global embeddings of the gallery (not necessarily normalised).
        queries: ``(Q,)`` int64; ``cand``: ``(Q, K)`` int64.
        symmetric: ``similarity(x, y) == similarity(y, x)``: score each unordered pair once, as ``(1, 1)`` calls
            batched over pairs. Otherwise each query with its own ``K`` candidates.
        progress: show a progress bar of the scorer calls on stderr.

    Returns:
        ``(Q, K)`` float32.
    """
    from tqdm.auto import tqdm

    def bar(chunks):
        return tqdm(chunks, desc="re-ranking", unit="chunk", disable=not progress, leave=False)

    if symmetric:
        low, high, inverse = unique_pairs(queries, cand, local_emb.shape[0])
        scores = torch.cat([_checked(similarity, local_emb, global_emb, lo, hi[:, None])[:, 0]
                            for lo, hi in bar(list(zip(low.split(pair_chunk), high.split(pair_chunk))))])
        return scores[inverse]
    rows = max(1, pair_chunk // cand.shape[1])
    return torch.cat([_checked(similarity, local_emb, global_emb, q, c)
                      for q, c in bar(list(zip(queries.split(rows), cand.split(rows))))])


def _gather(emb: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``emb[index]`` for an int64 ``index`` of any shape, as one ``index_select`` over the first axis (measured 4x
    faster than advanced indexing on a CPU for (C, R) rows)."""
    return emb.index_select(0, index.reshape(-1)).view(*index.shape, *emb.shape[1:])


def _checked(similarity, local_emb, global_emb, query, cand) -> torch.Tensor:
    scores = similarity(_gather(local_emb, query), _gather(global_emb, query), _gather(local_emb, cand),
                        _gather(global_emb, cand))
    if scores.shape != cand.shape:
        raise ValueError(
            f"candidate_similarity returned shape {tuple(scores.shape)}, expected {tuple(cand.shape)}: "
            "it must return one score per (query, candidate)"
        )
    return scores.to(torch.float32)


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
