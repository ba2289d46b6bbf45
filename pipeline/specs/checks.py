"""Cross-field checks: values of a spec that must agree with each other or with the data, checked when the spec is
validated (nothing is built, no image is read) instead of failing in the trials after Ray has started.

Each check returns problem lines ``field.path: the bad value ...: the fix``; :mod:`pipeline.launch.study` reports
them with the field errors, grouped over the trials of a grid.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

from diml import names
from pipeline.specs.launch import LaunchSpec
from pipeline.specs.trial import RunSpec

_RECALL = re.compile(rf"^{re.escape(names.tracked_name(names.RECALL))}(\d+)$")
METRICS = tuple(names.tracked_name(n) for n in (names.RP, names.MAP_AT_R, names.NMI))
GLOBAL_ONLY_METRICS = (names.NMI,)  # diml.evaluation.evaluate computes NMI on the global embedding only


def trial_problems(spec: RunSpec) -> list[str]:
    """Every cross-field problem of one trial's spec."""
    return [*_selection_metric(spec), *_positive_pairs(spec), *_batch_classes(spec), *_schedule(spec),
            *_data_sources(spec), *_precision(spec)]


def launch_problems(launch: LaunchSpec, specs: list[RunSpec]) -> list[str]:
    """Problems between the launch's own settings and its trials (one line each, however many trials)."""
    search = launch.search
    if not search or search.scheduler.name != "asha":
        return []
    problems = []
    on_test = sum(spec.selection_split == "test" for spec in specs)
    if on_test:
        problems.append(
            f"search.scheduler.name: 'asha' stops trials early on the selection split's score, but "
            f"{on_test} of {len(specs)} trial(s) select on the test split (evaluation.selection_split, 'auto' with "
            "data.val_fraction 0): the test set would pick the surviving trials; set data.val_fraction (e.g. 0.15) "
            "and evaluation.selection_split auto or val, or search.scheduler.name: fifo")
    return problems


def _selection_metric(spec: RunSpec) -> list[str]:
    e = spec.evaluation
    ranking, metric = e.selection_metric.split("/")
    field = f"evaluation.selection_metric {e.selection_metric!r}"
    problems = []
    depth = names.depth_of(ranking)
    reranked = names.tracked_name(names.RERANKED)
    if not names.is_ranking(ranking):
        problems.append(f"{field}: ranking {ranking!r} is neither '{names.GLOBAL}' nor '{reranked}<depth>': write "
                        f"e.g. {names.GLOBAL}/{metric} or {reranked}{(e.depths or [100])[0]}/{metric}")
    elif depth is not None and depth not in e.depths:
        problems.append(f"{field}: depth {depth} is not evaluated (evaluation.depths {e.depths}): add "
                        f"{depth} to evaluation.depths or select on one of "
                        f"{', '.join(f'{reranked}{d}' for d in e.depths) or names.GLOBAL}")
    elif depth is not None and metric in GLOBAL_ONLY_METRICS:
        problems.append(f"{field}: {metric} is computed for the global ranking only: select on "
                        f"{names.GLOBAL}/{metric}")
    recall = _RECALL.match(metric)
    if recall and int(recall.group(1)) not in e.ks:
        problems.append(f"{field}: Recall@{recall.group(1)} is not evaluated (evaluation.ks {e.ks}): add "
                        f"{recall.group(1)} to evaluation.ks or select on R_at_{e.ks[0] if e.ks else 1}")
    elif not recall and metric not in METRICS:
        problems.append(f"{field}: unknown metric {metric!r}: use R_at_<k> or one of {', '.join(METRICS)}")
    return problems


def _positive_pairs(spec: RunSpec) -> list[str]:
    from diml.losses import needs_positive_pairs

    if spec.batch.images_per_class > 1 or not needs_positive_pairs(spec.loss.name):
        return []
    return [f"batch.images_per_class 1 with loss.name {spec.loss.name!r}: a batch of one image per class holds no "
            "positive pair, so this pair-based loss has nothing to learn from; set batch.images_per_class >= 2 (the "
            "paper uses 2) or a proxy loss (proxynca, proxyanchor, softmax, arcface, softtriple)"]


