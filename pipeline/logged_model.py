"""A trial's best weights as an MLflow PyTorch model: logged by the trial, loaded by ``python -m pipeline.explain``.

The model is saved in MLflow 3.17's default ``pt2`` format (``torch.export``, no pickle: ``mlflow.pytorch.load_model``
refuses pickled models unless ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is set). Exported form::

    images (B, 3, S, S) float32, ImageNet-normalised  ->  (global_emb (B, D), local_emb (B, D, grid * grid))

with a dynamic batch size B and the trial's image size S; a plain tuple, because ``torch.export.save`` cannot
serialise the :class:`diml.models.Embeddings` named tuple. The model's metadata holds the checkpoint's
``model_config`` (backbone, embed_dim, grid, frozen_bn, image_size), so a loader needs nothing else.

    model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")      # embeds a batch of any size
"""

from __future__ import annotations

import contextlib
import os

from typing import Any

import torch

ARTIFACT = "model"
EXAMPLE_BATCH = 2  # torch.export makes a size-1 dimension static: the example needs B > 1 for a dynamic batch


class _TupleEmbedder(torch.nn.Module):
    """``images (B, 3, S, S) -> (global_emb (B, D), local_emb (B, D, R))`` as a plain tuple, for ``torch.export``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out.global_emb, out.local_emb


class LoggedEmbedder(torch.nn.Module):
    """A loaded logged model as :mod:`diml.explain` expects a model: ``forward`` returns
    :class:`diml.models.Embeddings`, ``grid`` is set, and ``train``/``eval`` leave the exported graph (frozen in
    eval mode when it was logged) alone."""

    def __init__(self, exported: torch.nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.exported = exported
        self.grid = config["grid"]
        self.embed_dim = config["embed_dim"]
        self.training = False

    def train(self, mode: bool = True) -> "LoggedEmbedder":
        return self

    def forward(self, images: torch.Tensor):
        from diml.models import Embeddings

        global_emb, local_emb = self.exported(images)
        return Embeddings(global_emb, local_emb)


def signature(config: dict[str, Any]):
    """The model's MLflow signature: one tensor in, two tensors out, batch size free (-1)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size, dim, cells = config["image_size"], config["embed_dim"], config["grid"] ** 2
    f32 = np.dtype(np.float32)
    return ModelSignature(inputs=Schema([TensorSpec(f32, (-1, 3, size, size), "images")]),
                          outputs=Schema([TensorSpec(f32, (-1, dim), "global_emb"),
                                          TensorSpec(f32, (-1, dim, cells), "local_emb")]))


_PROCESS_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")


@contextlib.contextmanager
def _process_store(uri: str):
    """MLflow's model APIs read the store (and the logged model's experiment) from process-wide state, and
    ``mlflow.set_tracking_uri`` / ``set_experiment`` also export ``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_ID``
    (checked in MLflow 3.17). Set them for one call only: left behind, the variable would override the tracking URI
    of every later launch in this process (``tracking.resolve_tracking_uri`` prefers the environment)."""
    import mlflow
    import mlflow.tracking.fluent as fluent
    from mlflow.tracking._tracking_service import utils

    saved = (utils._tracking_uri, fluent._active_experiment_id, {k: os.environ.get(k) for k in _PROCESS_ENV})
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow
    finally:
        utils._tracking_uri, fluent._active_experiment_id = saved[0], saved[1]
        for key, value in saved[2].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def log_model(uri: str, run_id: str, model: torch.nn.Module, config: dict[str, Any], *, step: int = 0):
    """Log ``model`` (a :class:`diml.models.DIMLModel` on any device) as the MLflow model :data:`ARTIFACT` of run
    ``run_id``; ``config`` is its checkpoint ``model_config``. Returns MLflow's ``ModelInfo``.

    A CPU copy in eval mode is exported (the caller's model is left as it is); the run's metrics at ``step`` are
    attached to the logged model by MLflow.
    """
    import mlflow

    from diml.models import build_model

    copy = build_model(config["backbone"], pretrained=False, embed_dim=config["embed_dim"], grid=config["grid"],
                       frozen_bn=config["frozen_bn"])
    copy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    example = torch.zeros(EXAMPLE_BATCH, 3, config["image_size"], config["image_size"])
    # Model.log resolves the store and the logged model's experiment from the process-wide state, not from run_id
    with _process_store(uri):
        mlflow.set_experiment(experiment_id=mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id)
        return mlflow.pytorch.log_model(
            _TupleEmbedder(copy).eval(), name=ARTIFACT, run_id=run_id, step=step, signature=signature(config),
            input_example=example.numpy(), serialization_format="pt2", metadata={"model_config": dict(config)},
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # no requirement inference subprocess
            validate_serving_input=False)  # MLflow's pytorch serving check refuses tensor examples anyway


def load_model(uri: str, run_id: str, device: str | torch.device = "cpu") -> tuple[LoggedEmbedder, dict[str, Any]]:
    """``(model, model_config)`` of the model logged by trial run ``run_id`` in the store at ``uri``.

    Raises ``ValueError`` naming the run when it has no logged model.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    model_uri = f"runs:/{run_id}/{ARTIFACT}"
    try:
        with _process_store(uri):
            info = mlflow.models.get_model_info(model_uri)
            exported = mlflow.pytorch.load_model(model_uri, device=device)
    except (MlflowException, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"run {run_id} in {uri} has no loadable MLflow model {ARTIFACT!r} ({first[:200]}); launch "
                         "with tracking.log_checkpoint enabled") from None
    config = (info.metadata or {}).get("model_config")
    if not isinstance(config, dict):
        raise ValueError(f"the MLflow model of run {run_id} has no model_config in its metadata; it was not logged "
                         "by the DIML pipeline")
    return LoggedEmbedder(exported, config), config
