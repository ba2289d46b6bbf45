"""Load a spec file, apply command-line ``--set`` overrides, expand the grid and validate every trial.

All problems found are reported together as one :class:`SpecError` before anything expensive starts.
"""

from __future__ import annotations

import copy
import itertools
import pathlib
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.specs import PLAN_KEYS, PlanSpec, RunSpec


class SpecError(ValueError):
    """One or more problems in a spec; ``problems`` holds one line each (field path, bad value, the fix)."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in {source}:\n{lines}")


@dataclass(frozen=True)
class Trial:
    """One grid point: its validated spec, a short label and the values that distinguish it."""

    index: int
    spec: RunSpec
    varying: dict[str, Any] = field(default_factory=dict)
    short: str = ""

    @property
    def label(self) -> str:
        """Compact name built from the grid values (paths left out), e.g. ``cub200_margin-0.6-distance_0``."""
        return self.short or self.spec.name


@dataclass(frozen=True)
class Plan:
    """A validated spec file: its trials and the optional Tune search."""

    source: str
    trials: list[Trial]
    plan: PlanSpec
    raw: dict[str, Any]

    @property
    def name(self) -> str:
        return self.trials[0].spec.name


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        items = value.values() if isinstance(value, dict) else value
        return "-".join(_short(v) for v in items if v is not None and not _is_path(v))
    return str(value)


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and ("/" in value or value.startswith("$"))


# ----------------------------------------------------------------------------------------------------------- paths
def _field_model(annotation: Any) -> type[BaseModel] | None:
    """The spec model a field holds, or None for leaves (``X | None`` unwrapped)."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_free_dict(annotation: Any) -> bool:
    return annotation is dict or typing.get_origin(annotation) is dict


def check_path(path: str, model: type[BaseModel] = RunSpec) -> str | None:
    """Return a problem message when ``path`` (dotted) does not name a field of ``model``, else None."""
    parts = path.split(".")
    current: type[BaseModel] | None = model
    for depth, part in enumerate(parts):
        fields = current.model_fields
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            return f"{path}: {part!r} is not a spec field; allowed under {where}: {', '.join(fields)}"
        annotation = fields[part].annotation
        if _is_free_dict(annotation):
            return None  # free-form hyperparameters (loss.params, ...): any sub-key
        nested = _field_model(annotation)
        if nested is None:
            if depth != len(parts) - 1:
                return f"{path}: {'.'.join(parts[:depth + 1])} is a value, not a section"
            return None
        current = nested
    return None


