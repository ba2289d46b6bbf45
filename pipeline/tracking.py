"""MLflow tracking: one parent run per launch, one child run per trial, logged from one process per trial.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids (no global "active run" state), so the
same code works in the launcher, in a Tune trial driver and in a Ray Train rank-0 worker, against the default local
SQLite store or a remote ``mlflow server``.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import time
import urllib.error
import urllib.request
from importlib import metadata
from typing import Any, Iterable

from diml import names

TAG_PARENT = "mlflow.parentRunId"
TAG_TRIAL = "ray_trial_id"
TAG_LAUNCH = "diml.launch_id"
TAG_ROLE = "diml.role"
TRIAL_TAGS = ("dataset", "loss", "backbone", "similarity", "seed")
CHECKPOINT_ARTIFACT = "checkpoint/best_model.pt"  # a trial's best model (diml.models.checkpoint format)
VIEW_TAGS = ("dataset", "loss", "backbone", "similarity", "seed")
# MLflow 3.17: the experiment kind the UI's kind selector writes (mlflow.experimentKind = custom_model_development,
# shown as "Machine learning"); its experiment page loads a shared runs view from the experiment tag
# mlflow.sharedViewState.<key> when the URL carries viewStateShareKey=<key>, and nests child runs under their parent
# only when the runs are ordered by start time with no search filter (checked in mlflow/server/js/build, 3.17.2).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
VIEW_KEY = "diml-trials"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
PACKAGES = ("torch", "torchvision", "ray", "mlflow", "pot", "pytorch-metric-learning", "faiss-cpu", "pydantic")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message says which URI and how to fix it."""


# ------------------------------------------------------------------------------------------------------ the store
def resolve_tracking_uri(spec_uri: str | None, cwd: str | os.PathLike | None = None, *, explicit: bool = False) -> str:
    """``$MLFLOW_TRACKING_URI`` > ``tracking.uri`` > ``sqlite:///<cwd>/mlflow.db``, made absolute; with
    ``explicit`` (a command-line flag) ``spec_uri`` wins over the environment.

    Trials run with their working directory inside Ray's session folder, so a relative store would silently write
    throw-away databases there: every local path is resolved against the launcher's working directory.
    """
    cwd = pathlib.Path(cwd or os.getcwd()).resolve()
    env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = (spec_uri or env if explicit else env or spec_uri) or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if not path.startswith("/"):
            uri = f"sqlite:///{cwd / path}"
    elif uri.startswith("file:"):
        path = uri[len("file:"):].lstrip("/") if uri.startswith("file://") else uri[len("file:"):]
        uri = pathlib.Path("/" + path if uri.startswith("file://") else path).resolve().as_uri()
    elif "://" not in uri:
        uri = pathlib.Path(cwd / uri).resolve().as_uri()
    return uri


