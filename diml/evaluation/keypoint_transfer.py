r"""Keypoints carried through transport plans between the cells of two images, scored by PCK (issue 25).

The scoring core of :mod:`diml.evaluation.correspondence` (which samples the pairs, solves the plans and adds the
baselines); :func:`transfer_scores` scores given plans, e.g. hand-made ones.

**Geometry.**  Images are ``S x S`` evaluation crops; a keypoint is ``(x, y)`` in pixels (origin top-left, pixel
``k`` spans ``[k, k + 1)``).  The ``R = g x g`` cells are row-major, cell ``r`` has row ``r // g`` and column
``r % g``, side ``s = S / g`` and centre :math:`c_r = ((r \bmod g + \tfrac12) s, (\lfloor r / g\rfloor + \tfrac12) s)`.
A point lies in cell ``(min(floor(y g / S), g - 1), min(floor(x g / S), g - 1))``: cells are half-open, a point on
a border belongs to the cell right of / below it, and the far edge ``x = S`` to the last cell.

**Transfer.**  For a plan :math:`T \in \mathbb R^{R\times R}` (rows: query cells, columns: reference cells; in
DIML's orientation, :mod:`diml.ot.matching`, :math:`a_i \propto \mathrm{relu}(\hat g_{ref} \cdot \hat q_i)` and
:math:`b_j \propto \mathrm{relu}(\hat g_{query} \cdot \hat r_j)`) and a query keypoint in cell :math:`i`:

.. math::
    \text{argmax:}\quad \hat p = c_{j^\star},\ j^\star = \arg\max_j T_{ij}; \qquad
    \text{mean:}\quad \hat p = \sum_j \frac{T_{ij}}{\sum_k T_{ik}}\, c_j

(the mean is the barycentric map of POT's ``ot.da.BaseTransport.transform``).  A keypoint whose query cell carries
no mass (:math:`a_i = 0`: the reference's global vector has a negative cosine with that cell) cannot be carried: it
is counted as *untransferred*, and as wrong by every other score.  Ties in the argmax go to the first cell.

**Scores.**  Over the keypoints visible in both images of a pair:

.. math::
    \mathrm{PCK}@\alpha = 100\, \frac{\#\{\|\hat p - p\|_2 \le \alpha L\}}{\#\text{keypoints}}, \qquad
    \text{cell accuracy} = 100\, \frac{\#\{\mathrm{cell}(\hat p) = \mathrm{cell}(p)\}}{\#\text{keypoints}},

with ``L = S`` (``PCK@alpha``: the image side, as CUB's CSM protocol and ASIC) and, when boxes are given,
``L = max(width, height)`` of the *target's* box (``PCK_bbox@alpha``: SPair-71k).  The predicted cell is ``j*`` for
the argmax and the cell holding :math:`\hat p` for the mean.  References on the same keypoints: ``identity`` (the same
position in the reference, no matching) and ``grid_ceiling`` (the true keypoint snapped to its own cell's centre:
what a perfect cell matcher reaches with the argmax rule; on a 4 x 4 grid of a 224 crop, 56 px cells, it loses
~21 px on average; the mean rule is not bound to centres and can pass it).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple

import torch

from diml import names
from diml.evaluation._correspondence_inputs import (
    check_alphas,
    check_boxes,
    check_grid,
    check_image_size,
    check_keypoints,
    check_part_names,
    check_plans,
)

ALPHAS = (0.05, 0.1, 0.2)
"""The PCK thresholds of CUB's CSM protocol and SPair-71k."""


