"""Retrieval evaluation: global ranking and test-time DIML re-ranking at several depths, in one chunked pass."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from diml.evaluation._inputs import chunk_option, prepare
from diml.names import CONVENTION, GLOBAL, NMI, ranking_name
from diml.evaluation.metrics import class_sizes, clustering_nmi, ranking_metrics, relevant_cutoff
from diml.evaluation.retrieval import CandidateSimilarity, global_candidates, pair_scores, rerank_depths
from diml.options import OTOptions, as_options

CHUNK_BYTES = 256 * 2**20
"""Working memory aimed at per chunk (of queries, or of stage-2 pairs) when the chunk sizes are not given."""


def auto_query_chunk(num_images: int, length: int, num_rankings: int) -> int:
    """Queries per stage-1 / metrics chunk so that a chunk takes about :data:`CHUNK_BYTES`: per query the ``(N,)``
    float32 similarity row, and per ranking an ``(L,)`` int64 ranking plus its label and metric temporaries."""
    per_query = 4 * num_images + 40 * length * num_rankings
    return max(1, min(num_images, CHUNK_BYTES // per_query))


def auto_pair_chunk(local_shape: tuple[int, int], device: torch.device) -> int:
    """Stage-2 pairs per call of the scorer: the gathered ``(C, R)`` cells of both images plus about twelve ``(R, R)``
    solver tensors per pair, within :data:`CHUNK_BYTES`; on a CPU at most 2,048 pairs, where the solver's working set
    then stays in cache (measured 1.5x faster per pair than 8,192 on a 2-core CPU)."""
    channels, cells = local_shape
    fit = CHUNK_BYTES // (4 * (2 * channels * cells + 12 * cells * cells))
    return max(1, fit if device.type == "cuda" else min(fit, 2048))


def iter_rankings(
    global_emb: torch.Tensor,
    local_emb: torch.Tensor | None,
    *,
    length: int,
    depths: Sequence[int],
    similarity: CandidateSimilarity | None,
    query_chunk: int,
    pair_chunk: int | None = None,
    symmetric: bool = True,
    queries: torch.Tensor | None = None,
    progress: bool = False,
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Rankings of the queries against all other images, chunk by chunk over queries.

    Stage 1 keeps the global cosine top-``length`` of every query (``(Q, length)``, computed in chunks); stage 2
    scores each query with its first ``K = max(depths)`` candidates once (each unordered pair once when
    ``symmetric``); then :func:`~diml.evaluation.retrieval.rerank_depths` re-orders each depth's own head.
    Memory: ``O(Q * length)`` plus one chunk.

    Args:
        global_emb: ``(N, D)`` float32.
        local_emb: ``(N, D, R)`` float32, or None for the global ranking only.
        length: results kept per query, ``>= max(depths)``, ``<= N - 1``.
        depths: sorted re-ranking depths (ignored without ``local_emb``).
        similarity: stage-2 scorer (see :data:`~diml.evaluation.retrieval.CandidateSimilarity`).
        query_chunk: queries per chunk; pair_chunk: stage-2 pairs per scorer call (default :func:`auto_pair_chunk`).
        symmetric: the scorer is symmetric in its two images (true of the structural similarity).
        queries: ``(Q,)`` gallery rows to rank (default: all ``N``).
        progress: show a progress bar of stage 2 on stderr.

    Yields:
        ``(query_index (B,), {"global": (B, length), "diml@d": (B, length), ...})`` with gallery indices.
    """
    device = global_emb.device
    queries = torch.arange(global_emb.shape[0], device=device) if queries is None else queries.to(device)
    cand_global, cand_index = global_candidates(F.normalize(global_emb, dim=1), queries, length, query_chunk)
    stage2 = None
    if local_emb is not None and len(depths) > 0:
        if similarity is None:
            raise ValueError("similarity is required to re-rank: pass a CandidateSimilarity or depths=()")
        chunk = pair_chunk or auto_pair_chunk(tuple(local_emb.shape[1:]), device)
        stage2 = pair_scores(similarity, local_emb, global_emb, queries, cand_index[:, : max(depths)],
                             pair_chunk=chunk, symmetric=symmetric, progress=progress)
    for start in range(0, queries.shape[0], query_chunk):
        rows = slice(start, start + query_chunk)
        rankings = {GLOBAL: cand_index[rows]}
        if stage2 is not None:
            for depth, ranking in rerank_depths(cand_index[rows], cand_global[rows], stage2[rows], depths).items():
                rankings[ranking_name(depth)] = ranking
        yield queries[rows], rankings


