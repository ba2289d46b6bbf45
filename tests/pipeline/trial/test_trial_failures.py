"""A failed trial's root cause through Ray's wrappers, which failures a retry can heal, and Ray Train's failure
policy of a trial (Ray 2.60: the private hook it is passed through is pinned here)."""

import inspect
import pickle
import time

import pytest
import ray.train
from ray.exceptions import RayActorError, RayTaskError
from ray.train import ControllerError, WorkerGroupError
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
from ray.train.v2._internal.execution.failure_handling import FailureDecision

from diml.data import BadImageError
from diml.engine import NonFiniteLossError
from pipeline import tracking
from pipeline.trial import failures, ray_workarounds
from pipeline.trial.failures import TrialFailed, TrialUnlogged

BAD = BadImageError("cannot read image '/d/002.bird/img_3.jpg' (image file is truncated); replace or delete the "
                    "file, or set skip_bad_images=True")
GLOO = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.2]:123")
DEATH = RayActorError(error_msg="The actor died unexpectedly before finishing this task.\n\tclass_name: RayTrainWorker"
                                "\n\tactor_id: 12f7\n\tpid: 4242\n\tip: 10.0.0.2\nThe actor is dead because its worker "
                                "process has died. Worker exit type: UNEXPECTED_SYSTEM_EXIT Worker exit detail: Worker "
                                "unexpectedly exits with a connection error code 2. End of file. Some common causes "
                                "include: (1) the process was killed by the OOM killer due to high memory usage")


def _group(failures_by_rank):
    return WorkerGroupError("Training failed", dict(failures_by_rank))


def _as_tune_sees_it(exc):
    """What Tune's ``Result.error`` holds when a trial driver raised ``exc`` (RayTaskError(<class of exc>))."""
    return RayTaskError("ImplicitFunc.train", "Traceback ...", exc, proctitle="ray::ImplicitFunc.train()",
                        pid=1, ip="10.0.0.1").as_instanceof_cause()


def test_a_bad_image_is_the_root_cause_through_every_wrapper_and_is_not_retried():
    error = _as_tune_sees_it(_group({0: GLOO, 1: BAD}))
    assert isinstance(error, WorkerGroupError)  # Ray's dual class: RayTaskError(WorkerGroupError)
    assert failures.root_cause(error) is BAD
    assert failures.one_line(error) == "BadImageError: " + str(BAD)
    assert not failures.is_retryable(_group({0: GLOO, 1: BAD}))
    assert failures.root_cause(ControllerError(BAD)) is BAD


def test_a_dead_worker_explains_its_peers_errors_and_is_retried():
    dead = WorkerHealthCheckFailedError("A worker health check failed.", failure=DEATH)
    group = _group({0: GLOO, 1: dead})  # rank 0's collective broke because rank 1 died
    assert failures.root_cause(group) is DEATH and failures.is_worker_death(group)
    assert failures.is_retryable(group)
    assert failures.is_retryable(_group({0: BAD, 1: dead}))  # a killed peer can make anything fail
    line = failures.one_line(group)
    assert line.startswith("RayActorError: worker process 4242 died: The actor is dead because its worker process")
    assert "UNEXPECTED_SYSTEM_EXIT" in line and "common causes" not in line and "\n" not in line
    assert failures.restart_reason(group) == f"rank 0: RuntimeError: {GLOO}; rank 1: {line}"


@pytest.mark.parametrize("error,retryable", [
    (NonFiniteLossError(0, float("nan")), False), (ValueError("unknown backbone"), False),
    (FileNotFoundError("image file '/d/x.jpg' is missing"), False), (GLOO, True), (OSError("disk blip"), True),
    (TrialFailed("NonFiniteLossError: training loss is nan in epoch 0"), False),
    (TrialFailed("not started: MLflow ...", retryable=True), True), (TrialUnlogged("trained, not logged"), True)])
def test_what_a_retry_can_heal(error, retryable):
    assert failures.is_retryable(error) is retryable
    assert failures.is_retryable(_as_tune_sees_it(error)) is retryable


def test_a_trial_failure_keeps_its_words_and_class_through_pickling():
    for error in (TrialFailed("BadImageError: cannot read image 'x'"), TrialUnlogged("not logged: model")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and back.retryable == error.retryable
        assert failures.one_line(_as_tune_sees_it(error)) == str(error)  # no "TrialFailed:" prefix


def test_the_policy_refuses_a_restart_that_cannot_help_and_records_the_others(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = tracking.ensure_experiment(uri, "policy", str(tmp_path / "art"))
    run_id = tracking.client(uri).create_run(experiment).info.run_id
    config = ray.train.FailureConfig(max_failures=1)
    policy = ray_workarounds.TrialFailurePolicy(config, uri, run_id, restarts=["rank 0: earlier attempt"])
    policy = pickle.loads(pickle.dumps(policy))  # it travels to the Train controller actor
    assert policy.make_decision(_group({0: GLOO, 1: BAD})) == FailureDecision.RAISE
    dead = _group({1: WorkerHealthCheckFailedError("A worker health check failed.", failure=DEATH)})
    assert policy.make_decision(dead) == FailureDecision.RETRY
    assert policy.make_decision(dead) == FailureDecision.RAISE  # max_failures=1 is still Ray's to count
    deadline = time.time() + 30
    while time.time() < deadline:
        tags = tracking.client(uri).get_run(run_id).data.tags
        if tags.get(ray_workarounds.TAG_RESTARTS) == "2":
            break
        time.sleep(0.2)
    reasons = tags[ray_workarounds.TAG_RESTART_REASONS].splitlines()
    assert reasons[0] == "rank 0: earlier attempt"
    assert reasons[1].startswith("rank 1: RayActorError: worker process 4242 died: The actor is dead")


def test_ray_train_still_takes_its_failure_policy_through_the_pinned_private_hook(monkeypatch):
    """Ray 2.60.0: ``DataParallelTrainer.fit`` builds the default policy and hands it to
    ``_initialize_and_run_controller(failure_policy=...)``; :func:`ray_workarounds.torch_trainer` replaces it there.
    If Ray moves it, this fails instead of trials silently going back to Ray's default policy."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    assert "failure_policy=create_failure_policy(" in inspect.getsource(DataParallelTrainer.fit)
    seen = {}
    monkeypatch.setattr(DataParallelTrainer, "_initialize_and_run_controller", lambda self, **kw: seen.update(kw))
    policy = ray_workarounds.TrialFailurePolicy(ray.train.FailureConfig(), None, None)
    trainer = ray_workarounds.torch_trainer(policy, train_loop_per_worker=lambda: None,
                                            scaling_config=ray.train.ScalingConfig(num_workers=1))
    trainer._initialize_and_run_controller(failure_policy="Ray's default", train_fn_ref=None)
    assert seen == {"failure_policy": policy, "train_fn_ref": None}