# ------------------------------------------------------------------------------------------------ geometry
def cell_centres(grid: int, image_size: float, *, device=None, dtype=torch.float64) -> torch.Tensor:
    """``(R, 2)`` the ``(x, y)`` centres of the ``R = grid * grid`` row-major cells of an ``image_size`` square."""
    side = image_size / grid
    index = torch.arange(grid * grid, device=device)
    return torch.stack([(index % grid + 0.5) * side, (index // grid + 0.5) * side], dim=1).to(dtype)


def cell_index(points: torch.Tensor, *, grid: int, image_size: float) -> torch.Tensor:
    """``(...)`` int64 row-major cell of ``points (..., 2)`` ``(x, y)`` in ``[0, image_size]``: half-open cells, a
    point on a border goes right / down, ``x = image_size`` to the last column (module docstring)."""
    rc = torch.floor(points * grid / image_size).clamp_(0, grid - 1).long()
    return rc[..., 1] * grid + rc[..., 0]


def cell_rows(matrices: torch.Tensor, pair: torch.Tensor, cell: torch.Tensor, *, transpose: bool = False):
    """``(K, R)`` row ``cell[k]`` of ``matrices[pair[k]]`` (``matrices (B, R, R)``, ``pair, cell (K,)`` int64), or
    with ``transpose`` its column (the row of the transposed matrix, without transposing the whole batch).  Rows:
    one ``index_select`` over the flattened rows; columns: advanced indexing (measured 2-3x faster than copying the
    transposed batch for 15,000 columns of 2,048 49 x 49 matrices)."""
    if transpose:
        return matrices[pair, :, cell]
    b, r, _ = matrices.shape
    return matrices.reshape(b * r, -1).index_select(0, pair * r + cell)


class Transfer(NamedTuple):
    """Query keypoints carried through plans (:func:`transfer_keypoints`, :func:`carry`); ``(...)``: ``(B, P)`` or
    ``(K,)``.

    Attributes:
        argmax_cell: ``(...)`` int64 reference cell receiving most of the keypoint cell's mass.
        argmax_point: ``(..., 2)`` float64 its centre ``(x, y)``.
        mean_point: ``(..., 2)`` float64 mass-weighted mean of the reference cells' centres (0 where ``mass == 0``).
        mean_cell: ``(...)`` int64 cell holding ``mean_point``.
        mass: ``(...)`` float64 the plan's mass on the keypoint's query cell (its row sum); 0: not transferred.
    """

    argmax_cell: torch.Tensor
    argmax_point: torch.Tensor
    mean_point: torch.Tensor
    mean_cell: torch.Tensor
    mass: torch.Tensor


def carry(plans: torch.Tensor, pair: torch.Tensor, query_cell: torch.Tensor, *, grid: int, image_size: float,
          transpose: bool = False, centres: torch.Tensor | None = None) -> Transfer:
    """:class:`Transfer` with ``(K,)`` fields of ``K`` keypoints in cells ``query_cell (K,)`` through the plans
    ``plans[pair] (R, R)`` (``plans (B, R, R)``, unchecked; ``transpose``: through their transposes, i.e. from the
    columns' image to the rows').  ``centres``: :func:`cell_centres` on the plans' device, float64."""
    if centres is None:
        centres = cell_centres(grid, image_size, device=plans.device)
    rows = cell_rows(plans, pair, query_cell, transpose=transpose)  # (K, R)
    argmax_cell = rows.argmax(dim=-1)
    rows = rows.to(centres.dtype)
    mass = rows.sum(dim=-1)
    mean = (rows @ centres) / torch.where(mass > 0, mass, 1.0).unsqueeze(-1)
    return Transfer(argmax_cell, centres[argmax_cell], mean, cell_index(mean, grid=grid, image_size=image_size), mass)


def transfer_keypoints(plans, query_kp, *, grid: int, image_size: float) -> Transfer:
    """Carry keypoints through plans, by both rules (module docstring).

    Args:
        plans: ``(B, R, R)`` non-negative plans, rows: query cells, columns: reference cells, ``R = grid * grid``.
        query_kp: ``(B, P, 3)`` ``(x, y, visible)`` of each pair's query image (every point is carried).
        grid: cells per side; image_size: the side S of the crop (pixels).

    Returns:
        :class:`Transfer` with ``(B, P)`` fields, on the plans' device.
    """
    grid, image_size = check_grid(grid), check_image_size(image_size)
    plans = check_plans(plans, grid)
    query_kp = check_keypoints(query_kp, "query_kp", n=plans.shape[0], image_size=image_size, device=plans.device)
    b, p, _ = query_kp.shape
    pair = torch.arange(b, device=plans.device).repeat_interleave(p)
    moved = carry(plans, pair, cell_index(query_kp[..., :2].reshape(-1, 2), grid=grid, image_size=image_size),
                  grid=grid, image_size=image_size)
    return Transfer(*(field.view(b, p, *field.shape[1:]) for field in moved))


# ------------------------------------------------------------------------------------------------ counting
class Targets(NamedTuple):
    """``K`` keypoint transfers to score (:meth:`Tally.targets`): ``part (K,)`` int64, ``query_point (K, 2)``,
    ``query_cell (K,)``, ``point (K, 2)`` and ``cell (K,)`` of the annotation in the reference, ``thresholds (K, A)``
    (``alpha * L`` of each PCK column)."""

    part: torch.Tensor
    query_point: torch.Tensor
    query_cell: torch.Tensor
    point: torch.Tensor
    cell: torch.Tensor
    thresholds: torch.Tensor


class Prediction(NamedTuple):
    """One method's predictions for ``K`` keypoints: ``point (K, 2)``, ``cell (K,)`` and ``transferred (K,)`` bool
    (None: every keypoint is)."""

    point: torch.Tensor
    cell: torch.Tensor
    transferred: torch.Tensor | None = None


class Tally:
    """Hit counts per method, ``(P, A + 2)`` float64 (exact integers; columns: the PCK thresholds, cell accuracy,
    untransferred), and per-part totals, added chunk by chunk on the device (no host sync) and turned into
    percentages once.  Only the keypoints visible in both images are ever gathered (a flat list of ``K``
    transfers, half to two thirds of ``B x P``), so the work follows the keypoints scored.

    Args:
        grid, image_size: the cells and the crop side (L of ``PCK@``); alphas: validated thresholds; bbox: also
        ``PCK_bbox@`` (boxes are given); num_parts: ``P``; device: where the counts live.
    """

    def __init__(self, *, grid: int, image_size: float, alphas: tuple[float, ...], bbox: bool, num_parts: int,
                 device):
        self.grid, self.image_size, self.alphas, self.bbox = grid, image_size, alphas, bbox
        self.centres = cell_centres(grid, image_size, device=device)
        self.alpha_values = torch.tensor(alphas, dtype=torch.float64).to(device)  # once: a copy from the host waits
        self.columns = len(alphas) * (2 if bbox else 1) + 2
        self.hits: dict[str, torch.Tensor] = {}
        self.totals = torch.zeros(num_parts, dtype=torch.float64, device=device)

    def targets(self, query_kp, ref_kp, ref_boxes, part) -> Targets:
        """Record ``K`` keypoint transfers visible in both images (``(K, 3)`` float64 keypoints of the query and the
        reference, ``ref_boxes (K, 4)`` or None, ``part (K,)``): their :class:`Targets`."""
        self.totals.index_add_(0, part, torch.ones_like(part, dtype=self.totals.dtype))
        point, alphas = ref_kp[:, :2], self.alpha_values
        thresholds = [(alphas * self.image_size).expand(point.shape[0], -1)]
        if self.bbox:
            box_side = torch.maximum(ref_boxes[:, 2] - ref_boxes[:, 0], ref_boxes[:, 3] - ref_boxes[:, 1])
            thresholds.append(alphas * box_side.unsqueeze(1))
        return Targets(part, query_kp[:, :2], cell_index(query_kp[:, :2], grid=self.grid, image_size=self.image_size),
                       point, cell_index(point, grid=self.grid, image_size=self.image_size),
                       torch.cat(thresholds, dim=1))

    def add(self, target: Targets, predictions: dict[str, Prediction]) -> None:
        """Count the ``M`` methods' predictions for ``target``, as one batch of ``(M, K)`` tensors."""
        points = torch.stack([p.point for p in predictions.values()])  # (M, K, 2)
        cells = torch.stack([p.cell for p in predictions.values()])  # (M, K)
        carried = torch.stack([torch.ones_like(target.part, dtype=torch.bool) if p.transferred is None
                               else p.transferred for p in predictions.values()])
        dist = torch.linalg.vector_norm(points - target.point, dim=-1)
        hits = torch.cat([dist.unsqueeze(-1) <= target.thresholds, (cells == target.cell).unsqueeze(-1)], dim=-1)
        hits = torch.cat([hits & carried.unsqueeze(-1), ~carried.unsqueeze(-1)], dim=-1)  # (M, K, columns)
        counts = torch.zeros(len(predictions), len(self.totals), self.columns, dtype=torch.float64,
                             device=hits.device).index_add_(1, target.part, hits.to(torch.float64))
        for method, method_counts in zip(predictions, counts):
            self.hits[method] = method_counts if method not in self.hits else self.hits[method] + method_counts

    def fresh(self) -> Tally:
        """An empty tally with the same settings, sharing the constant tensors (no copy from the host)."""
        other = copy.copy(self)
        other.hits, other.totals = {}, torch.zeros_like(self.totals)
        return other

    def merge(self, other: Tally) -> None:
        """Add the counts of ``other`` (another block's tally with the same settings)."""
        self.totals += other.totals
        for method, counts in other.hits.items():
            self.hits[method] = counts if method not in self.hits else self.hits[method] + counts

    def plan_predictions(self, methods: tuple[str, str], plans, target: Targets, pair,
                         transpose: bool = False) -> dict[str, Prediction]:
        """Both rules of the plans ``plans[pair]`` (``plans (B, R, R)``; ``transpose``: their transposes) for
        ``target``'s keypoints, as ``methods`` (argmax, mean)."""
        moved = carry(plans, pair, target.query_cell, grid=self.grid, image_size=self.image_size, transpose=transpose,
                      centres=self.centres)
        transferred = moved.mass > 0
        return {methods[0]: Prediction(moved.argmax_point, moved.argmax_cell, transferred),
                methods[1]: Prediction(moved.mean_point, moved.mean_cell, transferred)}

    def reference_predictions(self, target: Targets) -> dict[str, Prediction]:
        """The plan-free methods: ``identity`` and ``grid_ceiling``."""
        return {names.IDENTITY: Prediction(target.query_point, target.query_cell),
                names.GRID_CEILING: Prediction(self.centres[target.cell], target.cell)}

    def result(self, *, part_names, part_alpha, part_methods, plan_methods, directed_pairs: int) -> dict[str, float]:
        """The flat result in percent (one host sync): every method's PCK and cell accuracy, ``untransferred`` for
        ``plan_methods``, per part (with ``part_names``) for ``part_methods`` (NaN for a part never scored), and the
        counts (``directed_pairs``: the pairs counted)."""
        totals = self.totals.cpu()
        hits = {method: counts.cpu() for method, counts in self.hits.items()}
        total = float(totals.sum())
        metrics = [names.pck_name(a) for a in self.alphas]
        metrics += [names.pck_name(a, bbox=True) for a in self.alphas] if self.bbox else []
        metrics.append(names.CELL_ACCURACY)
        out: dict[str, float] = {}
        for method, counts in hits.items():
            shares = 100.0 * counts.sum(0) / total
            out.update({names.interp_name(method, metric): float(shares[k]) for k, metric in enumerate(metrics)})
            if method in plan_methods:
                out[names.interp_name(method, names.UNTRANSFERRED)] = float(shares[-1])
        if part_names is not None:
            column = self.alphas.index(part_alpha)
            for method in part_methods:
                shares = 100.0 * hits[method] / totals.unsqueeze(1)  # 0 / 0 = NaN: a part never visible in both
                for p, part in enumerate(part_names):
                    out[names.interp_name(method, names.CELL_ACCURACY, part)] = float(shares[p, len(metrics) - 1])
                    out[names.interp_name(method, names.pck_name(part_alpha), part)] = float(shares[p, column])
            out.update({names.part_count_name(part): float(totals[p]) for p, part in enumerate(part_names)})
        out[names.NUM_DIRECTED_PAIRS] = float(directed_pairs)
        out[names.NUM_KEYPOINTS] = total
        out[names.IMAGE_SIZE] = float(self.image_size)
        out[names.GRID] = float(self.grid)
        return out


def transfer_scores(
    plans,
    query_kp,
    ref_kp,
    *,
    grid: int,
    image_size: float,
    ref_boxes=None,
    alphas: Sequence[float] = ALPHAS,
    part_names: Sequence[str] | None = None,
    part_alpha: float = 0.1,
) -> dict[str, float]:
    """Score the keypoint transfer of given plans, one direction per plan (module docstring).

    Args:
        plans: ``(B, R, R)`` non-negative plans, rows: the query image's cells, columns: the reference's.
        query_kp: ``(B, P, 3)`` ``(x, y, visible)`` in the query images; ref_kp: ``(B, P, 3)`` in the references
            (part ``p`` corresponds to part ``p``).  Only keypoints visible in both are scored; a pair without any
            adds nothing.
        grid: cells per side (``grid * grid == R``); image_size: the crop side S, L of ``PCK@alpha``.
        ref_boxes: ``(B, 4)`` ``(x0, y0, x1, y1)`` of each reference (target) image, or None; given: also
            ``PCK_bbox@alpha`` with ``L = max(x1 - x0, y1 - y0)``.
        alphas: PCK thresholds; part_names: ``P`` names, or None for no per-part results; part_alpha: the alpha (one
            of ``alphas``) of the per-part PCK.

    Returns:
        Percentages of the methods ``argmax`` and ``mean`` (the plans), ``identity`` and ``grid_ceiling``:
        ``"<method>/PCK@a"``, ``"<method>/PCK_bbox@a"`` (with boxes), ``"<method>/cell_acc"``;
        ``"argmax/untransferred"``, ``"mean/untransferred"``; with ``part_names``, ``"<method>/part/<name>/cell_acc"``
        and ``".../PCK@<part_alpha>"`` for argmax, mean and grid_ceiling, and ``"part/<name>/num_keypoints"``; and
        the counts ``"num_directed_pairs"`` (plans with a keypoint scored), ``"num_keypoints"``, and ``"image_size"``,
        ``"grid"``.  Every value a float.
    """
    grid, image_size = check_grid(grid), check_image_size(image_size)
    plans = check_plans(plans, grid)
    b, device = plans.shape[0], plans.device
    query_kp = check_keypoints(query_kp, "query_kp", n=b, image_size=image_size, device=device)
    ref_kp = check_keypoints(ref_kp, "ref_kp", n=b, image_size=image_size, device=device, parts=query_kp.shape[1])
    ref_boxes = None if ref_boxes is None else check_boxes(ref_boxes, "ref_boxes", n=b, device=device)
    alphas = check_alphas(alphas, part_alpha if part_names is not None else None)
    part_names = None if part_names is None else check_part_names(part_names, query_kp.shape[1])
    tally = Tally(grid=grid, image_size=image_size, alphas=alphas, bbox=ref_boxes is not None,
                  num_parts=query_kp.shape[1], device=device)
    pair, part = ((query_kp[..., 2] > 0) & (ref_kp[..., 2] > 0)).nonzero(as_tuple=True)
    if pair.numel() == 0:
        raise ValueError("ref_kp: no part is visible (flag 1) in both images of any pair, so nothing can be scored; "
                         "pass pairs that share a visible part")
    target = tally.targets(query_kp[pair, part], ref_kp[pair, part], None if ref_boxes is None else ref_boxes[pair],
                           part)
    tally.add(target, tally.plan_predictions((names.ARGMAX, names.MEAN), plans, target, pair)
              | tally.reference_predictions(target))
    return tally.result(part_names=part_names, part_alpha=part_alpha,
                        part_methods=(names.ARGMAX, names.MEAN, names.GRID_CEILING),
                        plan_methods=(names.ARGMAX, names.MEAN), directed_pairs=len(pair.unique()))
