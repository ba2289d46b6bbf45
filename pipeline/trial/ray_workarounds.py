"""Workarounds for Ray, each with the version it was checked against (Ray 2.60.0).

1. Ray Train's failure policy (:class:`TrialFailurePolicy`, :func:`torch_trainer`): Train V2 restarts a trial's
   worker group after *any* worker error, up to ``FailureConfig(max_failures)``, and takes no policy from the user.

2. The placement-group cleaner of local launches (:func:`setup_worker`), which runs inside their Ray workers.
   Ray Train V2 starts a detached ``PlacementGroupCleaner`` actor per Train run; it removes the run's placement
   group if the Train controller dies without releasing it. It asks whether the controller is alive through Ray's
   State API (``ray.train.v2._internal.state.util.is_actor_alive`` -> ``ray.util.state.get_actor(address=None)``),
   which does not use the worker's own connection: it resolves the cluster from ``RAY_ADDRESS``,
   ``/tmp/ray/ray_current_cluster`` or every ``gcs_server`` process on the host
   (``ray._private.services.canonicalize_bootstrap_address_or_die``), then queries the dashboard's HTTP API. So:

- with two local Ray instances on one machine (two launches at once), it finds two GCS processes and raises
  ``ConnectionError: Found multiple active Ray instances``; that is not the ``RayStateApiException`` its monitor
  loop catches, so the cleaner's thread dies with a traceback and no placement group is ever cleaned;
- with one instance but no dashboard (local launches start none: the dashboard extras are not installed), every
  query fails and the cleaner logs "Failed to query Ray Train Controller actor state" each second.

:func:`setup_worker` (Ray's ``worker_process_setup_hook``) makes the cleaner ask the GCS of the worker's own
connection instead (``ray._private.state.actors``), which needs neither an address lookup nor a dashboard. The patch
is applied when the cleaner's module is imported, so other workers do not pay for importing Ray Train.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
from typing import Any

CLEANER_MODULE = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
HOOK = f"{__name__}.setup_worker"


def actor_alive_in_gcs(actor_id: str, timeout: int = 10) -> bool:
    """Whether actor ``actor_id`` (hex) is not DEAD, from the GCS this worker is connected to; an unknown actor is
    dead, as in Ray's State-API version. Errors surface as ``RayStateApiException`` (the cleaner retries on it)."""
    import ray._private.state
    from ray.util.state.exception import RayStateApiException

    try:
        info = ray._private.state.actors(actor_id=actor_id)
    except Exception as exc:  # the GCS briefly unavailable: the cleaner's loop retries on this exception
        raise RayStateApiException(f"GCS query of actor {actor_id} failed: {exc}") from exc
    return bool(info) and info.get("State") != "DEAD"


def _patch(module) -> None:
    module.is_actor_alive = actor_alive_in_gcs


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when the cleaner's module is imported, wraps its loader to patch it once loaded."""

    def find_spec(self, name, path=None, target=None):
        if name != CLEANER_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def setup_worker() -> None:
    """Ray ``worker_process_setup_hook`` of local launches; never raises (a failing hook would stop the worker)."""
    try:
        if CLEANER_MODULE in sys.modules:
            _patch(sys.modules[CLEANER_MODULE])
        elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _PatchOnImport())
    except Exception as exc:  # pragma: no cover - defensive: keep the worker alive, say why
        print(f"diml: could not patch Ray Train's PlacementGroupCleaner: {exc}", file=sys.stderr)


# ----------------------------------------------------------------------------------- Ray Train's failure policy
TAG_RESTARTS = "worker_restarts"  # MLflow tags of the trial run: how many times, and why (one line each)
TAG_RESTART_REASONS = "worker_restart_reasons"


class TrialFailurePolicy:
    """Ray Train's ``DefaultFailurePolicy``, except that a worker error no retry can fix (unreadable data, a bad
    setting: :func:`pipeline.trial.failures.is_retryable`) ends the run at once instead of restarting the workers
    from their checkpoint ``max_failures`` times, and that each restart's reason (what Ray says of the dead worker)
    is recorded on the trial's MLflow run (:data:`TAG_RESTARTS`, :data:`TAG_RESTART_REASONS`).

    Ray 2.60.0: ``DataParallelTrainer.fit`` builds the default policy itself
    (``ray.train.v2._internal.execution.failure_handling.create_failure_policy(failure_config)``) and passes it to
    ``_initialize_and_run_controller(failure_policy=...)``, which starts the controller actor with it; the
    controller calls only ``make_decision(TrainingFailedError) -> FailureDecision``. This object travels to that
    actor (pickled by reference: a module-level class) and imports Ray Train there, not in the launcher.
    ``restarts``: reasons recorded by earlier attempts of the trial (a Tune retry, ``--resume``), kept in front."""

    def __init__(self, failure_config, tracking_uri: str | None, run_id: str | None, restarts: list[str] = ()):
        self.failure_config = failure_config
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.restarts = list(restarts)
        self._default = None

    def make_decision(self, training_failed_error) -> Any:
        from ray.train import WorkerGroupError
        from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision

        from pipeline.trial import failures

        if self._default is None:
            self._default = DefaultFailurePolicy(self.failure_config)
        if isinstance(training_failed_error, WorkerGroupError) and not failures.is_retryable(training_failed_error):
            print(f"diml: not restarting the workers, a retry cannot fix this: "
                  f"{failures.one_line(training_failed_error)}", file=sys.stderr)
            return FailureDecision.RAISE
        decision = self._default.make_decision(training_failed_error)
        if decision == FailureDecision.RETRY and isinstance(training_failed_error, WorkerGroupError):
            self.restarts.append(failures.restart_reason(training_failed_error))
            print(f"diml: restarting the workers from their last checkpoint ({len(self.restarts)}): "
                  f"{self.restarts[-1]}", file=sys.stderr)
            self._record()
        return decision

    def _record(self) -> None:
        """Write the restart tags from a thread: the controller's event loop must not wait on MLflow (a tracking
        server that is down answers only after its retries)."""
        if not (self.tracking_uri and self.run_id):
            return

        def write():
            from pipeline import tracking, tracking_buffer

            with _RECORDING:  # one write at a time, each of the newest state: the last one holds every restart
                tags = {TAG_RESTARTS: str(len(self.restarts)),
                        TAG_RESTART_REASONS: "\n".join(self.restarts)[-5000:]}
                try:
                    tracking.set_tags(self.tracking_uri, self.run_id, tags)
                except Exception as exc:  # the restart goes on; say what was not recorded
                    print(f"diml: could not record the restart in MLflow ({tracking_buffer.short_error(exc)}): "
                          f"{tags[TAG_RESTART_REASONS]}", file=sys.stderr)

        threading.Thread(target=write, name="diml-restart-tags", daemon=True).start()


_RECORDING = threading.Lock()  # the restart-tag writers of this process (the Train controller's)


def torch_trainer(failure_policy: TrialFailurePolicy, **trainer_args):
    """A ``ray.train.torch.TorchTrainer(**trainer_args)`` whose controller runs ``failure_policy`` instead of the
    one ``fit()`` builds (Ray 2.60.0: ``DataParallelTrainer._initialize_and_run_controller`` receives it as the
    keyword ``failure_policy``; ``tests/pipeline/trial/test_trial_failures.py`` pins that)."""
    from ray.train.torch import TorchTrainer

    class _TrialTorchTrainer(TorchTrainer):
        def _initialize_and_run_controller(self, **controller_args):
            return super()._initialize_and_run_controller(**{**controller_args, "failure_policy": failure_policy})

    return _TrialTorchTrainer(**trainer_args)
