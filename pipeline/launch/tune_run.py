"""Run a validated study: start (or join) Ray, open the MLflow parent run, run the Tune grid, collect results.

A launch writes ``<storage>/<launch id>.latest.json`` naming its Tune experiment folder and MLflow parent run, so
that ``--resume`` after the launcher itself was killed restores that Tune experiment (finished trials are not
re-run, interrupted ones continue from their last checkpoint) and keeps logging under the same parent run.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pipeline import tracking, tracking_buffer
from pipeline.launch import capacity, local_ray, tune_state
from pipeline.launch.study import Study
from pipeline.results import ResultsTable, collect_results
from pipeline.specs import TrialLaunch
from pipeline.storage import as_uri
from pipeline.trial import failures, ray_workarounds
from pipeline.trial.driver import SELECTION_SCORE, run_trial

LOCAL_OBJECT_STORE = 1024**3  # checkpoints go to storage, not the object store
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_DEDUP_LOGS_SKIP_REGEX": "Failed to query Ray Train Controller actor state|PreemptionWatcher",
}


@dataclass
class Outcome:
    table: ResultsTable | None  # None: MLflow could not be read (``tracking_error``)
    report: str = ""
    errors: dict[str, str] = field(default_factory=dict)  # trial label -> why it failed (its root cause)
    unlogged: dict[str, str] = field(default_factory=dict)  # trial label -> what MLflow is missing
    trial_count: int = 0
    tracking_error: str | None = None  # why the results could not be read from MLflow or the launch run ended
    parent_run_id: str | None = None
    experiment_path: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    interrupted: int = 0  # trials a Ctrl-C (SIGINT) or a SIGTERM stopped before they finished
    stop_signal: int = 0  # the signal that stopped them (the launcher exits 128 + it, as a shell reports)

    @property
    def all_ok(self) -> bool:
        return not self.errors and not self.unlogged and not self.interrupted and not self.tracking_error

    def render(self) -> str:
        text = self.table.render() if self.table is not None else f"(no results table: {self.tracking_error})"
        if self.report:
            text += "\n\n" + self.report
        of = f" of {self.trial_count}" if self.trial_count else ""
        if self.errors:
            text += (f"\n\n{len(self.errors)}{of} trial(s) failed:\n"
                     + "\n".join(f"  - {k}: {v}" for k, v in self.errors.items()))
        if self.unlogged:
            text += (f"\n\n{len(self.unlogged)}{of} trial(s) trained to the end but are not fully logged in MLflow:\n"
                     + "\n".join(f"  - {k}: {v}" for k, v in self.unlogged.items()))
        if self.tracking_error and (self.unlogged or self.table is None):
            text += ("\n\nMLflow could not be used after the trials: the results above are incomplete. Make the "
                     "tracking store reachable and run the same command with --resume: it logs what is missing "
                     "(from the trials' Ray checkpoints) and ends the launch's MLflow run")
        if self.timings:
            text += "\n\ntimings: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        if self.interrupted:
            by = f" by {signal.Signals(self.stop_signal).name}" if self.stop_signal else ""
            text += (f"\n\ninterrupted{by}: {self.interrupted} trial(s) stopped before they finished (their MLflow "
                     "runs are KILLED); finish them with the same command and --resume")
        return text


# ------------------------------------------------------------------------------------------------ pointer file
def _pointer_path(storage: str, launch: str) -> str:
    return f"{storage.rstrip('/')}/{launch}.latest.json"


def _read_pointer(storage: str, launch: str) -> dict[str, Any] | None:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(as_uri(_pointer_path(storage, launch)))
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())


def _write_pointer(storage: str, launch: str, content: dict[str, Any]) -> None:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(as_uri(_pointer_path(storage, launch)))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    local = isinstance(fs, pyarrow.fs.LocalFileSystem)
    target = f"{path}.{os.getpid()}.tmp" if local else path  # an object store replaces an object whole
    with fs.open_output_stream(target) as stream:
        stream.write(json.dumps(content, indent=2).encode())
    if local:
        fs.move(target, path)  # a rename: a launcher killed mid-write leaves the old pointer intact


# ------------------------------------------------------------------------------------------------------ Ray/Tune
def _start_ray(study: Study, address: str | None, num_cpus: float | None) -> tuple[bool, local_ray.LocalRay | None]:
    """Join ``address`` / ``$RAY_ADDRESS`` or start a private local instance owned by this launcher (its own temp
    dir, stopped by a watchdog if the launcher dies: :mod:`pipeline.launch.local_ray`). Returns whether we started
    Ray, and the local instance's owner."""
    import ray

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return False, None
    address = address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {k: os.environ[k] for k in QUIET_ENV}}
    if address:
        ray.init(address=address, runtime_env=env, logging_level="WARNING")
        return True, None
    resources = capacity.local_resources()
    cpus = math.ceil(num_cpus or capacity.schedulable_cpus(study, resources))
    owner = local_ray.init_local(num_cpus=cpus, num_gpus=int(resources.gpus), include_dashboard=False,
                                 runtime_env={**env, "worker_process_setup_hook": ray_workarounds.HOOK},
                                 logging_level="WARNING", object_store_memory=LOCAL_OBJECT_STORE)
    return True, owner


