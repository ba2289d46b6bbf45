"""Every name of an evaluation result, in one place, derived in one direction:

    result key of :func:`diml.evaluation.evaluate`  ->  tracked metric name (MLflow)  ->  display label

- Result keys: the rankings ``"global"`` and ``"diml@100"`` (re-ranked at depth 100) hold the metrics ``"R@1"``,
  ``"RP"``, ``"MAP@R"`` and (global only) ``"NMI"``.
- Tracked names: MLflow does not accept ``@`` in a metric name, so ``diml@`` becomes ``diml_K`` and any other ``@``
  becomes ``_at_``: ``test/diml_K100/R_at_1`` is metric ``R@1`` of ranking ``diml@100`` on split ``test``.
  :func:`result_name` maps a tracked name back.
- Labels: a results table shows the result keys (``diml@100 R@1``); the paper-style report writes the re-ranked
  rankings ``DIML@100``.

- Correspondence (interpretability) metrics of :func:`diml.evaluation.correspondence_metrics`: flat result keys
  ``<method>/<metric>`` (``"ot_argmax/PCK@0.1"``, ``"ot_mean/part/beak/cell_acc"``, ``"num_keypoints"``), tracked
  under the group ``interp``: :func:`interp_key` gives ``test/interp/ot_argmax/PCK_at_0.1``.

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


# ------------------------------------------------------------------ correspondence (interpretability) metrics
INTERP = "interp"
"""Group of the correspondence metrics in tracked names: ``test/interp/ot_argmax/PCK_at_0.1``."""

OT = "ot"
"""The model's matching plan (the given :class:`~diml.ot.OTOptions`, cross-attention marginals by default)."""
UNIFORM_OT = "uniform_ot"
"""Baseline: the OT plan with uniform marginals (no cross-attention)."""
ARGMAX = "argmax"
"""Transfer rule: the reference cell that receives most of the keypoint cell's mass (its centre)."""
MEAN = "mean"
"""Transfer rule: the mass-weighted mean of the reference cells' centres (barycentric map)."""
NEAREST_COSINE = "nearest_cosine"
"""Baseline: the reference cell most cosine-similar to the query cell (no transport)."""
IDENTITY = "identity"
"""Baseline: the same position in the reference (no matching)."""
GRID_CEILING = "grid_ceiling"
"""The grid's limit: the true keypoint snapped to its own cell's centre."""

PCK = "PCK@"
"""Prefix of PCK with L = the image side: ``"PCK@0.1"``."""
PCK_BBOX = "PCK_bbox@"
"""Prefix of PCK with L = max(width, height) of the target's box (SPair-71k): ``"PCK_bbox@0.1"``."""
CELL_ACCURACY = "cell_acc"
"""Share of keypoints whose predicted cell is the cell of the true keypoint."""
UNTRANSFERRED = "untransferred"
"""Share of keypoints a plan cannot carry: their query cell has no mass (counted as wrong in every other metric)."""
PART = "part"
"""Per-part results: ``"<method>/part/<part name>/<metric>"``."""
NUM_PAIRS = "num_pairs"
"""Unordered image pairs sampled (each scored in both directions)."""
NUM_ELIGIBLE_PAIRS = "num_eligible_pairs"
"""Unordered same-class pairs with at least one part visible in both images, before sampling."""
NUM_DIRECTED_PAIRS = "num_directed_pairs"
"""(query, reference) pairs with at least one keypoint scored."""
NUM_KEYPOINTS = "num_keypoints"
"""Keypoint transfers scored (visible in both images, both directions)."""
SEED = "seed"
IMAGE_SIZE = "image_size"
"""The side S of the evaluation crop: L of every ``PCK@`` metric."""
GRID = "grid"

PLAN_METHODS = (OT, UNIFORM_OT)
"""Plans whose keypoints are carried by both rules: ``ot_argmax``, ``ot_mean``, ``uniform_ot_argmax``, ..."""

_PART_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}")


def transfer_method(plan: str, rule: str) -> str:
    """The method name of a plan and a transfer rule: ``("ot", "argmax")`` -> ``"ot_argmax"``."""
    return f"{plan}_{rule}"


def pck_name(alpha: float, *, bbox: bool = False) -> str:
    """The result key of PCK at ``alpha``: ``"PCK@0.1"`` (L = image side) or ``"PCK_bbox@0.1"`` (L = box side)."""
    return f"{PCK_BBOX if bbox else PCK}{alpha:g}"


def interp_name(method: str, metric: str, part: str | None = None) -> str:
    """A correspondence result key: ``"ot_argmax/PCK@0.1"``, or per part ``"ot_argmax/part/beak/PCK@0.1"``."""
    return f"{method}/{metric}" if part is None else f"{method}/{PART}/{part}/{metric}"


def part_count_name(part: str) -> str:
    """The key of the number of keypoints of one part scored: ``"part/beak/num_keypoints"``."""
    return f"{PART}/{part}/{NUM_KEYPOINTS}"


def interp_key(split: str, name: str) -> str:
    """The tracked name of a correspondence result key on ``split``: ``("test", "ot_argmax/PCK@0.1")`` ->
    ``"test/interp/ot_argmax/PCK_at_0.1"``."""
    return f"{split}/{INTERP}/{tracked_name(name)}"


def check_part_name(name) -> str:
    """A part name fit for result keys and MLflow: 1-64 ASCII letters, digits, spaces, ``_ . -``, starting with a
    letter or digit, and no ``_at_`` or ``diml_K`` (which :func:`result_name` would read as ``@`` and ``diml@``);
    returns it."""
    if not isinstance(name, str) or not _PART_NAME.fullmatch(name) or result_name(name) != name:
        raise ValueError(f"part_names entry {name!r} must be 1-64 ASCII letters, digits, spaces, '_', '.', '-' "
                         "starting with a letter or digit, without '_at_' or 'diml_K' (e.g. 'left eye'): rename the "
                         "part")
    return name


INTERP_SHOWN = ((transfer_method(OT, ARGMAX), CELL_ACCURACY), (transfer_method(OT, MEAN), pck_name(0.1)))
"""The correspondence results that tables and the runs view show first, as ``(method, metric)``: the share of
keypoints whose argmax cell is the part's cell, and PCK@0.1 of the barycentric transfer (L = the image side)."""

INTERP_REPORTED = (transfer_method(OT, ARGMAX), transfer_method(OT, MEAN), transfer_method(UNIFORM_OT, ARGMAX),
                   transfer_method(UNIFORM_OT, MEAN), NEAREST_COSINE, IDENTITY, GRID_CEILING)
"""The methods of the paper-style report's part-correspondence table: the model's flow, then the baselines and
the ceiling, in that order."""


def interp_label(method: str, metric: str) -> str:
    """A short column label: ``("ot_argmax", "cell_acc")`` -> ``"flow argmax cell acc"``."""
    shown = {OT: "flow", UNIFORM_OT: "uniform-OT", NEAREST_COSINE: "nearest-cos", IDENTITY: "identity",
             GRID_CEILING: "ceiling"}
    for plan in PLAN_METHODS:
        for rule in (ARGMAX, MEAN):
            shown[transfer_method(plan, rule)] = f"{shown[plan]} {rule}"
    return f"{shown.get(method, method)} {metric.replace('_', ' ')}"
