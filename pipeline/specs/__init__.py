"""Experiment specs: strict, frozen Pydantic models with every default in one place, one model per level.

- :mod:`pipeline.specs.trial`: :class:`RunSpec`, what one trial needs (data, model, loss, optimizer, batch,
  evaluation, per-trial resources); a grid may vary any of it.
- :mod:`pipeline.specs.launch`: :class:`LaunchSpec`, what only the launch as a whole decides (tracking, storage,
  concurrency, driver resources, Tune-level failures, search and scheduler); :class:`GridSpec` (grid, overrides);
  :class:`TrialLaunch`, what a trial receives of its launch.

One spec file holds all of them; :mod:`pipeline.launch.study` splits and expands it.
"""

from pipeline.specs.common import Strict, expand_env
from pipeline.specs.launch import (
    GRID_KEYS,
    LAUNCH_KEYS,
    MOVED,
    GridSpec,
    LaunchOptions,
    LaunchSpec,
    Override,
    SchedulerSpec,
    SearchDim,
    SearchSpec,
    TrackingSpec,
    TrialLaunch,
)
from pipeline.specs.trial import (
    CHECK_PATHS,
    DATASETS,
    AugmentationSpec,
    BatchSpec,
    DataSpec,
    EvaluationSpec,
    LossSpec,
    ModelSpec,
    OptimizerSpec,
    OTSpec,
    ResourcesSpec,
    RunSpec,
    ScheduleSpec,
    SyntheticSpec,
)

__all__ = [
    "CHECK_PATHS", "AugmentationSpec", "DATASETS", "GRID_KEYS", "LAUNCH_KEYS", "MOVED", "BatchSpec", "DataSpec",
    "EvaluationSpec", "GridSpec", "LaunchOptions", "LaunchSpec", "LossSpec", "ModelSpec", "OTSpec", "OptimizerSpec",
    "Override", "ResourcesSpec", "RunSpec", "ScheduleSpec", "SchedulerSpec", "SearchDim", "SearchSpec", "Strict",
    "SyntheticSpec", "TrackingSpec", "TrialLaunch", "expand_env",
]
