"""Why a trial failed, in one line, and whether running it again could help.

Ray wraps a worker's exception several times before the launcher sees it (checked against Ray 2.60.0):

- a Train worker's exception reaches the trial driver as ``WorkerGroupError`` (``ray.train``), whose
  ``worker_failures`` maps each failed rank to its own exception (a killed worker: ``WorkerHealthCheckFailedError``
  with ``health_check_failure``, an ``ActorDiedError``); a controller failure as ``ControllerError``
  (``controller_failure``);
- the driver's exception reaches the launcher as ``Result.error``: a ``RayTaskError`` made an instance of the
  driver's exception class too (``RayTaskError(WorkerGroupError)``), the original in ``cause``.

:func:`root_cause` unwraps those layers down to the exception that started it; :func:`one_line` says it as the
worker did; :func:`is_retryable` tells a fault a retry can heal (a killed worker, a lost node, a collective that
broke because a peer died) from one it cannot (unreadable or missing data, a bad setting, a NaN loss): the second
kind is raised at once by :class:`pipeline.trial.ray_workarounds.TrialFailurePolicy` (Ray Train) and by the trial
driver (Tune).
"""

from __future__ import annotations

MAX_CHARS = 1000


class TrialFailed(RuntimeError):
    """A trial that ended without a result; ``str()`` is its root cause in one line (the MLflow tag ``failure``).

    ``retryable``: whether Tune may run it again in this launch (a NaN loss, unreadable data: no; a trial that
    trained to the end but could not log, a killed worker after Train's own retries: yes)."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable

    def __reduce__(self):
        return (type(self), (str(self), self.retryable))


class TrialUnlogged(TrialFailed):
    """A trial that trained to the end (its Ray checkpoints are kept) but whose MLflow logging is incomplete."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message, retryable)


def permanent_types() -> tuple[type, ...]:
    """Errors a retry replays the same way (same data, same settings): bad data, a bad setting, a NaN loss."""
    from diml.engine import NonFiniteLossError  # torch: imported when a failure is looked at, not by the launcher

    return (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
            NonFiniteLossError)


def _worker_death_types() -> tuple[type, ...]:
    from ray.exceptions import NodeDiedError, OutOfMemoryError, RayActorError, WorkerCrashedError

    return (RayActorError, WorkerCrashedError, OutOfMemoryError, NodeDiedError)


def is_worker_death(exc: BaseException) -> bool:
    """A Ray worker process that died (killed, out of memory, its node lost), as opposed to one that raised."""
    return isinstance(root_cause(exc), _worker_death_types())


def _worker_failures(exc: BaseException) -> dict[int, BaseException] | None:
    from ray.train import WorkerGroupError

    return dict(exc.worker_failures) if isinstance(exc, WorkerGroupError) and exc.worker_failures else None


def _inner(exc: BaseException) -> BaseException | None:
    """The exception ``exc`` wraps, one layer down (None: ``exc`` is the root)."""
    from ray.exceptions import RayTaskError
    from ray.train import ControllerError

    if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        return exc.cause
    failures = _worker_failures(exc)
    if failures:
        return _main_failure(failures)
    if isinstance(exc, ControllerError):
        return exc.controller_failure
    inner = getattr(exc, "health_check_failure", None)  # WorkerHealthCheckFailedError (ray.train.v2._internal)
    return inner if isinstance(inner, BaseException) else None


def _main_failure(failures: dict[int, BaseException]) -> BaseException:
    """The failure that explains the others: a dead worker first (its peers' collectives then break), then an
    error no retry heals, then the lowest rank's."""
    roots = [(rank, root_cause(failures[rank])) for rank in sorted(failures)]
    for wanted in (_worker_death_types(), permanent_types()):
        for _, root in roots:
            if isinstance(root, wanted):
                return root
    return roots[0][1]


def root_cause(exc: BaseException) -> BaseException:
    """The exception that started ``exc``: through ``RayTaskError``, ``WorkerGroupError`` (its main worker
    failure), ``ControllerError`` and a failed worker health check."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = _inner(exc)
        if inner is None:
            break
        exc = inner
    return exc


def is_retryable(exc: BaseException) -> bool:
    """Whether running the trial's workers again could succeed: False for :func:`permanent_types` errors and a
    :class:`TrialFailed` that says so, unless a worker also died (a killed worker's peers may fail with anything)."""
    failures = _worker_failures(exc)
    roots = [root_cause(f) for f in failures.values()] if failures else [root_cause(exc)]
    if any(isinstance(r, _worker_death_types()) for r in roots):
        return True
    return not any(isinstance(r, permanent_types()) or (isinstance(r, TrialFailed) and not r.retryable)
                   for r in roots)


def _death_line(exc: BaseException) -> str:
    """An ``ActorDiedError``'s message without its header and id lines: the pid and what Ray knows of the death."""
    lines = str(exc).splitlines()
    pid = next((line.split(":", 1)[1].strip() for line in lines if line.strip().startswith("pid:")), None)
    text = " ".join(line.strip() for line in lines[1:] if line and not line.startswith("\t")) or lines[0]
    for advice in (" Some common causes include", " There are some potential root causes"):  # Ray's list of guesses
        text = text.split(advice)[0]
    return f"{type(exc).__name__}: worker process{f' {pid}' if pid else ''} died: {text}"


def one_line(exc: BaseException) -> str:
    """``exc``'s root cause as one line: ``BadImageError: cannot read image '...' (...); replace or delete ...``
    (a :class:`TrialFailed` as it is worded, a dead worker with its pid and Ray's reason)."""
    root = root_cause(exc)
    if isinstance(root, TrialFailed):
        text = str(root)
    elif isinstance(root, _worker_death_types()):
        text = _death_line(root)
    else:
        first = next((line.strip() for line in str(root).splitlines() if line.strip()), "")
        text = f"{type(root).__name__}: {first}" if first else type(root).__name__
    return " ".join(text.split())[:MAX_CHARS]


def restart_reason(exc: BaseException) -> str:
    """Why Ray Train restarts a trial's workers, one line per failed rank: ``rank 1: ActorDiedError: ...``."""
    failures = _worker_failures(exc)
    if not failures:
        return one_line(exc)
    return "; ".join(f"rank {rank}: {one_line(failures[rank])}" for rank in sorted(failures))[:MAX_CHARS]
