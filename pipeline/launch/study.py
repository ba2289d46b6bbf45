"""Load a spec file, apply command-line ``--set`` overrides, split it into its levels and expand the grid into a
:class:`Study`: one :class:`~pipeline.specs.LaunchSpec` and one validated :class:`~pipeline.specs.RunSpec` per trial.

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

from pipeline.specs.paths import get_path, set_path
from pipeline.specs.yaml_file import load_yaml_spec
from pipeline.specs import CHECK_PATHS, GRID_KEYS, LAUNCH_KEYS, MOVED, GridSpec, LaunchSpec, RunSpec, checks


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
class Study:
    """A validated spec file: the launch's own settings, its grid and the trials it expands to."""

    source: str
    launch: LaunchSpec
    grid: GridSpec
    trials: list[Trial]
    raw: dict[str, Any]

    @property
    def name(self) -> str:
        return self.launch.name

    @property
    def samples(self) -> int:
        """Tune samples per grid point (the search's ``num_samples``, 1 without a search)."""
        return self.launch.search.num_samples if self.launch.search else 1


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
    if model is RunSpec and path in MOVED:
        return f"{path} is now {MOVED[path]} (a setting of the launch as a whole): move it there"
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
    """The raw spec of a YAML file; a missing, binary or non-UTF-8 file, invalid YAML or a key written twice is a
    :class:`SpecError` (see :mod:`pipeline.specs.yaml_file`)."""
    raw, problems = load_yaml_spec(path)
    if problems:
        raise SpecError(str(path), problems)
    return raw


