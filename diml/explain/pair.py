"""Explain structural similarities: one query against one or several references, from cell embeddings or images.

Everything here runs in float64 through :func:`diml.ot.match` (a single pair costs a few milliseconds), so the
part-wise contributions ``T_ij * S_ij`` sum to the reported similarity to rounding error. ``exact=True`` also solves
the unregularised problem with POT's network simplex (``ot.emd``) on the same cost ``1 - S`` and marginals.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import ot as pot
import torch
import torch.nn.functional as F

from diml.data.transforms import DEFAULT_RESIZE_RATIO
from diml.explain.explanation import Explanation, top_pairs
from diml.distributed import unwrap_model
from diml.explain.images import embed_images
from diml.ot import OTOptions, match
from diml.options import as_options


class Matched(NamedTuple):
    """One query matched with ``K`` references (float64 numpy, on the CPU).

    ``plan, cell_sim: (K, R, R)``, ``a, b: (K, R)``, ``similarity: (K,)`` (``sum_ij plan * cell_sim``),
    ``global_similarity: (K,)`` cosine of the global embeddings.
    """

    plan: np.ndarray
    cell_sim: np.ndarray
    a: np.ndarray
    b: np.ndarray
    similarity: np.ndarray
    global_similarity: np.ndarray


def _check_tensor(name: str, value, shape_doc: str, ndim: int) -> None:
    if not isinstance(value, torch.Tensor) or value.ndim != ndim or not value.is_floating_point():
        raise ValueError(f"{name} must be a floating torch.Tensor of shape {shape_doc}, got "
                         f"{type(value).__name__} {tuple(getattr(value, 'shape', ()))}")


def _check_inputs(q_local, q_global, r_local, r_global, grid) -> None:
    _check_tensor("q_local", q_local, "(C, R)", 2)
    _check_tensor("q_global", q_global, "(C,)", 1)
    _check_tensor("r_local", r_local, "(K, C, R)", 3)
    _check_tensor("r_global", r_global, "(K, C)", 2)
    channels, cells = q_local.shape
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1 or grid * grid != cells:
        raise ValueError(f"grid must be the cells per side with grid * grid = R = {cells} (the model's grid), "
                         f"got {grid!r}")
    k = r_local.shape[0]
    if tuple(r_local.shape) != (k, channels, cells) or tuple(r_global.shape) != (k, channels) \
            or tuple(q_global.shape) != (channels,):
        raise ValueError(f"shapes must agree: q_local (C, R) = {(channels, cells)}, q_global (C,), r_local (K, C, R), "
                         f"r_global (K, C); got q_global {tuple(q_global.shape)}, r_local {tuple(r_local.shape)}, "
                         f"r_global {tuple(r_global.shape)}")


def match_query(
    q_local: torch.Tensor,
    q_global: torch.Tensor,
    r_local: torch.Tensor,
    r_global: torch.Tensor,
    *,
    grid: int,
    ot: OTOptions = OTOptions(),
    device: str | torch.device = "cpu",
) -> Matched:
    """Match one query with ``K`` references in one batched float64 :func:`diml.ot.match` call.

    Args:
        q_local: ``(C, R)`` query cell embeddings; ``q_global``: ``(C,)``.
        r_local: ``(K, C, R)`` reference cell embeddings; ``r_global``: ``(K, C)`` (none need be normalised).
        grid: cells per side, ``grid * grid == R``.
        ot: :class:`~diml.ot.OTOptions` of :func:`diml.ot.match`.
        device: where to solve.

    Returns:
        :class:`Matched` with ``K`` entries.
    """
    _check_inputs(q_local, q_global, r_local, r_global, grid)
    ot = as_options(ot)
    device = torch.device(device)
    q_local, q_global = q_local.to(device, torch.float64), q_global.to(device, torch.float64)
    r_local, r_global = r_local.to(device, torch.float64), r_global.to(device, torch.float64)
    with torch.no_grad():
        result = match(q_local[None], q_global[None], r_local, r_global, ot=ot)
        cosine = F.normalize(r_global, dim=1) @ F.normalize(q_global, dim=0)

    def host(x: torch.Tensor) -> np.ndarray:
        return x[0].detach().cpu().numpy()

    plan, cell_sim = host(result.plan), host(result.cell_sim)
    return Matched(plan, cell_sim, host(result.a), host(result.b), (plan * cell_sim).sum((1, 2)),
                   cosine.cpu().numpy())


def exact_plan(a: np.ndarray, b: np.ndarray, cell_sim: np.ndarray) -> np.ndarray:
    """Unregularised optimal plan for the cost ``1 - S``: POT ``ot.emd`` in float64.

    Args:
        a: ``(R,)`` row weights; ``b``: ``(R,)`` column weights (each renormalised to sum 1);
        cell_sim: ``(R, R)`` cell similarities.

    Returns:
        ``(R, R)`` plan.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return pot.emd(a / a.sum(), b / b.sum(), 1.0 - np.asarray(cell_sim, dtype=np.float64))


