"""Validation of the arguments of :mod:`diml.evaluation.correspondence`.

Each check raises ``ValueError`` with a one-line message naming the argument and the fix, and returns the value in
the form the module computes with (keypoints and boxes as float64 tensors on the compute device).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from diml import names
from diml.evaluation._inputs import as_tensor


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_grid(grid, cells: int | None = None) -> int:
    """``grid``: cells per side, an int >= 1 with ``grid * grid == cells`` when ``cells`` (R) is known."""
    if not _is_int(grid) or grid < 1 or (cells is not None and grid * grid != cells):
        want = f" with grid * grid = R = {cells} (the model's grid)" if cells is not None else ""
        raise ValueError(f"grid must be the cells per side, an int >= 1{want}; got {grid!r}")
    return int(grid)


def check_image_size(image_size) -> float:
    """``image_size``: the side S of the evaluation crop in pixels, a finite number > 0."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, float, np.integer, np.floating)) \
            or not math.isfinite(image_size) or image_size <= 0:
        raise ValueError(f"image_size must be the side S > 0 of the evaluation crop in pixels (e.g. 224), "
                         f"got {image_size!r}")
    return float(image_size)


def _real(value, name: str, shape_doc: str) -> torch.Tensor:
    x = as_tensor(value, name)
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must be a real-valued array of shape {shape_doc}, got dtype {x.dtype}")
    return x