def _batch_classes(spec: RunSpec) -> list[str]:
    """The class-balanced sampler draws ``P`` distinct classes per worker batch out of the training split."""
    from diml.data.class_counts import validation_class_count

    d = spec.data
    total = _train_classes(d.dataset, d.root, d.test_fraction, d.synthetic.num_classes)
    if total is None:
        return []
    held_out = validation_class_count(total, d.val_fraction)
    if held_out >= total:
        return [f"data.val_fraction {d.val_fraction} moves all {total} training classes of {d.dataset} to "
                "validation: lower data.val_fraction"]
    classes = total - held_out
    workers = spec.resources.workers_per_trial
    per_worker = spec.batch.size // workers
    wanted = per_worker // spec.batch.images_per_class
    if wanted <= classes or spec.batch.sampling == "with_replacement":  # classes may repeat in a batch then
        return []
    source = f"data.synthetic.num_classes {d.synthetic.num_classes} (half train)" if d.dataset == "synthetic" \
        else f"{d.dataset} at {d.root}"
    val = f" after data.val_fraction {d.val_fraction} held out {held_out}" if held_out else ""
    return [f"batch.size {spec.batch.size}: each of the {workers} worker(s) draws {wanted} classes x "
            f"{spec.batch.images_per_class} images per batch, but the training split of {source} holds {classes} "
            f"classes{val}: lower batch.size to at most {classes * spec.batch.images_per_class * workers}, raise "
            "batch.images_per_class, or use more classes"]


@functools.lru_cache(maxsize=64)
def _train_classes(dataset: str, root: str | None, test_fraction: float, num_classes: int) -> int | None:
    """Read once per dataset, not once per trial (a 180-trial grid shares three datasets)."""
    from diml.data.class_counts import train_class_count

    return train_class_count(dataset, root, test_fraction=test_fraction, num_classes=num_classes)


def _schedule(spec: RunSpec) -> list[str]:
    s = spec.schedule
    if s.name == "multistep" and (late := [m for m in s.milestones if m >= spec.epochs]):
        return [f"schedule.milestones {late} are not below epochs {spec.epochs}: those decays would never happen; "
                f"choose milestones < {spec.epochs} or more epochs"]
    if s.name == "step" and s.step_size >= spec.epochs:
        return [f"schedule.step_size {s.step_size} is not below epochs {spec.epochs}: the rate would never decay; "
                f"choose step_size < {spec.epochs} or schedule.name: none"]
    return []


def _data_sources(spec: RunSpec) -> list[str]:
    if spec.data.dataset == "synthetic" and spec.data.root:
        return [f"data.root {spec.data.root!r} is set but the synthetic dataset is generated on the fly: remove "
                "data.root or choose a real data.dataset"]
    return []


def _precision(spec: RunSpec) -> list[str]:
    if spec.model.amp and not spec.resources.use_gpu:
        return ["model.amp is true but resources.use_gpu is false: bf16 autocast runs on GPUs only and would be "
                "ignored; set resources.use_gpu: true or model.amp: false"]
    return []


def search_problems(launch: LaunchSpec, point: dict[str, Any]) -> list[str]:
    """Every value a search dimension can draw (its bounds, or each choice) must make a valid trial spec: Tune
    samples inside Ray, where a refused value would fail the trial after the launch started."""
    problems = []
    for path, dim in (launch.search.space.items() if launch.search else ()):
        problems += _search_dim_problems(path, dim, point)
    return problems


def _search_candidates(dim) -> list[Any]:
    """The bounds of a dimension and one value inside (a float field drawn for an int field shows there)."""
    if dim.type == "choice":
        return list(dim.values)
    if dim.type == "randint":  # Tune's randint excludes high
        return [int(dim.low), int(dim.high) - 1]
    inside = dim.low + 0.37 * (dim.high - dim.low)
    if dim.type == "loguniform":
        inside = dim.low * (dim.high / dim.low) ** 0.37
    elif dim.type == "quniform":
        inside = round(inside / dim.q) * dim.q
    return [dim.low, inside, dim.high]


def _search_dim_problems(path: str, dim, point: dict[str, Any]) -> list[str]:
    """The first value of ``dim`` that makes the trial spec ``point`` invalid, as a problem line (or none)."""
    from pydantic import ValidationError

    from pipeline.specs.paths import set_path

    for value in _search_candidates(dim):
        trial = copy.deepcopy(point)
        set_path(trial, path, value)
        try:
            RunSpec.model_validate(trial)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "spec"
            shown = f"{value:.4g}" if isinstance(value, float) else repr(value)
            return [f"search.space.{path}: the {dim.type} value {shown} makes an invalid trial "
                    f"({where}: {first['msg'].removeprefix('Value error, ')}): change the range"]
    return []
