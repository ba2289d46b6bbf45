"""What every spec model shares: strictness (unknown keys are errors, instances immutable) and ``${VAR}``."""

from __future__ import annotations

import os
import re

from pydantic import BaseModel, ConfigDict

_ENV_REFERENCE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """``${VAR}`` and ``${VAR:-default}`` from the environment, then ``~`` (dataset roots in shared specs)."""

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name) or default
        if value is None:
            raise ValueError(f"environment variable {name} is not set: export it or write ${{{name}:-/default}}")
        return value

    return os.path.expanduser(_ENV_REFERENCE.sub(substitute, text))


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # spec names: MLflow experiments, Ray folders


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
