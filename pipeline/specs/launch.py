"""The launch level of a spec: what only the launch as a whole decides (:class:`LaunchSpec`), the sections that turn
one run into many trials (:class:`GridSpec`), and what a trial receives of the launch (:class:`TrialLaunch`).

A spec file holds all three levels side by side::

    name: my-study          # shared by the launch and its trials
    epochs: 30              # ... every RunSpec field (pipeline.specs.trial): one trial
    tracking: {uri: ...}    # LaunchSpec: tracking, launch, search
    launch: {storage_path: ..., max_concurrent_trials: 8}
    search: {space: ...}
    grid: {loss.name: [margin, multisimilarity]}   # GridSpec: grid, overrides
    overrides: [...]

A grid, an override or a search may vary RunSpec fields only: a launch field has one value for the whole launch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.specs.common import NAME_PATTERN, Strict, expand_env


class TrackingSpec(Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI or ./mlflow.db")
    experiment: str | None = Field(None, description="MLflow experiment name; default: the spec name")
    artifact_location: str | None = Field(None, description="artifact root for a new experiment; default ./mlartifacts")
    log_checkpoint: bool = True


# Ray `memory` each trial's driver reserves: the Tune trial process (imports ray.train.torch, torch, MLflow) and Ray
# Train's controller actor, which Ray Train pins to the driver's node. Measured (benchmarks/driver_memory.py, tiny
# launch, 2 trials at once, Ray 2.60, torch 2.14.1): peak PSS 798 MiB + 532 MiB = 1330 MiB (RSS 1372 + 901 MiB,
# shared library pages counted in each); rounded up.
DRIVER_MEMORY_MB = 1400


class LaunchOptions(Strict):
    """Where the launch keeps its results and how it schedules its trials on Ray."""

    storage_path: str | None = Field(None, description="Ray results/checkpoints: absolute path or s3:// gs://")
    max_concurrent_trials: int | None = Field(None, ge=1, description="cap on trials at once (default: what fits "
                                                                      "the cluster at its largest)")
    driver_cpus: float = Field(0.01, gt=0.0, le=8.0, description="CPU share of each trial's driver process")
    driver_memory_mb: int = Field(DRIVER_MEMORY_MB, ge=0, le=1024**2,
                                  description="Ray memory each trial's driver reserves (MiB; 0: none), so Ray "
                                              "places no more drivers on a node than fit")
    trial_max_failures: int = Field(0, ge=0, description="Tune-level retries of a whole trial")

    @field_validator("storage_path", mode="before")
    @classmethod
    def _expand_storage(cls, value: Any) -> Any:
        return expand_env(value) if isinstance(value, str) else value


class SearchDim(Strict):
    """One dimension of a Tune search space."""

    type: Literal["uniform", "loguniform", "choice", "randint", "quniform"]
    low: float | None = None
    high: float | None = None
    q: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> "SearchDim":
        if self.type == "choice":
            if not self.values:
                raise ValueError("a 'choice' search dimension needs a non-empty 'values' list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type!r} search dimension needs low < high")
        elif self.type == "loguniform" and self.low <= 0:
            raise ValueError("a 'loguniform' search dimension needs low > 0")
        elif self.type == "quniform" and not self.q:
            raise ValueError("a 'quniform' search dimension needs q > 0")
        return self


class SchedulerSpec(Strict):
    """Trial scheduler; it maximises ``evaluation.selection_metric`` on the selection split."""

    name: Literal["fifo", "asha"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)


class SearchSpec(Strict):
    """Tune search combined with the grid: every grid point is sampled ``num_samples`` times."""

    space: dict[str, SearchDim]
    num_samples: int = Field(1, ge=1, le=10000)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)


class LaunchSpec(Strict):
    """Everything the launch as a whole decides; read by the launcher only (a trial gets a :class:`TrialLaunch`)."""

    name: str = Field(..., min_length=1, max_length=100, pattern=NAME_PATTERN)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    launch: LaunchOptions = Field(default_factory=LaunchOptions)
    search: SearchSpec | None = None


class Override(Strict):
    """Per-value overrides: when every ``when`` path has the given value, apply ``set`` (dotted paths)."""

    when: dict[str, Any] = Field(..., min_length=1)
    set: dict[str, Any] = Field(..., min_length=1)


class GridSpec(Strict):
    """The sections of a spec file that turn one run into many trials: ``grid`` and ``overrides``."""

    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted path -> values (cartesian)")
    overrides: list[Override] = Field(default_factory=list)

    @field_validator("grid")
    @classmethod
    def _non_empty_axes(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, values in value.items():
            if not values:
                raise ValueError(f"grid axis {path!r} has no values: give at least one")
        return value


class TrialLaunch(Strict):
    """What a trial receives of its launch (crosses the Ray boundary as JSON, re-validated in the trial)."""

    tracking_uri: str | None
    experiment_id: str | None
    parent_run_id: str | None
    storage_path: str
    log_checkpoint: bool = True
    attempt: str | None = Field(None, description="this run of the launcher (a new one on --resume): a trial that "
                                                  "failed for good in it is not retried by Tune")


LAUNCH_KEYS = tuple(k for k in LaunchSpec.model_fields if k != "name")
GRID_KEYS = tuple(GridSpec.model_fields)
# Fields that moved from a trial section to the launch: an old spec gets the new path in its error.
MOVED = {
    "resources.trial_cpus": "launch.driver_cpus",
    "resources.max_concurrent_trials": "launch.max_concurrent_trials",
    "resources.storage_path": "launch.storage_path",
    "resources.trial_max_failures": "launch.trial_max_failures",
}