def _default_similarity(ot: OTOptions, *, normalized: bool = False) -> CandidateSimilarity:
    from diml.ot import structural_similarity_candidates

    return functools.partial(structural_similarity_candidates, ot=ot, normalized=normalized)


def _metric_sums(
    rankings: Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]],
    labels: torch.Tensor,
    cutoff: torch.Tensor,
    valid: torch.Tensor,
    ks: Sequence[int],
) -> dict[str, dict[str, torch.Tensor]]:
    """Sum of each per-query metric over the valid queries, per ranking (kept on the device: no sync per chunk).

    The per-query values are gathered into one ``(N,)`` float64 vector per metric and summed once at the end, so the
    result does not depend on the query chunking (which depends on the number of depths and the memory budget):
    float64 sums of chunk sums would differ in the last bit between chunkings.

    Args:
        rankings: chunks from :func:`iter_rankings`.
        labels: ``(N,)`` int64; ``cutoff``: ``(N,)`` R per query; ``valid``: ``(N,)`` bool, False for lone queries.
    """
    values: dict[str, dict[str, torch.Tensor]] = {}
    for query_index, chunk_rankings in rankings:
        query_labels = labels[query_index]
        for name, ranking in chunk_rankings.items():
            match = labels[ranking] == query_labels[:, None]
            per_query = ranking_metrics(match, cutoff[query_index], ks)
            columns = values.setdefault(name, {})
            for metric, chunk_values in per_query.items():
                if metric not in columns:
                    columns[metric] = torch.zeros(labels.shape[0], dtype=torch.float64, device=labels.device)
                columns[metric].index_copy_(0, query_index, chunk_values.to(torch.float64))
    return {name: {metric: torch.where(valid, column, 0.0).sum() for metric, column in columns.items()}
            for name, columns in values.items()}


