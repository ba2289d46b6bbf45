"""Retrieval metrics computed from ranked lists, batched over queries, and clustering NMI.

Conventions (see :func:`diml.evaluation.evaluate`):

- The query is never part of its own ranking.
- ``R`` of a query is the number of *other* images of its class (pytorch-metric-learning and "A Metric Learning
  Reality Check", Musgrave et al. 2020). With ``r_includes_query=True`` ``R`` also counts the query itself, as the
  DIML authors' ``evaluation/metrics.py`` does; the ranking still excludes the query, so R-Precision cannot reach 1
  there.
- Queries whose class has no other image ("lone" queries) have no relevant item: they are excluded from every
  average (as PML does) under both conventions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from diml.names import MAP_AT_R, RP, recall_key


def class_sizes(labels: torch.Tensor) -> torch.Tensor:
    """Number of images sharing each image's label, the image included.

    Args:
        labels: ``(N,)`` integer labels (any values).

    Returns:
        ``(N,)`` int64 counts.
    """
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse]


def relevant_cutoff(sizes: torch.Tensor, r_includes_query: bool) -> torch.Tensor:
    """``R`` of each query from its class size: ``size - 1`` (default) or ``size`` (paper convention).

    Args:
        sizes: ``(N,)`` class sizes from :func:`class_sizes`.

    Returns:
        ``(N,)`` int64.
    """
    return sizes if r_includes_query else sizes - 1


def ranking_metrics(
    match: torch.Tensor, cutoff: torch.Tensor, ks: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Per-query Recall@k, R-Precision and MAP@R from the relevance of ranked results.

    ``match[i, j]`` is True when the ``j``-th result (0-based) of query ``i`` has the query's label. Only the first
    ``L`` results are given; results past ``L`` count as irrelevant, so ``L`` must reach ``max(cutoff)`` (or the end
    of the gallery) for RP and MAP@R to be exact.

    - Recall@k = 1 if any of the first ``k`` results is relevant.
    - RP = (relevant results among the first R) / R.
    - MAP@R = (1 / R) * sum_{j <= R, result j relevant} precision@j  (Musgrave et al. 2020, eq. in sec. 3.2).

    Args:
        match: ``(B, L)`` bool.
        cutoff: ``(B,)`` int64 ``R`` per query, ``>= 1``.
        ks: the k of Recall@k, each ``<= L``.

    Returns:
        ``{"R@k": (B,), ..., "RP": (B,), "MAP@R": (B,)}`` float64 in [0, 1].
    """
    length = match.shape[1]
    cutoff = cutoff.to(match.device)
    position = torch.arange(1, length + 1, device=match.device)
    within = position[None, :] <= cutoff[:, None]
    hits = match & within
    r = cutoff.to(torch.float64)
    out = {recall_key(k): match[:, :k].any(dim=1).to(torch.float64) for k in ks}
    out[RP] = hits.sum(dim=1).to(torch.float64) / r
    precision_at_j = match.cumsum(dim=1).to(torch.float64) / position.to(torch.float64)
    out[MAP_AT_R] = (precision_at_j * hits).sum(dim=1) / r
    return out


def clustering_nmi(global_emb: torch.Tensor, labels: torch.Tensor, *, seed: int = 0, niter: int = 20) -> float:
    """NMI (arithmetic normalisation) between the labels and k-means clusters of the L2-normalised embeddings.

    k-means is faiss's (``niter`` iterations, seeded), with as many clusters as there are distinct labels.

    Args:
        global_emb: ``(N, D)`` embeddings (any device; clustered on the CPU in float32).
        labels: ``(N,)`` integer labels.

    Returns:
        NMI in [0, 1].
    """
    # Imported here: scikit-learn and faiss take seconds to import, and extraction workers never cluster.
    import faiss
    from sklearn.metrics import normalized_mutual_info_score

    x = F.normalize(global_emb.detach().float(), dim=1).cpu().numpy()
    y = labels.detach().cpu().numpy()
    num_clusters = int(np.unique(y).size)
    if num_clusters == 1:
        return 1.0
    # min_points_per_centroid only silences faiss's "please provide at least ... points" warning.
    kmeans = faiss.Kmeans(x.shape[1], num_clusters, niter=niter, seed=seed, verbose=False, min_points_per_centroid=1)
    kmeans.train(np.ascontiguousarray(x))
    _, assignment = kmeans.index.search(x, 1)
    return float(normalized_mutual_info_score(y, assignment[:, 0]))
