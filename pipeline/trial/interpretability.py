"""The interpretability of a trial's model, measured (issue 25): how often its matching flow carries a part to the
same part, on the test split's part annotations (:func:`diml.evaluation.correspondence_metrics`), logged by rank 0
as ``init/test/interp/...`` (the untrained model) and ``best/test/interp/...``."""

from __future__ import annotations

import time

from diml import names
from pipeline.trial import build


def part_correspondence(dataset, embeddings, ctx, prefix: str, logger=None) -> dict[str, float]:
    """Rank 0: how often the matching flow carries a part to the same part (keypoint transfer, PCK; baselines and
    the grid's ceiling) on ``dataset``'s part annotations, as metrics ``<prefix>/interp/...`` plus the seconds it
    took (``<prefix>/interp_seconds``). Empty on other ranks, when ``evaluation.interpretability.enabled`` is off
    or the data has no parts; data whose annotations give no scorable pair is recorded as a tag, not a failure."""
    if ctx.rank != 0 or embeddings is None or not ctx.spec.evaluation.interpretability.enabled:
        return {}
    if getattr(dataset, "part_names", None) is None:
        return {}
    from diml.evaluation import correspondence_metrics

    if "indices" in embeddings.metadata:  # rows of images that could not be read were dropped (skip_bad_images)
        dataset = dataset.subset(embeddings.metadata["indices"])
    start = time.perf_counter()
    try:
        results = correspondence_metrics(embeddings.local_emb, embeddings.global_emb, embeddings.labels,
                                         dataset.keypoints(), part_names=dataset.part_names,
                                         boxes=dataset.part_boxes(), device=ctx.device,
                                         **build.interpretability_options(ctx.spec))
    except ValueError as exc:  # e.g. no two images of a class share a visible part
        if logger is not None:
            logger.tags({f"interpretability_skipped.{prefix.replace('/', '_')}": str(exc)[:4000]})
        return {}
    metrics = {names.interp_key(prefix, key): float(value) for key, value in results.items()}
    metrics[f"{prefix}/interp_seconds"] = time.perf_counter() - start
    return metrics
