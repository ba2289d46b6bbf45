"""Every name of an evaluation result, in one place, derived in one direction:

    result key of :func:`diml.evaluation.evaluate`  ->  tracked metric name (MLflow)  ->  display label

- Result keys: the rankings ``"global"`` and ``"diml@100"`` (re-ranked at depth 100) hold the metrics ``"R@1"``,
  ``"RP"``, ``"MAP@R"`` and (global only) ``"NMI"``.
- Tracked names: MLflow does not accept ``@`` in a metric name, so ``diml@`` becomes ``diml_K`` and any other ``@``
  becomes ``_at_``: ``test/diml_K100/R_at_1`` is metric ``R@1`` of ranking ``diml@100`` on split ``test``.
  :func:`result_name` maps a tracked name back.
- Labels: a results table shows the result keys (``diml@100 R@1``); the paper-style report writes the re-ranked
  rankings ``DIML@100``.

Re-exported as :mod:`diml.evaluation.names`.  This module imports no torch: the pipeline's tables and reports read
MLflow with it in processes that never load a model.
"""

from __future__ import annotations

import re

GLOBAL = "global"
RERANKED = "diml@"
"""Prefix of a re-ranked ranking's key: ``"diml@100"``."""
RECALL = "R@"
"""Prefix of a Recall@k metric: ``"R@1"``."""
RP = "RP"
MAP_AT_R = "MAP@R"
NMI = "NMI"
CONVENTION = "convention"
"""Key of the R convention and query counts in :func:`~diml.evaluation.evaluate`'s output (not a ranking)."""

SHOWN_METRICS = (f"{RECALL}1", RP, MAP_AT_R)
"""The metrics of each ranking that results tables and reports show."""

# result key -> tracked name: the order matters ("diml@" first, then every other "@")
_TRACKED = ((RERANKED, "diml_K"), ("@", "_at_"))
_TRACKED_RANKING = re.compile(rf"^{re.escape(_TRACKED[0][1])}(\d+)$")


def ranking_name(depth: int) -> str:
    """Key of the re-ranked result at ``depth`` in :func:`~diml.evaluation.evaluate`'s output, e.g. ``"diml@100"``."""
    return f"{RERANKED}{depth}"


def recall_key(k: int) -> str:
    """Name of the Recall@k entry in a result dict, e.g. ``"R@1"``."""
    return f"{RECALL}{k}"


def tracked_name(name: str) -> str:
    """A result key (ranking or metric) as a tracked metric name part: ``"diml@100"`` -> ``"diml_K100"``,
    ``"R@1"`` -> ``"R_at_1"``, ``"MAP@R"`` -> ``"MAP_at_R"``; ``"global"``, ``"RP"``, ``"NMI"`` stay."""
    for old, new in _TRACKED:
        name = name.replace(old, new)
    return name


def result_name(tracked: str) -> str:
    """The inverse of :func:`tracked_name`: ``"diml_K100"`` -> ``"diml@100"``, ``"R_at_1"`` -> ``"R@1"``."""
    for old, new in reversed(_TRACKED):
        tracked = tracked.replace(new, old)
    return tracked


def metric_key(split: str, ranking: str, metric: str) -> str:
    """The tracked name of ``metric`` of ``ranking`` (result keys) on ``split``: ``test/diml_K100/R_at_1``."""
    return f"{split}/{selection_name(ranking, metric)}"


def selection_name(ranking: str, metric: str) -> str:
    """The tracked ``<ranking>/<metric>`` form of a selection metric (no split): ``global/R_at_1``."""
    return f"{tracked_name(ranking)}/{tracked_name(metric)}"


def depth_of(ranking: str) -> int | None:
    """The re-ranking depth of a ranking (result key ``"diml@100"`` or tracked ``"diml_K100"``): 100; None for the
    global ranking or a name that is no ranking."""
    match = _TRACKED_RANKING.match(tracked_name(ranking))
    return int(match.group(1)) if match else None


def is_ranking(name: str) -> bool:
    """Whether ``name`` (result key or tracked) names a ranking: ``global`` or a re-ranking depth."""
    return name == GLOBAL or depth_of(name) is not None


def ranking_order(name: str) -> int:
    """Sort key of rankings: global first, then by depth."""
    depth = depth_of(name)
    return -1 if depth is None else depth


def ranking_label(ranking: str, *, paper: bool = False) -> str:
    """Display label of a ranking (result key or tracked): ``"global"``, ``"diml@100"`` (``paper``: ``"DIML@100"``)."""
    name = result_name(ranking)
    return name.replace(RERANKED, "DIML@") if paper else name


def check_selection_metric(value: str) -> str:
    """Validate a tracked ``<ranking>/<metric>`` name (e.g. ``global/R_at_1``, the pipeline's selection metric);
    returns it.  Only the form and the metric are checked here: whether the ranking is evaluated is known once the
    depths are."""
    names = (RP, MAP_AT_R, NMI)
    parts = value.split("/")
    tracked = parts[-1]
    if len(parts) != 2 or tracked not in map(tracked_name, names) and not tracked.startswith(tracked_name(RECALL)):
        raise ValueError(
            f"selection_metric {value!r} must be '<ranking>/<metric>' with ranking '{GLOBAL}' or "
            f"'{tracked_name(RERANKED)}<k>' and metric one of {', '.join(tracked_name(n) for n in names)} or "
            f"{tracked_name(RECALL)}<k>"
        )
    return value
