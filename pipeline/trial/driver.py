"""The Tune trainable of one trial: a driver function that builds and fits a Ray Train ``TorchTrainer``.

Ray 2.60 Train V2 + Tune: the Tune trainable is a plain function (``Tuner(TorchTrainer)`` is gone). The Train run is
named after the Tune trial id, so a restarted trial (Tune retry or ``--resume``) finds its checkpoints; the MLflow
child run is found by the same id, so it is continued rather than duplicated.

A failed trial raises :class:`~pipeline.trial.failures.TrialFailed` with its root cause in one line (also the MLflow
tag ``failure``). One that no retry can fix (:func:`~pipeline.trial.failures.is_retryable`) is not run again: Ray
Train's restarts are refused by the trial's failure policy, and a Tune retry in the same launch (``launch.attempt``)
fails at once with the recorded cause; a later ``--resume`` runs it again (the data may have been fixed).
"""

from __future__ import annotations

import copy
import time
from typing import Any

from pipeline import provenance, tracking, tracking_buffer
from pipeline.specs import RunSpec, TrialLaunch
from pipeline.specs.paths import set_path
from pipeline.trial import failures
from pipeline.trial.failures import TrialFailed, TrialUnlogged
from pipeline.trial.ray_workarounds import TAG_RESTART_REASONS
from pipeline.trial.train_state import recover_train_run

