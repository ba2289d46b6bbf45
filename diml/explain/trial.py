"""Explanation artifacts of a trained model on its test split: figures, JSON and an ``index.html`` showing them.

The pipeline calls :func:`write_trial_explanations` from the rank-0 worker at the end of a trial and logs the folder
to MLflow. The page (:mod:`diml.explain.page`) carries its figures inline, so it renders in the MLflow artifact viewer
(which shows HTML from a blob URL, where relative image links cannot resolve) as well as from a plain folder.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np
import torch

from diml.data.transforms import DEFAULT_RESIZE_RATIO
from diml.explain.flow import PartMarks, plot_matching_flow
from diml.distributed import unwrap_model
from diml.explain.page import index_html
from diml.explain.panel import plot_retrieval_panel
from diml.explain.retrieval import QueryRanking, RankedItem, rank_query
from diml.ot import OTOptions

INDEX = "index.html"


def choose_queries(labels: np.ndarray, count: int, seed: int) -> list[int]:
    """``count`` query rows chosen by ``seed`` (sorted), among the images whose class has another image when
    there are enough of them (a query without a positive explains little)."""
    labels = np.asarray(labels)
    inverse = np.unique(labels, return_inverse=True)[1].reshape(-1)
    sizes = np.bincount(inverse)[inverse]
    pool = np.flatnonzero(sizes > 1)
    if len(pool) < count:
        pool = np.arange(len(labels))
    picked = np.random.default_rng([seed, 8008]).choice(pool, size=min(count, len(pool)), replace=False)
    return sorted(int(i) for i in picked)


class _Ids:
    """``dataset.image_id(i)`` as a lazy sequence (only the shown images are asked for their id)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> str:
        return self.dataset.image_id(index)


def _item_record(item: RankedItem, labels: np.ndarray, query_label: int) -> dict[str, Any]:
    return {"index": item.index, "image_id": item.explanation.ref_id, "label": int(labels[item.index]),
            "relevant": bool(labels[item.index] == query_label), "global_rank": item.global_rank,
            "global_score": item.global_score, "structural_score": item.structural_score,
            "final_score": item.final_score}


def _query_record(ranking: QueryRanking, labels: np.ndarray, query_id: str) -> dict[str, Any]:
    label = int(labels[ranking.query_index])
    return {"query_index": ranking.query_index, "query_id": query_id, "query_label": label, "depth": ranking.depth,
            "before": [_item_record(i, labels, label) for i in ranking.before],
            "after": [_item_record(i, labels, label) for i in ranking.after],
            "top_match": ranking.after[0].explanation.to_dict()}


def _part_marks(dataset, query: int, ref: int, plan: np.ndarray, grid: int) -> PartMarks | None:
    """The annotated keypoints of both images and the query's carried through ``plan (R, R)`` (the mass-weighted mean
    rule of :func:`diml.evaluation.transfer_keypoints`), or None when the split has no part annotations."""
    if getattr(dataset, "part_names", None) is None or getattr(dataset, "keypoint_image_size", None) is None:
        return None
    from diml.evaluation.keypoint_transfer import transfer_keypoints

    keypoints = dataset.keypoints()
    size = float(dataset.keypoint_image_size)
    moved = transfer_keypoints(torch.as_tensor(plan, dtype=torch.float64)[None],
                               torch.as_tensor(keypoints[query], dtype=torch.float64)[None], grid=grid, image_size=size)
    return PartMarks(keypoints[query], keypoints[ref], moved.mean_point[0].numpy(), list(dataset.part_names), size)


def _parts_record(marks: PartMarks) -> list[dict[str, Any]]:
    return [{"part": name, "query": [float(v) for v in marks.query[k]], "reference": [float(v) for v in marks.ref[k]],
             "transferred": [float(v) for v in marks.transferred[k]] if marks.query[k, 2] > 0 else None}
            for k, name in enumerate(marks.names)]