def _param_space(study: Study) -> dict[str, Any]:
    """Tune's config per trial: its label (a grid search over labels) and the sampled search values; the specs
    themselves travel once through the object store (:func:`_trainable`)."""
    from ray import tune

    space: dict[str, Any] = {"trial": tune.grid_search([t.label for t in study.trials])}
    if study.launch.search:
        for path, dim in study.launch.search.space.items():
            key = path.replace(".", "__")
            if dim.type == "choice":
                space[key] = tune.choice(dim.values)
            elif dim.type == "uniform":
                space[key] = tune.uniform(dim.low, dim.high)
            elif dim.type == "loguniform":
                space[key] = tune.loguniform(dim.low, dim.high)
            elif dim.type == "quniform":
                space[key] = tune.quniform(dim.low, dim.high, dim.q)
            else:
                space[key] = tune.randint(int(dim.low), int(dim.high))
    return space


def _trainable(study: Study, launch: TrialLaunch):
    """``run_trial`` with every trial's spec and the launch's tracking/storage settings bound to it."""
    from ray import tune

    payloads = {t.label: {"spec": t.spec.model_dump(mode="json"), "index": t.index} for t in study.trials}
    bound = tune.with_parameters(run_trial, trials=payloads, launch=launch.model_dump(mode="json"))
    options = study.launch.launch
    driver = {"cpu": options.driver_cpus}
    if options.driver_memory_mb:  # Ray places no more drivers (and their Train controllers) on a node than fit
        driver["memory"] = options.driver_memory_mb * capacity.MIB
    return tune.with_resources(bound, driver)


def _trial_dirname(trial) -> str:
    if "trial" not in trial.config:  # Tune could not restore the experiment and started it over without our grid
        raise tune_state.DamagedState(
            "--resume: Tune could not restore this launch's experiment (see 'Failed to restore the run state' above) and "
            "would start it over, training finished trials again; launch without --resume to start anew")
    return f"{trial.trial_id}-{trial.config['trial']}"[:120]


def _tuner(study: Study, launch: TrialLaunch, name: str, storage: str, resources: capacity.Resources,
           autoscaling: bool):
    from ray import tune

    trainable = _trainable(study, launch)
    scheduler = None
    search = study.launch.search
    if search and search.scheduler.name == "asha":  # a trial reports once per epoch: its longest run bounds max_t
        max_t = max(t.spec.epochs for t in study.trials) + 1
        scheduler = tune.schedulers.ASHAScheduler(
            metric=SELECTION_SCORE, mode="max", max_t=max_t, grace_period=search.scheduler.grace_period,
            reduction_factor=search.scheduler.reduction_factor)
    at_once = max(1, capacity.concurrency(study, resources, autoscaling=autoscaling))
    grown = capacity.grown_fit(study, resources) if autoscaling else None
    print(f"concurrency: {at_once} trial(s) at once; fit now: {capacity.present_fit(study, resources)}"
          + (f", grown to its largest: {grown} ({resources.limits_note})" if grown is not None else
             f" (how far the cluster can grow: {resources.limits_note})" if autoscaling else ""))
    return tune.Tuner(
        trainable,
        param_space=_param_space(study),
        tune_config=tune.TuneConfig(num_samples=search.num_samples if search else 1, scheduler=scheduler,
                                    max_concurrent_trials=at_once,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=name, storage_path=storage,
                                  failure_config=tune.FailureConfig(max_failures=study.launch.launch.trial_max_failures)),
    )


