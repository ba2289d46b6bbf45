"""The one checkpoint format of a trained DIML model: written by a training run, read by :mod:`diml.explain`.

A training run writes it for its best epoch twice: inside each Ray checkpoint (``best_so_far.pt``, next to the
training state) and, at the end, as the MLflow artifact ``checkpoint/best_model.pt``.  Format::

    torch.save({"format_version": 1,
                "model": DIMLModel.state_dict(),
                "model_config": {"backbone": str, "embed_dim": int, "grid": int, "frozen_bn": bool, "image_size": int,
                                 "align_corners": bool, "global_vector": str,  # pooling; absent: False, map_mean
                                 "eval_resize_ratio": float},  # the eval transform's; absent: 256 / 224
                "loss": loss.state_dict() or None,   # learnable loss parameters (margin beta, proxies)
                "epoch": int or None,
                **extra}, path)                       # e.g. the run's spec

read back with ``torch.load(path, weights_only=True)``.  A file without ``format_version`` (written before the
field existed, same layout) is version 1.  Every way of not matching the format is a one-line ``ValueError`` naming
the path.
"""

from __future__ import annotations

import math
import os
import pathlib
import pickle
import zipfile
from typing import Any

import torch

from diml.models.model import DIMLModel, build_model

FORMAT_VERSION = 1
CONFIG_TYPES = {"backbone": str, "embed_dim": int, "grid": int, "frozen_bn": bool, "image_size": int}
# diml.data.transforms.DEFAULT_RESIZE_RATIO (not imported: diml.data imports diml.models); the authors' eval resize
DEFAULT_RESIZE_RATIO = 256 / 224
# Pooling keys added later; a checkpoint without them was written when the model pooled this way.
POOLING_BEFORE_KEYS = {"align_corners": False, "global_vector": "map_mean"}


def model_config(model: DIMLModel, *, backbone: str, image_size: int,
                 eval_resize_ratio: float = DEFAULT_RESIZE_RATIO) -> dict[str, Any]:
    """What a checkpoint needs to rebuild ``model`` and its input without the run's spec: its ``backbone`` name (as
    given to :func:`~diml.models.build_model`), ``embed_dim``, ``grid``, ``frozen_bn``, the pooling
    (``align_corners``, ``global_vector``), the input ``image_size`` and the eval transform's ``eval_resize_ratio``."""
    config = {"backbone": backbone, "embed_dim": model.embed_dim, "grid": model.grid, "frozen_bn": model.frozen_bn,
              "image_size": image_size, "align_corners": model.align_corners, "global_vector": model.global_vector,
              "eval_resize_ratio": float(eval_resize_ratio)}
    return _checked_config(config, "model_config")


def eval_resize_ratio(config: dict[str, Any]) -> float:
    """The eval transform's resize ratio of a ``model_config`` (256 / 224 for checkpoints written before the key)."""
    return float(config.get("eval_resize_ratio", DEFAULT_RESIZE_RATIO))


def save_checkpoint(path: str | os.PathLike, model_state: dict[str, torch.Tensor], config: dict[str, Any], *,
                    loss_state: dict[str, Any] | None = None, epoch: int | None = None, **extra: Any) -> None:
    """Write a checkpoint of the format above.

    Args:
        path: the file to write.
        model_state: ``DIMLModel.state_dict()`` (e.g. a CPU copy of the best epoch's weights).
        config: :func:`model_config` of the model.
        loss_state: the loss module's ``state_dict()`` (learnable loss parameters), or None.
        epoch: the epoch the weights come from.
        extra: further entries (tensors, numbers, strings, lists and dicts of them: ``weights_only`` loading).
    """
    reserved = sorted({"format_version", "model", "model_config", "loss", "epoch"} & set(extra))
    if reserved:
        raise ValueError(f"extra entry {reserved[0]!r} is part of the checkpoint format; pass it as its argument")
    torch.save({"format_version": FORMAT_VERSION, "model": model_state,
                "model_config": _checked_config(dict(config), "config"), "loss": loss_state, "epoch": epoch,
                **extra}, pathlib.Path(path))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The validated content of a checkpoint (on the CPU): ``model``, ``model_config``, ``loss``, ``epoch``, extras."""
    path = pathlib.Path(path)
    state = _read(path)
    version = state.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format_version {version!r}; this diml reads versions 1 to "
                         f"{FORMAT_VERSION}: update diml to read it")
    return {"loss": None, "epoch": None, **state, "format_version": version,
            "model_config": model_config_of(state, path)}


def _read(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a best_model.pt written by the "
                                "pipeline")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"checkpoint {path} cannot be read by torch.load(weights_only=True) ({first}); pass a "
                         "checkpoint written by the DIML pipeline") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f"checkpoint {path} has no 'model' state dict; pass a checkpoint written by the DIML "
                         "pipeline (torch.save({'model': ..., 'model_config': ...}))")
    return state


def model_config_of(state: dict, path: pathlib.Path) -> dict[str, Any]:
    """The validated ``model_config`` of a loaded checkpoint ``state``."""
    config = state.get("model_config")
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {path} has no 'model_config' (backbone, embed_dim, grid, frozen_bn, image_size);"
                         " it was not written by this version of the DIML pipeline")
    return _checked_config(config, f"checkpoint {path}: model_config")


def _checked_config(config: dict, where: str) -> dict[str, Any]:
    for key, kind in CONFIG_TYPES.items():
        value = config.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{where}[{key!r}] must be a {kind.__name__}, got {value!r}")
    ratio = config.get("eval_resize_ratio", DEFAULT_RESIZE_RATIO)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
        raise ValueError(f"{where}['eval_resize_ratio'] must be a number >= 1, got {ratio!r}")
    return dict(config)


def _mismatch(model: DIMLModel, weights: dict[str, torch.Tensor]) -> str | None:
    """A one-line description of how ``weights`` differ from ``model``'s state dict, or None if they fit."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [k for k in sorted(set(expected) & set(weights))
              if not isinstance(weights[k], torch.Tensor) or tuple(weights[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        key = shapes[0]
        got = tuple(getattr(weights[key], "shape", ()))
        parts.append(f"{len(shapes)} shape mismatches (e.g. {key}: checkpoint {got} vs model "
                     f"{tuple(expected[key].shape)})")
    return "; ".join(parts)


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[DIMLModel, dict]:
    """Rebuild the model of a pipeline checkpoint (no pretrained download: every weight comes from the file).

    Args:
        path: the checkpoint file (e.g. the MLflow artifact ``checkpoint/best_model.pt``).
        device: where to put the model.

    Returns:
        ``(model in eval mode on device, model_config)``.
    """
    path = pathlib.Path(path)
    state = read_checkpoint(path)
    config = state["model_config"]
    try:
        pooling = {key: config.get(key, before) for key, before in POOLING_BEFORE_KEYS.items()}
        model = build_model(config["backbone"], pretrained=False, embed_dim=config["embed_dim"], grid=config["grid"],
                            frozen_bn=config["frozen_bn"], **pooling)
    except ValueError as error:
        raise ValueError(f"checkpoint {path}: cannot build its model_config ({error})") from None
    problem = _mismatch(model, state["model"])
    if problem is not None:
        raise ValueError(f"checkpoint {path} does not match its model_config (backbone {config['backbone']!r}, "
                         f"embed_dim {config['embed_dim']}, grid {config['grid']}): {problem}; it holds another "
                         "architecture")
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config