def _check_inputs(model, dataset, embeddings, n_queries: int) -> tuple[int, np.ndarray]:
    grid = getattr(unwrap_model(model), "grid", None)
    if grid is None:
        raise ValueError("model has no `grid` attribute; pass the trial's diml.models.DIMLModel")
    local = getattr(embeddings, "local_emb", None)
    if local is None or local.ndim != 3 or local.shape[2] != grid * grid:
        raise ValueError(f"embeddings.local_emb must be (N, D, R) with R = grid * grid = {grid * grid}, got "
                         f"{None if local is None else tuple(local.shape)}; extract the embeddings with this model")
    labels = np.asarray(torch.as_tensor(embeddings.labels).cpu())
    if len(labels) != len(dataset) or embeddings.global_emb.shape[0] != len(dataset) or len(dataset) < 2:
        raise ValueError(f"embeddings must hold one row per image of dataset ({len(dataset)} images, at least 2), "
                         f"got {embeddings.global_emb.shape[0]} rows and {len(labels)} labels")
    if isinstance(n_queries, bool) or not isinstance(n_queries, int) or n_queries < 1:
        raise ValueError(f"n_queries must be an integer >= 1, got {n_queries!r}")
    return grid, labels


def write_trial_explanations(
    model: torch.nn.Module,
    dataset,
    embeddings,
    out_dir: str | os.PathLike,
    *,
    n_queries: int = 8,
    seed: int = 0,
    top: int = 5,
    depth: int = 10,
    ot: OTOptions = OTOptions(),
    device: str | torch.device = "cpu",
    resize_ratio: float = DEFAULT_RESIZE_RATIO,
) -> list[pathlib.Path]:
    """Explain ``n_queries`` seeded test queries: per query a retrieval panel, the matching flow of its top result
    after re-ranking, and their JSON; plus ``index.html`` showing them all.

    Args:
        model: the trained :class:`diml.models.DIMLModel` (its ``grid`` lays out the cells).
        dataset: the split ``embeddings`` was extracted from (``load_image(i)``, ``image_id(i)``, ``len``).
        embeddings: ``.global_emb (N, D)``, ``.local_emb (N, D, R)``, ``.labels (N,)`` in dataset order
            (a :class:`diml.evaluation.EmbeddingSet`).
        out_dir: folder to write (created).
        n_queries: queries explained (chosen by ``seed`` among images with a positive, see :func:`choose_queries`).
        top: results per ranking; depth: candidates re-ranked by DIML (as in the evaluation).
        ot: :class:`~diml.ot.OTOptions` of the structural similarity.
        device: where the matching runs.
        resize_ratio: the run's ``data.augmentation.eval_resize_ratio``: the figures show the crop the model saw.

    Returns:
        The written files: ``q00_retrieval.png``, ``q00_flow.png``, ``q00.json``, ..., and ``index.html`` last.
    """
    grid, labels = _check_inputs(model, dataset, embeddings, n_queries)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    global_emb, local_emb = embeddings.global_emb.float().cpu(), embeddings.local_emb.float().cpu()
    ids = _Ids(dataset)
    written, records = [], []
    for number, query in enumerate(choose_queries(labels, n_queries, seed)):
        ranking = rank_query(global_emb, local_emb, query, grid=grid, top=top, depth=depth, ot=ot, ids=ids,
                             device=device)
        query_image = dataset.load_image(query)
        relevant = {i.index: bool(labels[i.index] == labels[query]) for i in ranking.before + ranking.after}
        stem = f"q{number:02d}"
        best = ranking.after[0]
        panel = plot_retrieval_panel(ranking, query_image, dataset.load_image, out / f"{stem}_retrieval.png",
                                     relevant=relevant, resize_ratio=resize_ratio)
        marks = _part_marks(dataset, query, best.index, best.explanation.plan, grid)
        flow = plot_matching_flow(best.explanation, query_image, dataset.load_image(best.index),
                                  out / f"{stem}_flow.png", parts=marks, resize_ratio=resize_ratio)
        record = _query_record(ranking, labels, ids[query])
        if marks is not None:
            record["top_match"]["parts"] = _parts_record(marks)
        record_path = out / f"{stem}.json"
        record_path.write_text(json.dumps(record, indent=1))
        written += [panel, flow, record_path]
        records.append((stem, record))
    index = out / INDEX
    index.write_text(index_html(records, {"eps": ot.eps, "marginals": ot.marginals, "depth": depth, "seed": seed}, out))
    return written + [index]