def explanation_at(
    matched: Matched, k: int, *, grid: int, ot: OTOptions, top: int = 5, exact: bool = False,
    query_id: Any = None, ref_id: Any = None,
) -> Explanation:
    """The :class:`Explanation` of reference ``k`` of ``matched`` (see :func:`match_query`)."""
    plan, cell_sim = matched.plan[k], matched.cell_sim[k]
    contributions = plan * cell_sim
    total = float(contributions.sum())
    exact_t = exact_plan(matched.a[k], matched.b[k], cell_sim) if exact else None
    return Explanation(
        grid=grid, similarity=total, plan=plan, cell_sim=cell_sim, contributions=contributions,
        query_weights=matched.a[k], ref_weights=matched.b[k], top_pairs=top_pairs(plan, cell_sim, grid, top, total),
        eps=float(ot.eps), marginals=ot.marginals, global_similarity=float(matched.global_similarity[k]),
        query_id=query_id, ref_id=ref_id, exact_plan=exact_t,
        exact_similarity=None if exact_t is None else float((exact_t * cell_sim).sum()),
    )


def _check_top(top) -> None:
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be an integer >= 1 (matched cell pairs to list), got {top!r}")


def explain_pair(
    q_local: torch.Tensor,
    q_global: torch.Tensor,
    r_local: torch.Tensor,
    r_global: torch.Tensor,
    *,
    grid: int,
    ot: OTOptions = OTOptions(),
    top: int = 5,
    exact: bool = False,
    query_id: Any = None,
    ref_id: Any = None,
    device: str | torch.device = "cpu",
) -> Explanation:
    """Explain the structural similarity of a query and a reference image from their embeddings.

    Args:
        q_local: ``(C, R)`` query cell embeddings (``R = grid * grid``, row-major); ``q_global``: ``(C,)``.
        r_local: ``(C, R)`` reference cell embeddings; ``r_global``: ``(C,)``. None need be normalised.
        grid: cells per side.
        ot: :class:`~diml.ot.OTOptions` of the matching (``eps``: entropic regularisation of the plan,
            ``marginals``: ``"cross_attention"`` or ``"uniform"``, the solver's options).
        top: how many of the largest cell-pair contributions to list.
        exact: also compute the unregularised plan (POT ``ot.emd``) and its similarity.
        query_id, ref_id: identifiers stored in the explanation (e.g. image paths).
        device: where to solve.

    Returns:
        :class:`~diml.explain.explanation.Explanation`.
    """
    _check_top(top)
    if not isinstance(r_local, torch.Tensor) or r_local.ndim != 2:
        raise ValueError(f"r_local must be a (C, R) tensor, got {type(r_local).__name__} "
                         f"{tuple(getattr(r_local, 'shape', ()))}")
    if not isinstance(r_global, torch.Tensor) or r_global.ndim != 1:
        raise ValueError(f"r_global must be a (C,) tensor, got {tuple(getattr(r_global, 'shape', ()))}")
    matched = match_query(q_local, q_global, r_local[None], r_global[None], grid=grid, ot=ot, device=device)
    return explanation_at(matched, 0, grid=grid, ot=ot, top=top, exact=exact,
                          query_id=query_id, ref_id=ref_id)


def explain_images(
    model: torch.nn.Module,
    image_a,
    image_b,
    *,
    image_size: int = 224,
    resize_ratio: float = DEFAULT_RESIZE_RATIO,
    device: str | torch.device = "cpu",
    **options: Any,
) -> Explanation:
    """Explain the structural similarity of two images under ``model`` (query ``image_a``, reference ``image_b``).

    Args:
        model: a :class:`diml.models.DIMLModel` (or a DDP wrapper of one) on ``device``.
        image_a, image_b: PIL images (transformed with ``eval_transform(image_size)``) or ``(3, S, S)`` tensors.
        image_size, resize_ratio: the eval transform of PIL images (the model's input size and the run's
            ``data.augmentation.eval_resize_ratio``).
        device: where the model and the matching run.
        options: keyword options of :func:`explain_pair` (``ot``, ``top``, ``exact``, ``query_id``, ``ref_id``).
    """
    grid = getattr(unwrap_model(model), "grid", None)
    if grid is None:
        raise ValueError("model has no `grid` attribute; pass a diml.models.DIMLModel")
    glob, local = embed_images(model, [image_a, image_b], image_size=image_size, resize_ratio=resize_ratio,
                               device=device)
    return explain_pair(local[0], glob[0], local[1], glob[1], grid=grid, device=device, **options)