def check_embeddings(local_emb, global_emb, labels, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``local_emb (N, D, R)``, ``global_emb (N, D)`` floating and ``labels (N,)`` integers; returns float32 /
    int64 tensors on ``device`` (default: ``local_emb``'s).  Finiteness is left to the solver, which checks the cell
    terms of the pairs it solves (the images never drawn do not matter)."""
    local = as_tensor(local_emb, "local_emb")
    glob = as_tensor(global_emb, "global_emb")
    labels = as_tensor(labels, "labels")
    if local.ndim != 3 or not local.is_floating_point() or 0 in local.shape:
        raise ValueError(f"local_emb must be floating (N, D, R) cell embeddings, got dtype {local.dtype} and shape "
                         f"{tuple(local.shape)}")
    n, d, _ = local.shape
    if glob.ndim != 2 or tuple(glob.shape) != (n, d) or not glob.is_floating_point():
        raise ValueError(f"global_emb must be floating (N, D) = ({n}, {d}) to match local_emb, got dtype {glob.dtype} "
                         f"and shape {tuple(glob.shape)}")
    if labels.ndim != 1 or labels.shape[0] != n or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool:
        raise ValueError(f"labels must be (N,) = ({n},) integers, got dtype {labels.dtype} and shape "
                         f"{tuple(labels.shape)}")
    device = torch.device(device) if device is not None else local.device
    return (local.to(device, torch.float32), glob.to(device, torch.float32), labels.to(device, torch.int64))


def check_plans(plans, grid: int) -> torch.Tensor:
    """``plans``: ``(B, R, R)`` finite, non-negative, floating, ``R = grid * grid``; returned as given."""
    if not isinstance(plans, torch.Tensor) or plans.ndim != 3 or not plans.is_floating_point():
        raise ValueError(f"plans must be a floating torch.Tensor of shape (B, R, R), got {type(plans).__name__} "
                         f"{tuple(getattr(plans, 'shape', ()))}")
    r = grid * grid
    if tuple(plans.shape[1:]) != (r, r):
        raise ValueError(f"plans must have shape (B, R, R) with R = grid * grid = {r}, got {tuple(plans.shape)}: "
                         "pass the grid the plans were made on")
    if plans.numel() and not bool(torch.isfinite(plans).all() & (plans >= 0).all()):
        raise ValueError("plans must be finite and non-negative: pass transport plans (e.g. diml.ot.match(...).plan)")
    return plans


def check_keypoints(value, name: str, *, n: int, image_size: float, device, parts: int | None = None) -> torch.Tensor:
    """``(N, P, 3)`` ``(x, y, visible)``: finite, visible in {0, 1}, visible points within ``[0, S]``; returns
    float64 on ``device``.  ``parts``: the P the keypoints must have (another argument's)."""
    kp = _real(value, name, "(N, P, 3)")
    if kp.ndim != 3 or kp.shape[0] != n or kp.shape[2] != 3 or kp.shape[1] == 0 \
            or (parts is not None and kp.shape[1] != parts):
        want = f"({n}, {parts if parts is not None else 'P'}, 3)"
        raise ValueError(f"{name} must have shape (N, P, 3) = {want}, (x, y, visible) per image and part, got shape "
                         f"{tuple(kp.shape)}")
    kp = kp.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(kp).all()):
        raise ValueError(f"{name} contains NaN or inf: write invisible parts as (0, 0, 0)")
    visible = kp[..., 2]
    if not bool(((visible == 0) | (visible == 1)).all()):
        raise ValueError(f"{name}[..., 2] (visible) must be 0 or 1, got {sorted(set(visible.unique().tolist()))[:5]}: "
                         "binarise the visibility flags")
    outside = (visible > 0) & ((kp[..., :2] < 0) | (kp[..., :2] > image_size)).any(-1)
    if bool(outside.any()):
        image, part = (int(i) for i in outside.nonzero()[0])
        x, y = kp[image, part, :2].tolist()
        raise ValueError(f"{name}[{image}, {part}] = ({x:g}, {y:g}) is visible but outside [0, {image_size:g}]: give "
                         f"coordinates in the {image_size:g} x {image_size:g} evaluation crop, or mark the part "
                         "invisible")
    return kp


def check_boxes(value, name: str, *, n: int, device) -> torch.Tensor:
    """``(N, 4)`` ``(x0, y0, x1, y1)``, finite, ``x1 >= x0`` and ``y1 >= y0``; float64.  An empty box is allowed (an
    object clipped out of the crop: such an image has no visible keypoint to be a target; if it had, its
    ``PCK_bbox`` threshold would be 0)."""
    boxes = _real(value, name, "(N, 4)")
    if boxes.ndim != 2 or tuple(boxes.shape) != (n, 4):
        raise ValueError(f"{name} must have shape (N, 4) = ({n}, 4), (x0, y0, x1, y1) per image, or be None; got "
                         f"shape {tuple(boxes.shape)}")
    boxes = boxes.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(boxes).all() & (boxes[:, 2] >= boxes[:, 0]).all() & (boxes[:, 3] >= boxes[:, 1]).all()):
        raise ValueError(f"{name} must hold finite (x0, y0, x1, y1) boxes with x1 >= x0 and y1 >= y0: convert "
                         "(x, y, width, height) boxes with x1 = x + width, y1 = y + height")
    return boxes


def check_alphas(alphas: Sequence[float], part_alpha: float | None) -> tuple[float, ...]:
    """PCK thresholds: a non-empty sequence of distinct finite numbers > 0, holding ``part_alpha`` (unless None)."""
    if isinstance(alphas, (int, float)) or not isinstance(alphas, Sequence) or not alphas or any(
            isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0 for a in alphas):
        raise ValueError(f"alphas must be a non-empty sequence of numbers > 0, e.g. (0.05, 0.1, 0.2); got {alphas!r}")
    out = tuple(dict.fromkeys(float(a) for a in alphas))
    if len({names.pck_name(a) for a in out}) != len(out):  # names print 6 significant digits
        raise ValueError(f"alphas {alphas!r} hold two values named alike ({[names.pck_name(a) for a in out]}): pass "
                         "thresholds distinct in 6 significant digits")
    if part_alpha is not None and part_alpha not in out:
        raise ValueError(f"part_alpha {part_alpha!r} must be one of alphas {out}: add it to alphas")
    return out


def check_part_names(part_names, parts: int) -> tuple[str, ...]:
    """``P`` distinct part names, each valid for result keys (:func:`diml.names.check_part_name`)."""
    if isinstance(part_names, str) or not isinstance(part_names, Sequence) or len(part_names) != parts:
        got = len(part_names) if isinstance(part_names, Sequence) and not isinstance(part_names, str) else part_names
        raise ValueError(f"part_names must be a list of P = {parts} names, one per keypoint part (the keypoints' "
                         f"second axis), got {got!r}")
    out = tuple(names.check_part_name(p) for p in part_names)
    if len(set(out)) != len(out):
        raise ValueError(f"part_names must be distinct, got {list(out)}: rename the repeated part")
    return out


def check_sampling(labels: torch.Tensor, keypoints: torch.Tensor, max_pairs, seed) -> None:
    """Arguments of :func:`~diml.evaluation.correspondence.sample_pairs`: ``labels (N,)`` integers, ``keypoints
    (N, P, 3)``, ``max_pairs`` an int >= 1, ``seed`` an int."""
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be (N,) integers, got dtype {labels.dtype} and shape {tuple(labels.shape)}")
    if keypoints.ndim != 3 or keypoints.shape[0] != labels.shape[0] or keypoints.shape[2] != 3:
        raise ValueError(f"keypoints must have shape (N, P, 3) = ({labels.shape[0]}, P, 3) to match labels, got "
                         f"{tuple(keypoints.shape)}")
    if not _is_int(max_pairs) or max_pairs < 1:
        raise ValueError(f"max_pairs must be an int >= 1 (unordered pairs sampled), got {max_pairs!r}")
    if not _is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