def evaluate(
    global_emb,
    labels,
    local_emb=None,
    *,
    depths: Sequence[int] = (100,),
    ks: Sequence[int] = (1, 2, 4, 8),
    r_includes_query: bool = False,
    ot: OTOptions = OTOptions(),
    nmi: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
    query_chunk: int | None = None,
    pair_chunk: int | None = None,
    candidate_similarity: CandidateSimilarity | None = None,
    symmetric: bool = True,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Retrieval metrics of every image against all others, globally and after DIML re-ranking at each depth.

    Every image is a query against the N - 1 others (the query is never in its own ranking). Stage 1 ranks by the
    cosine of global embeddings (chunked matrix products and top-k; never an ``N x N`` matrix). Stage 2 (with
    ``local_emb``) computes, for each query and each of its first ``K = max(depths)`` candidates, the structural
    similarity (:func:`diml.ot.structural_similarity_candidates` with the options ``ot``), once per unordered
    pair (it is symmetric); the final score is structural + global cosine (as the DIML authors); for each depth
    ``d`` the first ``d`` candidates are re-ordered by it and the rest keep their global order. All depths come
    from one stage-1 and one stage-2 pass.

    Metrics, averaged over queries, in percent: ``R@k`` (Recall@k: some relevant image in the first k), ``RP``
    (R-Precision) and ``MAP@R`` (Musgrave et al. 2020), plus ``NMI`` for the global ranking (faiss k-means with as
    many clusters as labels on the L2-normalised ``global_emb``, seeded with ``seed``). ``R`` of a query is the
    number of other images of its class; ``r_includes_query=True`` counts the query too (the DIML paper's
    convention). RP and MAP@R read the first ``R`` results: each ranking is kept to
    ``L = max(max(depths), max(ks), max R)`` results (capped at N - 1), so they are exact; positions past ``d`` come
    from the global ranking. Queries whose class has no other image are excluded from every average (as PML does).
    Memory: the inputs, ``O(N * L)`` for the stage-1 lists, and one chunk.

    Args:
        global_emb: ``(N, D)`` torch tensor or numpy array (need not be normalised).
        labels: ``(N,)`` integer labels.
        local_emb: ``(N, D, R)`` cell embeddings, or None: global ranking only (``depths`` is then ignored).
        depths: re-ranking depths, each in ``[1, N - 1]``.
        ks: the k of Recall@k, each in ``[1, N - 1]``.
        r_includes_query: R counts the query itself (paper) instead of only the other images (PML, default).
        ot: :class:`~diml.ot.OTOptions` of the structural similarity (a training run evaluates with
            :data:`diml.ot.TRIAL_EVALUATION_OT`).
        nmi: compute NMI (k-means; the slowest part at SOP scale).
        seed: k-means seed.
        device: where to compute (default: ``global_emb``'s device).
        query_chunk: queries per stage-1 / metrics chunk (default :func:`auto_query_chunk`, ~256 MiB).
        pair_chunk: stage-2 pairs per scorer call (default :func:`auto_pair_chunk`).
        candidate_similarity: a stage-2 scorer replacing the structural similarity (same signature as
            :func:`diml.ot.structural_similarity_candidates`).
        symmetric: the stage-2 scorer is symmetric in its two images (so each pair is scored once); set False for
            an asymmetric ``candidate_similarity``.
        progress: show a progress bar of the re-ranking (stage 2) on stderr; off by default (e.g. in Ray workers,
            whose progress Tune's table shows).

    Returns:
        ``{"global": {"R@1", ..., "RP", "MAP@R", "NMI"}, "diml@d": {"R@1", ..., "RP", "MAP@R"}, ...,
        "convention": {"r_includes_query": 0.0 | 1.0, "num_queries": .., "num_lone_queries": ..}}``: every value a
        float; ``convention`` records the R convention and how many queries were averaged and excluded.
    """
    ot = as_options(ot)
    data = prepare(global_emb, labels, local_emb, depths, ks, device)
    chunk_option("query_chunk", query_chunk)
    chunk_option("pair_chunk", pair_chunk)
    sizes = class_sizes(data.labels)
    cutoff = relevant_cutoff(sizes, r_includes_query)
    valid = sizes > 1
    num_valid, num_images = int(valid.sum()), data.global_emb.shape[0]
    if num_valid == 0:
        raise ValueError("labels: every class has a single image, so no query has a relevant result; "
                         "evaluate a set with at least two images in some class")
    length = min(num_images - 1, max(max(data.depths, default=1), max(data.ks, default=1), int(cutoff[valid].max())))
    similarity, global_emb, local_emb = candidate_similarity, data.global_emb, data.local_emb
    if similarity is None and data.depths:
        # the structural similarity normalises every cell and global vector: do it once for the gallery here
        # instead of once per scored pair
        similarity = _default_similarity(ot, normalized=True)
        global_emb, local_emb = F.normalize(global_emb, dim=1), F.normalize(local_emb, dim=1)
    rankings = iter_rankings(
        global_emb, local_emb, length=length, depths=data.depths, similarity=similarity,
        query_chunk=query_chunk or auto_query_chunk(num_images, length, 1 + len(data.depths)),
        pair_chunk=pair_chunk, symmetric=symmetric, progress=progress,
    )
    sums = _metric_sums(rankings, data.labels, cutoff, valid, data.ks)
    result = {name: {m: 100.0 * float(v) / num_valid for m, v in totals.items()} for name, totals in sums.items()}
    if nmi:
        result[GLOBAL][NMI] = 100.0 * clustering_nmi(data.global_emb, data.labels, seed=seed)
    result[CONVENTION] = {
        "r_includes_query": float(bool(r_includes_query)),
        "num_queries": float(num_valid),
        "num_lone_queries": float(num_images - num_valid),
    }
    return result