def run_study(study: Study, *, uri: str, launch: str, storage: str, resume: bool, address: str | None,
              num_cpus: float | None) -> Outcome:
    """Run every trial of ``study`` on Ray Tune; returns the results table built from MLflow."""
    settings = study.launch
    experiment_id = tracking.ensure_experiment(uri, settings.tracking.experiment or study.name,
                                               settings.tracking.artifact_location)
    pointer = _read_pointer(storage, launch) if resume else None
    if resume and pointer is None:
        print(f"--resume: no earlier launch of this spec under {storage}; starting a new one")
    name = pointer["tune_name"] if pointer else f"{launch}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = f"{storage.rstrip('/')}/{name}"
    if pointer:
        for line in tune_state.repair(path):  # DamagedState stops here, before Ray or MLflow is touched
            print(line)
    parent = pointer["parent_run_id"] if pointer else tracking.start_parent_run(
        uri, experiment_id, launch, study.name, study.raw, resume=False)
    if pointer:
        tracking.client(uri).update_run(parent, status="RUNNING")
    _write_pointer(storage, launch, {"tune_name": name, "parent_run_id": parent, "experiment_id": experiment_id})
    info = TrialLaunch(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent, storage_path=storage,
                       log_checkpoint=settings.tracking.log_checkpoint, attempt=uuid.uuid4().hex[:12])
    with _SigtermExits():
        try:
            return _run_trials(study, info, name=name, path=path, pointer=pointer, address=address, num_cpus=num_cpus)
        except (KeyboardInterrupt, SystemExit):  # a signal outside Tune's graceful stop: leave no run RUNNING
            _end_unfinished_runs(uri, experiment_id, parent, 0, only_running=True)
            tracking.end_run(uri, parent, "KILLED")
            raise


def _run_trials(study: Study, info: TrialLaunch, *, name: str, path: str, pointer: dict | None,
                address: str | None, num_cpus: float | None) -> Outcome:
    """The part of :func:`run_study` after the launch's MLflow run exists: Ray, ``fit()``, results and report."""
    from ray import tune

    uri, experiment_id, parent, storage = info.tracking_uri, info.experiment_id, info.parent_run_id, info.storage_path
    clock = time.perf_counter()
    timings = {}
    started_ray, owner = _start_ray(study, address, num_cpus)
    timings["ray start"] = time.perf_counter() - clock
    try:
        import ray

        resources = capacity.cluster_resources("ray")
        if pointer and tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable=_trainable(study, info), resume_unfinished=True,
                                       resume_errored=True, restart_errored=False)
        else:
            tuner = _tuner(study, info, name, storage, resources,
                           autoscaling=bool(address or os.environ.get("RAY_ADDRESS")))
        clock = time.perf_counter()
        try:
            with tune_state.StateGuard(path), _StopSignals() as stop:
                grid = tuner.fit()
        except tune_state.DamagedState:
            tracking.end_run(uri, parent, "FAILED")
            raise
        timings["trials"] = time.perf_counter() - clock
        errors, unlogged = _failures(grid)
        trial_count = len(grid)
        user_stopped, stop_signal = stop.fired, stop.signum
    finally:
        if started_ray:
            import ray

            ray.shutdown()
        if owner is not None:
            owner.stop()
    outcome = Outcome(table=None, errors=errors, unlogged=unlogged, trial_count=trial_count, parent_run_id=parent,
                      experiment_path=f"{storage}/{name}", timings=timings)
    if not tracking_buffer.answers(uri, timeout=10):  # a server that went away: say so now, not after its retries
        outcome.tracking_error = f"the MLflow server {uri} does not answer"
        return outcome
    try:
        outcome.interrupted = _end_unfinished_runs(uri, experiment_id, parent, trial_count) if user_stopped else 0
        outcome.stop_signal = int(stop_signal) if outcome.interrupted else 0
        clock = time.perf_counter()
        outcome.table = collect_results(uri, experiment_id, parent)
        outcome.report = _report(uri, parent, experiment_id)
        timings["results and report"] = time.perf_counter() - clock
        if not unlogged:  # else --resume logs what is missing, then ends the launch's run
            tracking.log_metrics(uri, parent, {f"launch/{k.replace(' ', '_')}_s": v for k, v in timings.items()}, 0)
            tracking.end_run(uri, parent, "KILLED" if outcome.interrupted else "FAILED" if errors else "FINISHED")
    except tracking_buffer.tracking_errors() as exc:  # MLflow went away: the trials' results are in their checkpoints
        if not tracking_buffer.is_transient(exc):
            raise
        outcome.tracking_error = f"MLflow at {uri} could not be used ({tracking_buffer.short_error(exc)})"
    return outcome


def _failures(grid) -> tuple[dict[str, str], dict[str, str]]:
    """The trials that failed (label -> root cause, :func:`pipeline.trial.failures.one_line`) and those that
    trained to the end but are not fully logged in MLflow (label -> what is missing)."""
    errors, unlogged = {}, {}
    for result in grid:
        if result.error is not None:
            root = failures.root_cause(result.error)
            found = unlogged if isinstance(root, failures.TrialUnlogged) else errors
            found[result.config["trial"]] = failures.one_line(root)
    return errors, unlogged


