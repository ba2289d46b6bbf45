"""The Tune trainable of one trial: a driver function that builds and fits a Ray Train ``TorchTrainer``.

Ray 2.60 Train V2 + Tune: the Tune trainable is a plain function (``Tuner(TorchTrainer)`` is gone). The Train run is
named after the Tune trial id, so a restarted trial (Tune retry or ``--resume``) finds its checkpoints; the MLflow
child run is found by the same id, so it is continued rather than duplicated.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from pipeline import provenance, tracking
from pipeline.specs import RunSpec, TrialLaunch
from pipeline.specs.paths import set_path
from pipeline.trial.train_state import recover_train_run

SELECTION_SCORE = "selection_score"


class TrialFailed(RuntimeError):
    """A trial that cannot succeed by retrying (e.g. a NaN loss); Tune marks it errored."""


def apply_search(spec_json: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    """The trial's spec with the values Tune sampled for the search space (dotted paths) filled in."""
    spec_json = copy.deepcopy(spec_json)
    for path, value in sampled.items():
        set_path(spec_json, path, value)
    return spec_json


def _decode_search(sampled: dict[str, Any]) -> dict[str, Any]:
    return {key.replace("__", "."): value for key, value in sampled.items()}


def train_run_name(trial_id: str) -> str:
    """The Ray Train run of a Tune trial, named after its id so that a restarted trial finds its checkpoints."""
    return f"train-{trial_id}"


def build_trainer(spec: RunSpec, spec_json: dict[str, Any], trial_id: str, run_id: str | None, launch: TrialLaunch,
                  started_at: float, resume_from: str | None = None):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.trial.worker import train_loop

    r = spec.resources
    per_worker = r.per_worker()
    threads = str(max(1, int(r.cpus_per_worker)))
    return TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec_json, "run_id": run_id, "launch": launch.model_dump(mode="json"),
                           "trial_started_at": started_at, "resume_from": resume_from},
        torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=r.workers_per_trial, use_gpu=r.use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=train_run_name(trial_id),
            storage_path=launch.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=r.max_failures, controller_failure_limit=3),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=r.checkpoints_to_keep,
                                                         checkpoint_score_attribute=SELECTION_SCORE,
                                                         checkpoint_score_order="max"),
            callbacks=[TuneReportCallback()],
            worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                                             **(provenance.CUBLAS_WORKSPACE if spec.deterministic else {})}},
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )


def run_trial(config: dict[str, Any], trials: dict[str, dict[str, Any]], launch: dict[str, Any]) -> None:
    """Tune function trainable (bound with ``tune.with_parameters``). ``config``: ``trial`` (the grid point's
    label) and the sampled search values (keys are dotted paths with ``__`` for ``.``); ``trials``: label ->
    spec JSON and index; ``launch``: the launch's :class:`~pipeline.specs.TrialLaunch` as JSON."""
    import ray.tune

    launch = TrialLaunch.model_validate(launch)
    started_at = time.time()
    label = config["trial"]
    payload = trials[label]
    sampled = {k: v for k, v in config.items() if k != "trial"}
    spec_json = apply_search(payload["spec"], _decode_search(sampled))
    spec = RunSpec.model_validate(spec_json)
    trial_id = ray.tune.get_context().get_trial_id()
    uri = launch.tracking_uri
    run_id = None
    if uri:
        run = tracking.ensure_child_run(
            uri, launch.experiment_id, launch.parent_run_id, trial_id,
            run_name=label + "".join(f"_{v}" for v in sampled.values()), spec_json=spec_json,
            tags={**tracking.trial_tags(spec), "trial_index": str(payload["index"])})
        run_id = run.info.run_id
        if run.info.status == "FINISHED":  # finished before the launcher was killed: not re-run
            ray.tune.report({k: v for k, v in run.data.metrics.items() if k.startswith("best/")}
                            | {SELECTION_SCORE: run.data.metrics.get("best/selection_score", 0.0)})
            return
    from pipeline.trial.worker import STATE_FILE

    resume_from, recovered = recover_train_run(f"{launch.storage_path.rstrip('/')}/{train_run_name(trial_id)}",
                                               STATE_FILE)
    if recovered:
        print(recovered)
        if run_id:
            tracking.set_tags(uri, run_id, {"train_state_recovered": recovered[:4000]})
    try:
        result = build_trainer(spec, spec_json, trial_id, run_id, launch, started_at, resume_from).fit()
        outcome = result.return_value or {}
        if result.error is not None:
            raise result.error
        if outcome.get("status") == "failed":
            raise TrialFailed(f"trial {label} failed in epoch {outcome.get('epoch')}: "
                              f"{outcome.get('error')}")
    except BaseException as exc:
        if run_id:
            tracking.set_tags(uri, run_id, {"failure": f"{type(exc).__name__}: {exc}"[:4000]})
            tracking.end_run(uri, run_id, "FAILED")
        raise
    if run_id:
        tracking.set_tags(uri, run_id, {"ray_train_path": result.path or ""})
        tracking.end_run(uri, run_id, "FINISHED")