def build_study(raw: dict[str, Any], source: str = "spec", sets: list[str] | None = None, *,
                check_paths: bool = True) -> Study:
    """Validate a raw spec (after ``--set`` overrides), split it into launch, grid and trial fields, expand the grid
    and validate every trial.

    ``check_paths=False`` (a dry run planning for another machine) leaves out the checks of this machine's files
    (dataset roots); every value is still checked.

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
        problem = check_path(key, _owner(key))
        if problem:
            problems.append(f"--set {problem}")
        else:
            set_path(raw, key, value)
    grid_raw = {key: raw.pop(key) for key in GRID_KEYS if key in raw}
    launch_raw = {key: raw.pop(key) for key in LAUNCH_KEYS if key in raw}
    # the name is shared: a missing or bad one is reported once, by the trials' validation below
    launch_raw["name"] = raw.get("name") if isinstance(raw.get("name"), str) and raw.get("name") else "unnamed"
    launch = grid = None
    try:
        grid = GridSpec.model_validate(grid_raw)
    except ValidationError as exc:
        problems += format_validation_error(exc, GridSpec)
    try:
        launch = LaunchSpec.model_validate(launch_raw)
    except ValidationError as exc:
        problems += [p for p in format_validation_error(exc, LaunchSpec) if not p.startswith("name:")]
    if grid is None:
        raise SpecError(source, _unique(problems))
    paths = [("grid", p) for p in grid.grid] + [("overrides", p) for o in grid.overrides for p in (*o.when, *o.set)]
    paths += [("search.space", p) for p in (launch.search.space if launch and launch.search else {})]
    problems += [problem for section, path in paths if (problem := _varied_problem(section, path))]
    if problems:
        raise SpecError(source, _unique(problems))
    trials = _expand(raw, grid, source, launch, check_paths)
    return Study(source=source, launch=launch, grid=grid, trials=trials, raw={**raw, **launch_raw, **grid_raw})


def _owner(path: str) -> type[BaseModel]:
    head = path.split(".")[0]
    return GridSpec if head in GRID_KEYS else LaunchSpec if head in LAUNCH_KEYS else RunSpec


def _varied_problem(section: str, path: str) -> str | None:
    """A grid axis, override or search dimension must name a trial field: launch fields have one value."""
    if path.split(".")[0] in LAUNCH_KEYS or path in MOVED:
        where = MOVED.get(path, path)
        return (f"{section}: {path} belongs to the launch as a whole ({where}) and cannot vary between trials: "
                f"set it once at the top level (launch fields: {', '.join(LAUNCH_KEYS)})")
    return check_path(path)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _expand(base: dict[str, Any], grid: GridSpec, source: str, launch: LaunchSpec | None = None,
            check_paths: bool = True) -> list[Trial]:
    axes = list(grid.grid.items())
    points = []
    for values in _grid_values(axes):
        point = copy.deepcopy(base)
        for (path, _), value in zip(axes, values):
            set_path(point, path, value)
        for override in grid.overrides:
            if all(get_path(point, p) == v for p, v in override.when.items()):
                for p, v in override.set.items():
                    set_path(point, p, v)
        points.append(point)
    varying_paths = _varying_leaves(points)
    trials, found = [], []
    for index, (point, values) in enumerate(zip(points, _grid_values(axes))):
        varying = {p: v for p in varying_paths if not _is_path(v := _leaves(point).get(p))}
        label = "_".join(_short(v) for v in values)
        try:
            spec = RunSpec.model_validate(point, context={CHECK_PATHS: check_paths})
        except ValidationError as exc:
            found += [(index, line) for line in format_validation_error(exc, RunSpec)]
            continue
        found += [(index, line) for line in checks.trial_problems(spec)]
        trials.append(Trial(index=index, spec=spec, varying=varying, short=label))
    problems = group_problems(found, [list(v) for v in _grid_values(axes)], [path for path, _ in axes])
    if launch is not None and trials and not found:
        problems += checks.launch_problems(launch, [t.spec for t in trials])
        problems += checks.search_problems(launch, points[0])
    if problems:
        raise SpecError(source, problems)
    labels = [t.label for t in trials]
    return [t if labels.count(t.label) == 1 else Trial(t.index, t.spec, t.varying, f"{t.label}-{t.index}")
            for t in trials]


def group_problems(found: list[tuple[int, str]], points: list[list[Any]], axes: list[str]) -> list[str]:
    """One line per distinct problem of a grid's trials (``found``: (trial index, problem)), saying in how many
    trials it occurs and, when not in all, the grid values of those trials (``points``: each trial's axis values)."""
    by_body: dict[str, list[int]] = {}
    for index, body in found:
        by_body.setdefault(body, [])
        if index not in by_body[body]:
            by_body[body].append(index)
    n = len(points)
    lines = []
    for body, indices in by_body.items():
        if n <= 1:
            lines.append(body)
        elif len(indices) == n:
            lines.append(f"{body} (in all {n} trials)")
        elif len(indices) == 1:
            label = "_".join(_short(v) for v in points[indices[0]])
            lines.append(f"trial {indices[0]} ({label}): {body}")
        else:
            lines.append(f"{body} (in {len(indices)} of {n} trials: {_which(indices, points, axes)})")
    return lines


def _which(indices: list[int], points: list[list[Any]], axes: list[str]) -> str:
    """The grid values shared by the affected trials, axis by axis (axes whose every value is affected are left
    out: they do not tell the trials apart)."""
    parts = []
    for position, axis in enumerate(axes):
        every = list(dict.fromkeys(_short(p[position]) for p in points))
        hit = list(dict.fromkeys(_short(points[i][position]) for i in indices))
        if len(hit) < len(every):
            parts.append(f"{axis}={'|'.join(hit)}")
    return ", ".join(parts) or f"trials {', '.join(map(str, indices[:10]))}{' ...' if len(indices) > 10 else ''}"


def _grid_values(axes: list[tuple[str, list[Any]]]):
    return itertools.product(*(v for _, v in axes)) if axes else [()]


def _varying_leaves(points: list[dict[str, Any]]) -> list[str]:
    leaf_sets = [_leaves(p) for p in points]
    keys = list(dict.fromkeys(k for leaves in leaf_sets for k in leaves))
    return [k for k in keys if len({repr(leaves.get(k)) for leaves in leaf_sets}) > 1]
