"""Retrieval evaluation (issue 5): metrics, test-time DIML re-ranking at several depths, Parquet embeddings and
sharded extraction.

- :func:`evaluate` -> ``{"global": {...}, "diml@d": {...}, "convention": {...}}`` (percent; see its docstring for
  the R convention and lone queries).
- :func:`save_embeddings` / :func:`load_embeddings` -> :class:`EmbeddingSet` (Parquet, re-score without the model).
- :func:`extract_embeddings` (sharded over DDP ranks, gathered on rank 0).
"""

from diml.evaluation.evaluate import (
    CONVENTION_KEY,
    GLOBAL,
    auto_pair_chunk,
    auto_query_chunk,
    evaluate,
    iter_rankings,
    ranking_name,
)
from diml.evaluation.extraction import extract_embeddings
from diml.evaluation.metrics import class_sizes, clustering_nmi, ranking_metrics, recall_key, relevant_cutoff
from diml.evaluation.retrieval import (
    CandidateSimilarity,
    global_candidates,
    global_top,
    pair_scores,
    rerank_depths,
    unique_pairs,
)
from diml.evaluation.storage import EmbeddingSet, load_embeddings, save_embeddings

__all__ = [
    "CONVENTION_KEY",
    "GLOBAL",
    "CandidateSimilarity",
    "EmbeddingSet",
    "auto_pair_chunk",
    "auto_query_chunk",
    "class_sizes",
    "clustering_nmi",
    "evaluate",
    "extract_embeddings",
    "global_candidates",
    "global_top",
    "iter_rankings",
    "load_embeddings",
    "pair_scores",
    "ranking_metrics",
    "ranking_name",
    "recall_key",
    "relevant_cutoff",
    "rerank_depths",
    "save_embeddings",
    "unique_pairs",
]