SELECTION_SCORE = "selection_score"
TAG_FAILURE = "failure"  # the root cause, one line
TAG_RETRYABLE = "failure.retryable"  # "false": no retry can fix it
TAG_ATTEMPT = "failure.attempt"  # the launch attempt (TrialLaunch.attempt) it failed in
TAG_ATTEMPTS = "attempts"  # how many times the trial's training was started (Tune retries, --resume)


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
                  started_at: float, resume_from: str | None = None, restarts: list[str] = ()):
    """The trial's ``TorchTrainer``; ``restarts``: the reasons of earlier worker restarts (MLflow tag), kept."""
    import ray.train
    from ray.train.torch import TorchConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.trial.ray_workarounds import TrialFailurePolicy, torch_trainer
    from pipeline.trial.worker import train_loop

    r = spec.resources
    per_worker = r.per_worker()
    threads = str(max(1, int(r.cpus_per_worker)))
    failure_config = ray.train.FailureConfig(max_failures=r.max_failures, controller_failure_limit=3)
    return torch_trainer(
        TrialFailurePolicy(failure_config, launch.tracking_uri, run_id, restarts),
        train_loop_per_worker=train_loop,
        train_loop_config={"spec": spec_json, "run_id": run_id, "launch": launch.model_dump(mode="json"),
                           "trial_started_at": started_at, "resume_from": resume_from},
        torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=r.workers_per_trial, use_gpu=r.use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=train_run_name(trial_id),
            storage_path=launch.storage_path,
            failure_config=failure_config,
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

    tracking_buffer.bound_http_retries()
    launch = TrialLaunch.model_validate(launch)
    started_at = time.time()
    label = config["trial"]
    payload = trials[label]
    sampled = {k: v for k, v in config.items() if k != "trial"}
    spec_json = apply_search(payload["spec"], _decode_search(sampled))
    spec = RunSpec.model_validate(spec_json)
    trial_id = ray.tune.get_context().get_trial_id()
    uri = launch.tracking_uri
    run_id, restarts = None, []
    if uri:
        try:
            run = tracking.ensure_child_run(
                uri, launch.experiment_id, launch.parent_run_id, trial_id,
                run_name=label + "".join(f"_{v}" for v in sampled.values()), spec_json=spec_json,
                tags={**tracking.trial_tags(spec), "trial_index": str(payload["index"])})
        except Exception as exc:
            raise TrialFailed(f"not started: MLflow at {uri} cannot be used ({tracking_buffer.short_error(exc)}); "
                              "make it reachable and run the same command with --resume", retryable=True) from exc
        run_id, tags = run.info.run_id, run.data.tags
        if run.info.status == "FINISHED":  # finished before the launcher was killed: not re-run
            ray.tune.report({k: v for k, v in run.data.metrics.items() if k.startswith("best/")}
                            | {SELECTION_SCORE: run.data.metrics.get("best/selection_score", 0.0)})
            return
        if (run.info.status == "FAILED" and tags.get(TAG_RETRYABLE) == "false" and launch.attempt
                and tags.get(TAG_ATTEMPT) == launch.attempt):  # a Tune retry of what no retry can fix
            _close(uri, run_id, "FAILED")
            print(f"diml: trial {label} is not run again, a retry cannot fix this: {tags.get(TAG_FAILURE)}")
            raise TrialFailed(tags.get(TAG_FAILURE, "failed"))
        restarts = [line for line in tags.get(TAG_RESTART_REASONS, "").splitlines() if line]
        _set_tags(uri, run_id, {TAG_ATTEMPTS: str(int(tags.get(TAG_ATTEMPTS, "0")) + 1)})
    from pipeline.trial.worker import STATE_FILE

    resume_from, recovered = recover_train_run(f"{launch.storage_path.rstrip('/')}/{train_run_name(trial_id)}",
                                               STATE_FILE)
    if recovered:
        print(recovered)
        if run_id:
            _set_tags(uri, run_id, {"train_state_recovered": recovered[:4000]})
    try:
        result = build_trainer(spec, spec_json, trial_id, run_id, launch, started_at, resume_from, restarts).fit()
        outcome = result.return_value or {}
        if outcome.get("status") == "failed":
            raise TrialFailed(str(outcome.get("error")))
        if outcome.get("status") == "unlogged":
            raise _unlogged(uri, outcome)
    except TrialUnlogged:
        raise  # its run is left RUNNING: --resume logs what is missing and ends it
    except Exception as exc:
        failure = exc if isinstance(exc, TrialFailed) else TrialFailed(failures.one_line(exc),
                                                                        failures.is_retryable(exc))
        if run_id:
            _set_tags(uri, run_id, {TAG_FAILURE: str(failure)[:4000], TAG_RETRYABLE: str(failure.retryable).lower(),
                                    TAG_ATTEMPT: launch.attempt or ""})
            _close(uri, run_id, "FAILED")
        raise failure from (None if failure is exc else exc)
    except BaseException as exc:  # stopped (Ctrl-C, SIGTERM): the launcher marks the run KILLED
        if run_id:
            _set_tags(uri, run_id, {TAG_FAILURE: f"{type(exc).__name__}: {exc}"[:4000]})
            _close(uri, run_id, "FAILED")
        raise
    if run_id:
        try:
            tracking.set_tags(uri, run_id, {"ray_train_path": result.path or ""})
            tracking.end_run(uri, run_id, "FINISHED")
        except Exception as exc:
            raise _unlogged(uri, {"unlogged": ["the run's end"], "tracking_error": tracking_buffer.short_error(exc)})


def _unlogged(uri: str, outcome: dict[str, Any]) -> TrialUnlogged:
    """A trial that trained to the end but whose MLflow logging is incomplete, saying what is missing."""
    from pipeline.trial.logger import FINAL_PARTS

    missing = [f"the final {part}" if part in FINAL_PARTS else part for part in outcome.get("unlogged", [])]
    if outcome.get("pending"):
        missing.insert(0, f"{outcome['pending']} metrics/tags call(s) kept in its last checkpoint")
    return TrialUnlogged(f"trained to the end, but MLflow at {uri} could not be used "
                         f"({outcome.get('tracking_error') or 'unreachable'}): not logged: {', '.join(missing)}; its "
                         "Ray checkpoints are kept: make the tracking store reachable and run the same command with "
                         "--resume")


def _set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Tag the trial's run, or say why it could not be (the trial goes on)."""
    try:
        tracking.set_tags(uri, run_id, tags)
    except Exception as exc:
        print(f"diml: could not tag MLflow run {run_id} ({tracking_buffer.short_error(exc)}): {tags}")


def _close(uri: str, run_id: str, status: str) -> None:
    try:
        tracking.end_run(uri, run_id, status)
    except Exception as exc:
        print(f"diml: could not end MLflow run {run_id} {status} ({tracking_buffer.short_error(exc)})")