def get_path(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` in ``tree``; a dict value deep-merges into an existing section."""
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = deep_merge(node[last], value)
    else:
        node[last] = copy.deepcopy(value)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: tree}


# ---------------------------------------------------------------------------------------------------- validation
def format_validation_error(error: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per Pydantic error: dotted field path, the bad value and what is allowed."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"])
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "spec"
        if item["type"] == "extra_forbidden":
            parent = check_path(".".join(str(p) for p in item["loc"]), model)
            lines.append(parent or f"{where}: unknown key")
            continue
        message = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
        lines.append(f"{where}: {message}{shown}")
    return lines


def parse_set_option(option: str) -> tuple[str, Any]:
    """``path=value`` from ``--set``; the value is parsed as YAML (``lr=1e-4`` -> float, ``x=[1,2]`` -> list)."""
    path, sep, text = option.partition("=")
    if not sep or not path.strip():
        raise SpecError("--set", [f"--set {option!r}: expected path=value, e.g. --set optimizer.lr=1e-4"])
    return path.strip(), yaml.safe_load(text) if text.strip() else None


def load_spec_file(path: str | pathlib.Path) -> dict[str, Any]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise SpecError(str(path), [f"spec file {str(path)!r} does not exist: give the path of a YAML spec"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [f"not valid YAML: {exc}".replace("\n", " ")]) from None
    if not isinstance(raw, dict):
        raise SpecError(str(path), ["the spec must be a mapping of fields (name:, data:, model:, ...)"])
    return raw


def build_plan(raw: dict[str, Any], source: str = "spec", sets: list[str] | None = None) -> Plan:
    """Validate a raw spec (after ``--set`` overrides), expand its grid and validate every trial.

    Raises :class:`SpecError` listing every problem found (each distinct one once).
    """
    raw = copy.deepcopy(raw)
    problems: list[str] = []
    for option in sets or []:
        try:
            key, value = parse_set_option(option)
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        owner = PlanSpec if key.split(".")[0] in PLAN_KEYS else RunSpec
        problem = None if owner is PlanSpec else check_path(key, RunSpec)
        if problem:
            problems.append(f"--set {problem}")
        else:
            set_path(raw, key, value)
    plan_raw = {key: raw.pop(key) for key in PLAN_KEYS if key in raw}
    try:
        plan = PlanSpec.model_validate(plan_raw)
    except ValidationError as exc:
        raise SpecError(source, problems + format_validation_error(exc, PlanSpec)) from None
    paths = list(plan.grid) + [p for o in plan.overrides for p in (*o.when, *o.set)]
    if plan.search:
        paths += list(plan.search.space)
    problems += [p for p in (check_path(path) for path in paths) if p]
    if problems:
        raise SpecError(source, _unique(problems))
    trials = _expand(raw, plan, source)
    return Plan(source=source, trials=trials, plan=plan, raw={**raw, **plan_raw})


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _expand(base: dict[str, Any], plan: PlanSpec, source: str) -> list[Trial]:
    axes = list(plan.grid.items())
    points = []
    for values in _grid_values(axes):
        point = copy.deepcopy(base)
        for (path, _), value in zip(axes, values):
            set_path(point, path, value)
        for override in plan.overrides:
            if all(get_path(point, p) == v for p, v in override.when.items()):
                for p, v in override.set.items():
                    set_path(point, p, v)
        points.append(point)
    varying_paths = _varying_leaves(points)
    trials, problems = [], []
    for index, (point, values) in enumerate(zip(points, _grid_values(axes))):
        varying = {p: v for p in varying_paths if not _is_path(v := _leaves(point).get(p))}
        label = "_".join(_short(v) for v in values)
        try:
            spec = RunSpec.model_validate(point)
        except ValidationError as exc:
            prefix = f"trial {index} ({label}): " if len(points) > 1 else ""
            problems += [prefix + line for line in format_validation_error(exc, RunSpec)]
            continue
        trials.append(Trial(index=index, spec=spec, varying=varying, short=label))
    if problems:
        raise SpecError(source, _collapse_trial_prefix(problems, len(points)))
    labels = [t.label for t in trials]
    return [t if labels.count(t.label) == 1 else Trial(t.index, t.spec, t.varying, f"{t.label}-{t.index}")
            for t in trials]


def _grid_values(axes: list[tuple[str, list[Any]]]):
    return itertools.product(*(v for _, v in axes)) if axes else [()]


def _varying_leaves(points: list[dict[str, Any]]) -> list[str]:
    leaf_sets = [_leaves(p) for p in points]
    keys = list(dict.fromkeys(k for leaves in leaf_sets for k in leaves))
    return [k for k in keys if len({repr(leaves.get(k)) for leaves in leaf_sets}) > 1]


def _collapse_trial_prefix(problems: list[str], n_points: int) -> list[str]:
    """The same problem in every trial (a base-spec error) is reported once, without the trial prefix."""
    if n_points <= 1:
        return _unique(problems)
    bodies: dict[str, list[str]] = {}
    for line in problems:
        body = line.split("): ", 1)[1] if line.startswith("trial ") else line
        bodies.setdefault(body, []).append(line)
    out = []
    for body, lines in bodies.items():
        out.extend([f"{body} (in all {n_points} trials)"] if len(lines) == n_points else lines)
    return out