def default_artifact_location(uri: str, cwd: str | os.PathLike | None = None) -> str | None:
    """For a local database store, artifacts go to ``<cwd>/mlartifacts`` (absolute); a server decides itself."""
    if uri.startswith(("sqlite:", "postgresql", "mysql", "mssql")):
        return (pathlib.Path(cwd or os.getcwd()).resolve() / "mlartifacts").as_uri()
    return None


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Raise :class:`TrackingError` when the store at ``uri`` cannot be used (before any trial starts)."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingError(f"MLflow server {uri} answered {response.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(
                f"MLflow tracking server {uri} cannot be reached ({exc}): start it (mlflow server ...) or set "
                "MLFLOW_TRACKING_URI / tracking.uri to a reachable server or to sqlite:///mlflow.db"
            ) from None
    elif uri.startswith("sqlite:///"):
        database = pathlib.Path(uri[len("sqlite:///"):])
        if not database.parent.is_dir():
            raise TrackingError(f"MLflow store {uri}: folder {database.parent} does not exist: create it, or set "
                                "MLFLOW_TRACKING_URI / tracking.uri to a store in a writable folder")
        _check_writable(f"MLflow store {uri}", database.parent, "MLFLOW_TRACKING_URI / tracking.uri")
        if database.exists() and not os.access(database, os.W_OK):
            raise TrackingError(f"MLflow store {uri}: {database} is read-only: make it writable or set "
                                "MLFLOW_TRACKING_URI / tracking.uri to another store")
    elif uri.startswith("file:"):
        _check_writable(f"MLflow store {uri}", pathlib.Path(uri.removeprefix("file://").removeprefix("file:")),
                        "MLFLOW_TRACKING_URI / tracking.uri")


def check_artifact_location(location: str | None) -> None:
    """Raise :class:`TrackingError` when a local ``tracking.artifact_location`` cannot be written (an object store
    is left to MLflow: there are no credentials to try it with here)."""
    if location and (location.startswith("file:") or "://" not in location):
        path = pathlib.Path(location.removeprefix("file://").removeprefix("file:")).expanduser()
        _check_writable(f"artifact location {location}", path, "tracking.artifact_location")


def _check_writable(what: str, folder: pathlib.Path, setting: str) -> None:
    from pipeline.storage import check_writable

    try:
        check_writable(folder)
    except OSError as exc:
        raise TrackingError(f"{what}: cannot write to {folder} ({exc.strerror or exc}): set {setting} to a "
                            "writable place") from None


def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (with an absolute artifact location) when missing, marked as a
    model-training experiment (``mlflow.experimentKind``) either way."""
    c = client(uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            c.restore_experiment(found.experiment_id)
        if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            c.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id
    location = artifact_location or default_artifact_location(uri)
    if location and "://" not in location:
        location = pathlib.Path(location).expanduser().resolve().as_uri()
    try:
        return c.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # created concurrently by another process
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


# ------------------------------------------------------------------------------------------- the UI's runs view
def headline_metrics(depth: int) -> list[str]:
    """The final test metrics a user compares trials on: global and DIML@``depth`` R@1, RP and MAP@R, then how often
    the matching flow puts a part on the same part (:data:`diml.names.INTERP_SHOWN`; data with part annotations)."""
    return [names.metric_key("best/test", ranking, metric) for ranking in (names.GLOBAL, names.ranking_name(depth))
            for metric in names.SHOWN_METRICS] + [names.interp_key("best/test", names.interp_name(method, metric))
                                                  for method, metric in names.INTERP_SHOWN]


def runs_view(depth: int) -> dict[str, Any]:
    """The runs table of an experiment as MLflow 3.17's UI stores a shared view: ordered by the best global R@1
    (which also lists the trials flat, not folded under their launch run), with the headline metrics and the
    tags to group by as columns."""
    metrics = headline_metrics(depth)
    columns = [f"metrics.`{name}`" for name in metrics] + [f"tags.`{tag}`" for tag in VIEW_TAGS]
    return {"orderByKey": columns[0], "orderByAsc": False, "searchFilter": "", "selectedColumns": columns,
            "columnOrder": ["attributes.`Run Name`", *columns]}


def ensure_runs_view(uri: str, experiment_id: str, depth: int) -> None:
    """Store :func:`runs_view` as the experiment's shared view :data:`VIEW_KEY` (unchanged if already there).

    Each trial calls it at its start with its largest evaluated depth; in an experiment whose trials evaluate
    different largest depths, the last trial to start sets the DIML@K columns."""
    c = client(uri)
    value = json.dumps(runs_view(depth))
    if c.get_experiment(experiment_id).tags.get(VIEW_TAG) != value:
        c.set_experiment_tag(experiment_id, VIEW_TAG, value)


def ui_url(server: str, experiment_id: str) -> str:
    """The experiment's runs table with the trials' view, on the MLflow server (or ``mlflow ui``) at ``server``.

    MLflow 3.17's UI opens an experiment in the GenAI or the model-training layout after a switch kept in the
    browser (GenAI by default), whatever the experiment's kind: ``workflowType=machine_learning`` picks the latter.
    """
    return (f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}")


def ui_hint(uri: str, experiment: str) -> str:
    """What the launcher prints at the end: how to start the UI on a local store, and the address of the
    experiment's trials view (:func:`ui_url`)."""
    found = client(uri).get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else "<experiment id>"
    if uri.startswith(("http://", "https://")):
        return f"MLflow UI: {ui_url(uri, experiment_id)}"
    return (f"MLflow UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000\n"
            f"  then open {ui_url('http://127.0.0.1:5000', experiment_id)}")


# --------------------------------------------------------------------------------------------------- flattening
def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": value}`` with stable dotted names; lists become JSON strings."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key in sorted(tree):
            out.update(flatten(tree[key], f"{prefix}.{key}" if prefix else str(key)))
        if not tree and prefix:
            out[prefix] = "{}"
    elif isinstance(tree, (list, tuple)):
        out[prefix] = json.dumps(tree)
    else:
        out[prefix] = tree
    return out


def _params(values: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in values.items()]


def log_params(uri: str, run_id: str, values: dict[str, Any]) -> None:
    """Log ``values`` as params (``MlflowClient.log_batch`` splits them into batches the store accepts)."""
    client(uri).log_batch(run_id, params=_params(values))


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int, *, timestamp: int | None = None,
                tags: dict[str, str] | None = None) -> None:
    """Log ``metrics`` at ``step`` (and ``tags``) in one request. ``timestamp`` (ms): when they were measured;
    logging the same metrics again with the same timestamp adds nothing (MLflow's SQL stores drop exact
    duplicates), so a kept batch may be logged twice without harm."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000) if timestamp is None else int(timestamp)
    client(uri).log_batch(run_id, metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()],
                          tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def evaluation_metrics(split: str, results: dict[str, dict[str, float]]) -> dict[str, float]:
    """:func:`diml.evaluation.evaluate`'s ``results`` as MLflow metrics (:func:`diml.names.metric_key`):
    ``test/diml_K100/R_at_1`` for split test, ranking diml@100, metric R@1."""
    return {
        names.metric_key(split, ranking, metric): value
        for ranking, values in results.items()
        for metric, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


# ---------------------------------------------------------------------------------------------- runs of a launch
def environment_tags() -> dict[str, str]:
    """What MLflow's run-context providers set for a run of this process (``mlflow.source.name``, ``mlflow.user``,
    ``mlflow.source.git.commit`` when the entry point is in a git checkout, ...), plus the host and the versions
    of the packages a result depends on."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = {"host.platform": platform.platform(), "host.python": platform.python_version(),
            "host.cpus": str(os.cpu_count())}
    for name in PACKAGES:
        try:
            tags[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import torch

        tags["host.gpus"] = str(torch.cuda.device_count())
    except Exception:  # torch import problems must not stop tracking
        pass
    return {**resolve_tags(), **tags}


def find_runs(uri: str, experiment_id: str, filter_string: str) -> list:
    return client(uri).search_runs([experiment_id], filter_string=filter_string, max_results=5000)


def start_parent_run(uri: str, experiment_id: str, launch_id: str, name: str, raw_spec: dict[str, Any],
                     resume: bool) -> str:
    """Create the launch's parent run (or, with ``resume``, find the one of this launch id and reopen it)."""
    c = client(uri)
    if resume:
        runs = find_runs(uri, experiment_id, f"tags.`{TAG_LAUNCH}` = '{launch_id}' and tags.`{TAG_ROLE}` = 'launch'")
        if runs:
            c.update_run(runs[0].info.run_id, status="RUNNING")
            return runs[0].info.run_id
    tags = {TAG_LAUNCH: launch_id, TAG_ROLE: "launch", "mlflow.runName": name, **environment_tags()}
    run = c.create_run(experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    c.log_text(run_id, _yaml_dump(raw_spec), "spec.yaml")
    log_params(uri, run_id, flatten(raw_spec))
    return run_id


def ensure_child_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str, run_name: str,
                     spec_json: dict[str, Any], tags: dict[str, str]):
    """The trial's child run, found by its Tune trial id (a restarted trial continues its run) or created.

    Returns the run (``mlflow.entities.Run``) as it was found; an unfinished one is set RUNNING again.
    """
    c = client(uri)
    runs = find_runs(uri, experiment_id,
                     f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_TRIAL}` = '{trial_id}'")
    if runs:
        if runs[0].info.status != "FINISHED":
            c.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0]
    all_tags = {TAG_PARENT: parent_run_id, TAG_TRIAL: trial_id, TAG_ROLE: "trial", "mlflow.runName": run_name,
                **tags}
    run = c.create_run(experiment_id, run_name=run_name, tags=all_tags)
    log_params(uri, run.info.run_id, flatten(spec_json))
    c.log_text(run.info.run_id, _yaml_dump(spec_json), "spec.yaml")
    return c.get_run(run.info.run_id)


def trial_tags(spec) -> dict[str, str]:
    """The tags the MLflow UI filters on: dataset, loss, backbone, similarity (global / diml), seed."""
    return {"dataset": spec.data.dataset, "loss": spec.loss.name, "loss_variant": loss_variant(spec),
            "backbone": spec.model.backbone, "grid": str(spec.model.grid),
            "similarity": spec.loss.similarity, "seed": str(spec.seed),
            "selection_split": spec.selection_split,
            "r_convention": "paper (R counts the query)" if spec.evaluation.r_includes_query else
            "PML (R excludes the query)"}


def loss_variant(spec) -> str:
    """``margin(beta=1.2)``, ``triplet/semihard``: the loss as the paper's table names it."""
    text = spec.loss.name + (f"/{spec.loss.miner}" if spec.loss.miner else "")
    if spec.loss.params:
        text += "(" + ",".join(f"{k}={v}" for k, v in sorted(spec.loss.params.items())) + ")"
    return text


def end_run(uri: str, run_id: str, status: str) -> None:
    client(uri).set_terminated(run_id, status=status)


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Set ``tags`` in one request (``log_batch``, one transaction of the store): a reader sees all or none of them,
    never a count without its reasons."""
    from mlflow.entities import RunTag

    items = [RunTag(key, str(value)) for key, value in tags.items()]
    for start in range(0, len(items), 100):  # MLflow's limit of tags per batch
        client(uri).log_batch(run_id, tags=items[start:start + 100])


def log_artifacts(uri: str, run_id: str, paths: Iterable[tuple[str, str | None]]) -> None:
    """Log files or folders: ``(local_path, artifact_subdir)`` pairs."""
    c = client(uri)
    for local, subdir in paths:
        if os.path.isdir(local):
            c.log_artifacts(run_id, local, subdir)
        else:
            c.log_artifact(run_id, local, subdir)


def _yaml_dump(tree: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(tree, sort_keys=False)


# ---------------------------------------------------------------------------------------- datasets and the host
def dataset_digest(dataset) -> str:
    """A digest of a split's content as the trial sees it: its image ids and labels, in order (16 hex digits)."""
    import hashlib

    h = hashlib.sha256()
    for index in range(len(dataset)):
        h.update(f"{dataset.image_id(index)}\t{int(dataset.labels[index])}\n".encode())
    return h.hexdigest()[:16]


def dataset_inputs(name: str, root: str | None, splits: dict[str, Any], contexts: dict[str, str]) -> list[dict]:
    """Each split (``{split name: SplitDataset or None}``) as an MLflow dataset input ``<name>/<split>`` (plain
    JSON, so that it can be kept and logged later): the source ``root``, the number of images and classes as its
    profile, a content digest, and the split's ``mlflow.data.context`` (``contexts[split]``: training, ...)."""
    return [{"name": f"{name}/{split}", "digest": dataset_digest(dataset),
             "source": json.dumps({"uri": str(root) if root else f"{name} (generated)"}),
             "profile": json.dumps({"num_images": len(dataset), "num_classes": dataset.num_classes}),
             "context": contexts[split]}
            for split, dataset in splits.items() if dataset is not None]


def log_dataset_inputs(uri: str, run_id: str, inputs: list[dict]) -> None:
    """Log :func:`dataset_inputs` to run ``run_id``."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    client(uri).log_inputs(run_id, datasets=[
        DatasetInput(Dataset(name=d["name"], digest=d["digest"], source_type="local", source=d["source"],
                             profile=d["profile"]), tags=[InputTag(MLFLOW_DATASET_CONTEXT, d["context"])])
        for d in inputs])


def log_datasets(uri: str, run_id: str, name: str, root: str | None, splits: dict[str, Any],
                 contexts: dict[str, str]) -> None:
    """Log each split as an MLflow dataset input (:func:`dataset_inputs`)."""
    log_dataset_inputs(uri, run_id, dataset_inputs(name, root, splits, contexts))


def start_system_metrics(uri: str, run_id: str):
    """MLflow's system-metrics monitor for run ``run_id`` (``system/*`` metrics: CPU, memory, disk, network, and
    GPU when ``pynvml`` is installed), started; stop it with ``.finish()``. Its sampling interval is MLflow's
    (10 s, ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``); a restarted trial continues the steps it logged."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=uri)
    monitor.start()
    return monitor
