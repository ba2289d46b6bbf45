"""MLflow logging that never stops a trial: what cannot be logged now is kept, and logged when the store answers
again or by the next attempt of the trial (``--resume``), exactly once.

A tracking server that goes away while trials train must not crash them (they would lose their progress for a
logging problem). :class:`BufferedRun` logs a trial run's metrics, tags and dataset inputs; when a call fails for a
reason that may pass (:func:`is_transient`), it warns once, keeps the call and every later one (``pending``, plain
JSON), and asks the server's ``/health`` again at most every :data:`PROBE_EVERY_S` seconds before it logs what it
kept, in order. Metrics keep the time they were measured, so logging a kept batch twice (a trial restarted from a
checkpoint that holds it, :func:`write_pending` / :func:`read_pending`) adds nothing: MLflow's SQL stores drop exact
duplicates. Calls that cannot be kept (artifacts, a model) go through :meth:`BufferedRun.call`, which says whether
they were made.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from pipeline import tracking

PROBE_EVERY_S = 10.0
PENDING_FILE = "mlflow_pending.json"  # in a trial's Ray checkpoint: what it had not logged yet
# MLflow's HTTP client retries a failed request 7 times with growing pauses (about 4 minutes) before it raises.
# A trial keeps what it cannot log and logs it later, so it asks for less (unless the user set these).
TRIAL_HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# MLflow error codes of a request the store refused (sending it again gives the same answer)
REFUSED = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST",
           "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED", "MALFORMED_REQUEST"}


def bound_http_retries() -> None:
    """Make this process's MLflow HTTP calls give up after a few seconds of retries (:data:`TRIAL_HTTP_RETRIES`)."""
    for key, value in TRIAL_HTTP_RETRIES.items():
        os.environ.setdefault(key, value)


def tracking_errors() -> tuple[type[BaseException], ...]:
    """What an MLflow client call raises when the store cannot be used (to catch, with :func:`is_transient`)."""
    import requests
    from mlflow.exceptions import MlflowException

    return (MlflowException, requests.RequestException, OSError)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed MLflow call may succeed later (the store unreachable, locked or failing), as opposed to one
    the store refused (a bad value, a deleted run)."""
    return getattr(exc, "error_code", None) not in REFUSED


def short_error(exc: BaseException) -> str:
    """An MLflow (or requests) error in one short line: ``API request to URL failed: [Errno 111] Connection
    refused`` rather than urllib3's retry report around it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    refused = re.match(r"API request to (\S+) failed with exception .*?(\[Errno \d+\] [^\"')]+)", text)
    if refused:
        text = f"API request to {refused.group(1)} failed: {refused.group(2)}"
    return (text[:240] + " ...") if len(text) > 240 else text


def answers(uri: str, timeout: float = 2.0) -> bool:
    """Whether the MLflow server at ``uri`` answers ``/health`` within ``timeout`` s (other stores: True, there is
    no cheaper test than using them)."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def write_pending(folder: str, pending: list[dict]) -> None:
    """Keep ``pending`` calls in a checkpoint ``folder`` (nothing is written when there are none)."""
    if pending:
        with open(os.path.join(folder, PENDING_FILE), "w") as f:
            json.dump(pending, f)


def read_pending(folder: str) -> list[dict]:
    """The calls :func:`write_pending` kept in checkpoint ``folder`` (none when it kept nothing)."""
    path = os.path.join(folder, PENDING_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


class BufferedRun:
    """MLflow logging of run ``run_id`` that never raises (see the module docstring). ``pending``: calls kept by
    an earlier attempt of the trial (:func:`read_pending`), logged first. ``error``: why the store could not be
    used, while it cannot (None when it can)."""

    def __init__(self, uri: str, run_id: str, pending: list[dict] = ()):
        self.uri, self.run_id = uri, run_id
        self.pending: list[dict] = [dict(call) for call in pending]
        self.error: str | None = "calls kept by an earlier attempt" if self.pending else None
        self.refused = 0
        self._asked = -PROBE_EVERY_S

    # -------------------------------------------------------------------------------------------- kept calls
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._submit({"metrics": metrics, "step": step, "timestamp": int(time.time() * 1000)})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._submit({"tags": tags})

    def log_inputs(self, inputs: list[dict]) -> None:
        self._submit({"inputs": inputs})

    def _apply(self, call: dict) -> None:
        if "metrics" in call:
            tracking.log_metrics(self.uri, self.run_id, call["metrics"], call["step"], timestamp=call["timestamp"])
        elif "tags" in call:
            tracking.set_tags(self.uri, self.run_id, call["tags"])
        else:
            tracking.log_dataset_inputs(self.uri, self.run_id, call["inputs"])

    def _submit(self, call: dict) -> None:
        if not self.flush():
            self.pending.append(call)
            return
        try:
            self._apply(call)
        except Exception as exc:
            if self._failed(exc, "a metrics/tags call"):
                self.pending.append(call)

    # ------------------------------------------------------------------------------------------- other calls
    def call(self, what: str, fn: Callable[[], Any]) -> bool:
        """Run ``fn`` (MLflow calls that cannot be kept: artifacts, a model) once the kept calls are logged;
        whether it ran to the end (a failure is reported, not raised)."""
        if not self.flush(wait=True):
            return False
        try:
            fn()
            return True
        except Exception as exc:
            self._failed(exc, what)
            return False

    def flush(self, wait: bool = False) -> bool:
        """Log the kept calls, in order; True when none is left. While the store cannot be used, it is asked again
        only every :data:`PROBE_EVERY_S` seconds (at once with ``wait``)."""
        if self.error is None:
            return True
        now = time.monotonic()
        if not wait and now - self._asked < PROBE_EVERY_S:
            return False
        self._asked = now
        if not answers(self.uri):
            return False
        count = len(self.pending)
        while self.pending:
            try:
                self._apply(self.pending[0])
            except Exception as exc:
                if self._failed(exc, "a kept call"):
                    return False
            self.pending.pop(0)
        self.error = None
        if count:
            print(f"diml: MLflow at {self.uri} answers again: logged the {count} call(s) kept for run {self.run_id}",
                  file=sys.stderr)
        return True

    def _failed(self, exc: BaseException, what: str) -> bool:
        """Note a failed call; True when it is worth keeping (the store may answer later)."""
        if not is_transient(exc):
            self.refused += 1
            print(f"diml: MLflow refused {what} of run {self.run_id} ({short_error(exc)}); it is dropped",
                  file=sys.stderr)
            return False
        if self.error is None:
            print(f"diml: MLflow at {self.uri} cannot be used ({short_error(exc)}): training goes on; metrics and "
                  "tags are kept and logged when it answers again, or by --resume", file=sys.stderr)
        self.error = short_error(exc)
        self._asked = time.monotonic()
        return True