class _SigtermExits:
    """Around a launch: a SIGTERM outside ``fit()`` (Ray starting, results being collected) raises
    ``SystemExit(143)`` instead of ending the process on the spot, so that the launch's ``finally`` blocks (Ray
    shut down) and its MLflow clean-up run; inside ``fit()``, :class:`_StopSignals` hands it to Tune instead.  The
    previous handler is restored on exit (main thread only)."""

    def __enter__(self):
        self._active = threading.current_thread() is threading.main_thread()
        if self._active:
            self._before = signal.signal(signal.SIGTERM, self._exit)
        return self

    @staticmethod
    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    def __exit__(self, *exc) -> None:
        if self._active:
            signal.signal(signal.SIGTERM, self._before)


class _StopSignals:
    """Whether a stop signal ended ``fit()`` early, and which (``signum``: 0, SIGINT or SIGTERM).

    Ctrl-C: Tune's ``fit()`` installs its own SIGINT handler and, when it fires, restores the handler it found and
    ends the run early but *normally* (Ray 2.60, ``ray/tune/tune.py: _setup_signal_catching``); after a normal end
    its handler stays installed.  So a marker handler installed before ``fit()`` and found again afterwards means
    Tune was interrupted.

    SIGTERM (``kill``, ``timeout``, a batch scheduler or Kubernetes stopping the job): Python's default would end
    the launcher at once, leaving its MLflow runs RUNNING.  During ``fit()`` it is handed to the SIGINT handler in
    place (Tune's, so the trials stop and the runs are ended as after a Ctrl-C; a second one stops at once, as a
    second Ctrl-C).  The previous handlers are restored on exit."""

    def __enter__(self):
        self.fired, self.signum = False, 0
        self._before = signal.getsignal(signal.SIGINT)
        self._before_term = signal.getsignal(signal.SIGTERM)
        self._active = (threading.current_thread() is threading.main_thread()
                        and not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0")))
        if self._active:
            signal.signal(signal.SIGINT, self._marker)
            signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    @staticmethod
    def _marker(signum, frame):  # Python's default behaviour, under a name of our own
        raise KeyboardInterrupt

    def _on_sigterm(self, signum, frame):
        self.signum = self.signum or signal.SIGTERM
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:  # someone set SIG_IGN / SIG_DFL for SIGINT: stop as Python's default SIGTERM would
            raise SystemExit(128 + signal.SIGTERM)

    def __exit__(self, *exc) -> None:
        if self._active:
            self.fired = signal.getsignal(signal.SIGINT) is self._marker
            self.signum = (self.signum or signal.SIGINT) if self.fired else 0
            signal.signal(signal.SIGINT, self._before)
            signal.signal(signal.SIGTERM, self._before_term)


def _end_unfinished_runs(uri: str, experiment_id: str, parent: str, trial_count: int, *,
                         only_running: bool = False) -> int:
    """After a Ctrl-C or a SIGTERM ended ``fit()``, mark every trial run that did not finish KILLED (a stopped
    driver leaves its run RUNNING, or ends it FAILED when the signal killed its Train controller first) and return
    how many trials did not finish, counting those that never started.  ``only_running``: a stop outside ``fit()``,
    where a FAILED run is a trial's own failure and keeps its status."""
    runs = tracking.find_runs(uri, experiment_id, f"tags.`{tracking.TAG_PARENT}` = '{parent}'")
    unfinished = [r for r in runs if r.info.status not in (("FINISHED", "FAILED") if only_running else ("FINISHED",))]
    for run in unfinished:  # --resume sets them RUNNING again and finishes them
        tracking.end_run(uri, run.info.run_id, "KILLED")
    return len(unfinished) + max(0, trial_count - len(runs))


def _report(uri: str, parent: str, experiment_id: str) -> str:
    """The paper-style report of this launch, logged to the parent run (a note when no trial finished)."""
    import tempfile

    from pipeline.report import report_launch

    runs = tracking.find_runs(uri, experiment_id, f"tags.`{tracking.TAG_PARENT}` = '{parent}'")
    if not any(r.data.tags.get(tracking.TAG_ROLE) == "trial" and r.info.status == "FINISHED" for r in runs):
        return "(no report: no trial of this launch finished)"
    with tempfile.TemporaryDirectory() as folder:
        try:
            return report_launch(uri, parent, runs, pathlib.Path(folder)).markdown()
        except ValueError as exc:
            return f"(no report: {exc})"
