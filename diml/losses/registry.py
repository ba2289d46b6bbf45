"""Name -> factory registries for losses and miners, with validated hyperparameters.

One :class:`Registry` per kind of component.  Registering a name twice raises (timm only warns); an unknown name or
an unknown / invalid hyperparameter raises ``ValueError`` whose one-line message names it and lists what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its default and a check returning an error fragment (``None`` when the value is fine)."""

    default: Any
    check: Callable[[Any], str | None]


def number(*, low: float | None = None, high: float | None = None, low_open: bool = False) -> Callable:
    """Check for a finite real number in ``[low, high]`` (``(low, high]`` when ``low_open``)."""

    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "must be a finite number"
        if low is not None and (value <= low if low_open else value < low):
            return f"must be {'>' if low_open else '>='} {low}"
        if high is not None and value > high:
            return f"must be <= {high}"
        return None

    return check


def integer(*, low: int, high: int | None = None) -> Callable:
    """Check for an ``int`` (not a bool) in ``[low, high]``."""

    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            return f"must be an int >= {low}" + ("" if high is None else f" and <= {high}")
        return None

    return check


def boolean(value) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def choice(*values) -> Callable:
    """Check for one of ``values``."""

    def check(value):
        return None if value in values and not isinstance(value, bool) else f"must be one of {list(values)}"

    return check


def optional(inner: Callable) -> Callable:
    """Allow ``None`` in addition to what ``inner`` accepts."""

    def check(value):
        return None if value is None else inner(value)

    return check


def resolve_params(owner: str, spec: Mapping[str, Param], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``given`` into the defaults of ``spec`` after checking every key and value.

    Raises ``ValueError`` naming the first unknown key (with the allowed keys) or the first invalid value.
    """
    given = {} if given is None else given
    if not isinstance(given, Mapping):
        raise ValueError(f"{owner} params must be a dict of hyperparameters (got {type(given).__name__})")
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise ValueError(f"{owner} has no hyperparameter {unknown[0]!r}; allowed: {sorted(spec) or 'none'}")
    resolved = {name: p.default for name, p in spec.items()}
    for name, value in given.items():
        problem = spec[name].check(value)
        if problem is not None:
            raise ValueError(f"{owner} hyperparameter {name!r} {problem} (got {value!r})")
        resolved[name] = value
    return resolved


@dataclass(frozen=True)
class Entry:
    """A registered component: its factory, hyperparameter spec and free-form properties."""

    name: str
    factory: Callable[..., Any]
    params: Mapping[str, Param]
    info: Mapping[str, Any] = field(default_factory=dict)


class Registry:
    """A name -> :class:`Entry` table for one kind of component (``kind`` appears in error messages)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, params: Mapping[str, Param] | None = None, **info) -> Callable:
        """Decorator registering ``factory`` under ``name``; a second registration of ``name`` raises."""

        def decorate(factory):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered; choose another name")
            self._entries[name] = Entry(name, factory, dict(params or {}), dict(info))
            return factory

        return decorate

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)
