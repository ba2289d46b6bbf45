"""Retrieval evaluation (issue 5): metrics, test-time DIML re-ranking at several depths, Parquet embeddings and
sharded extraction.

- :func:`evaluate` -> ``{"global": {...}, "diml@d": {...}, "convention": {...}}`` (percent; see its docstring for
  the R convention and lone queries).
- :func:`save_embeddings` / :func:`load_embeddings` -> :class:`EmbeddingSet` (Parquet, re-score without the model).
- :func:`extract_embeddings` (sharded over DDP ranks, gathered on rank 0); :func:`drop_unreadable` (the rows of
  images a split could not read).
- :func:`correspondence_metrics`: keypoint transfer through the matching plan scored by PCK, with baselines
  (:mod:`diml.evaluation.correspondence`; :func:`sample_pairs` draws the pairs); :func:`transfer_scores` scores given
  plans (:mod:`diml.evaluation.keypoint_transfer`).
- :mod:`diml.evaluation.names` (:mod:`diml.names`): every result key, its tracked (MLflow) name and its display label.
"""

from diml import names
from diml.evaluation.correspondence import PairSample, correspondence_metrics, sample_pairs
from diml.evaluation.keypoint_transfer import Transfer, cell_centres, cell_index, transfer_keypoints, transfer_scores
from diml.evaluation.evaluate import auto_pair_chunk, auto_query_chunk, evaluate, iter_rankings
from diml.evaluation.extraction import drop_unreadable, extract_embeddings
from diml.evaluation.metrics import class_sizes, clustering_nmi, ranking_metrics, relevant_cutoff
from diml.names import GLOBAL, ranking_name, recall_key
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
    "GLOBAL",
    "CandidateSimilarity",
    "EmbeddingSet",
    "PairSample",
    "Transfer",
    "auto_pair_chunk",
    "auto_query_chunk",
    "cell_centres",
    "cell_index",
    "class_sizes",
    "clustering_nmi",
    "correspondence_metrics",
    "drop_unreadable",
    "evaluate",
    "extract_embeddings",
    "global_candidates",
    "global_top",
    "iter_rankings",
    "load_embeddings",
    "names",
    "pair_scores",
    "ranking_metrics",
    "ranking_name",
    "recall_key",
    "relevant_cutoff",
    "rerank_depths",
    "sample_pairs",
    "save_embeddings",
    "transfer_keypoints",
    "transfer_scores",
    "unique_pairs",
]
