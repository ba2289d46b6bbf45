"""The matching-flow figure of one explanation (matplotlib, Agg; no pyplot state).

Top: the query (left) and the reference (right) side by side with the grid drawn and one line per matched cell pair
(width and opacity by the transport mass ``T_ij``, colour by the cell similarity ``S_ij`` on the range present, see
:func:`similarity_norm`), the ``top`` largest contributions numbered at both ends. Bottom: each image with its cell
weights overlaid as a heat map (one colour scale for both, the weights written in percent), and a bar chart of the
top part contributions ``T_ij * S_ij`` with their share of the total. With part annotations (:class:`PartMarks`):
each part's annotated keypoint as a circle on both images and, on the reference, where the plan carries the query's
keypoint (a cross: the mass-weighted mean of the reference cells' centres), one colour per part.
"""

from __future__ import annotations

import os
import pathlib
from typing import NamedTuple

import numpy as np
from matplotlib import cm, colormaps, colors
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from diml.explain.explanation import Explanation
from diml.data.transforms import DEFAULT_RESIZE_RATIO
from diml.explain.images import display_array

SIM_CMAP = "viridis"
HEAT_CMAP = "magma"
GAP = 0.12  # horizontal gap between the two images, in image widths
MIN_MASS = 0.02  # pairs carrying less than this fraction of the largest T_ij are not drawn
FLOW_SIZE = (1100, 850)


class PartMarks(NamedTuple):
    """Part keypoints to draw on a flow figure, in the ``image_size`` x ``image_size`` crop the model saw.

    ``query``, ``ref``: ``(P, 3)`` annotated ``(x, y, visible)``; ``transferred``: ``(P, 2)`` the query's keypoints
    carried to the reference through the plan (drawn where the query's part is visible); ``names``: ``P`` part names.
    """

    query: np.ndarray
    ref: np.ndarray
    transferred: np.ndarray
    names: list[str]
    image_size: float


def draw_parts(ax, marks: PartMarks, *, origin: tuple[float, float] = (0.0, 0.0), scale: float = 1.0) -> None:
    """Circles at the annotated keypoints of both images, crosses at the transferred ones (colours by part)."""
    right = (origin[0] + (1.0 + GAP) * scale, origin[1])
    palette = colormaps["tab20"] if len(marks.names) > 10 else colormaps["tab10"]
    unit = scale / marks.image_size
    for part in range(len(marks.names)):
        colour = palette(part % palette.N)
        for (x0, y0), points in ((origin, marks.query), (right, marks.ref)):
            if points[part, 2] > 0:
                ax.plot(x0 + unit * points[part, 0], y0 + unit * points[part, 1], "o", ms=6, mfc=colour, mec="white",
                        mew=1.0)
        if marks.query[part, 2] > 0:
            ax.plot(right[0] + unit * marks.transferred[part, 0], right[1] + unit * marks.transferred[part, 1], "X",
                    ms=8, mfc=colour, mec="black", mew=0.8)
    ax.text(origin[0], origin[1] + scale * 1.03, "o annotated part   X the query's part carried through the plan "
            "(mass-weighted mean of the reference cells)", fontsize=7, va="top")


def figure_of_size(size: tuple[int, int], dpi: int) -> Figure:
    """A ``Figure`` that saves as exactly ``size = (width, height)`` pixels at ``dpi``."""
    width, height = size
    if min(width, height) < 100 or dpi < 10:
        raise ValueError(f"size must be at least (100, 100) pixels and dpi >= 10, got size={size}, dpi={dpi}")
    return Figure(figsize=(width / dpi, height / dpi), dpi=dpi)


def save_png(fig: Figure, path: str | os.PathLike) -> pathlib.Path:
    """Write ``fig`` as a PNG (creating the folder) and return the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=fig.dpi, pil_kwargs={"compress_level": 1})  # 6x faster than level 6
    return path


def similarity_norm(*explanations: Explanation) -> colors.Normalize:
    """The colour scale of ``S_ij``: from the smallest to the largest cell similarity of ``explanations``.

    Trained cells are often all similar (e.g. 0.85 to 0.99); a fixed ``[-1, 1]`` scale would paint them one colour,
    so the figures stretch the scale over the values present and the colour bar gives the numbers.
    """
    low = min(float(e.cell_sim.min()) for e in explanations)
    high = max(float(e.cell_sim.max()) for e in explanations)
    return colors.Normalize(vmin=low, vmax=max(high, low + 1e-6))


def cell_centres(grid: int, origin: tuple[float, float] = (0.0, 0.0), scale: float = 1.0) -> np.ndarray:
    """``(R, 2)`` centres ``(x, y)`` of the cells of an image drawn on ``[x0, x0 + scale] x [y0, y0 + scale]``
    (y down; ``origin = (x0, y0)``)."""
    r = np.arange(grid * grid)
    return np.stack([origin[0] + scale * (r % grid + 0.5) / grid, origin[1] + scale * (r // grid + 0.5) / grid], 1)


def draw_image(ax, image: np.ndarray, grid: int, *, origin: tuple[float, float] = (0.0, 0.0), scale: float = 1.0,
               heat: np.ndarray | None = None, heat_range: tuple[float, float] | None = None,
               values: bool = False) -> None:
    """Draw ``image`` on the square ``[x0, x0 + scale] x [y0, y0 + scale]`` of ``ax`` with its ``grid`` drawn.

    Args:
        image: ``(H, W, 3)`` float array (see :func:`~diml.explain.images.display_array`).
        heat: ``(grid, grid)`` cell weights overlaid as a heat map, or None.
        heat_range: ``(low, high)`` of the heat colour scale (default: the range of ``heat``).
        values: write each cell's weight (in percent) on it.
    """
    x0, y0 = origin
    extent = (x0, x0 + scale, y0 + scale, y0)
    ax.imshow(image, extent=extent, interpolation="nearest")
    if heat is not None:
        low, high = heat_range or (float(heat.min()), float(heat.max()))
        ax.imshow(heat, extent=extent, cmap=HEAT_CMAP, alpha=0.55, interpolation="nearest", vmin=low,
                  vmax=max(high, low + 1e-12))
        if values:
            for (x, y), weight in zip(cell_centres(grid, origin, scale), heat.reshape(-1)):
                ax.text(x, y, f"{100 * weight:.0f}", ha="center", va="center", fontsize=7, color="white")
    ticks = np.linspace(0.0, scale, grid + 1)
    segments = [[(x0 + t, y0), (x0 + t, y0 + scale)] for t in ticks] + [[(x0, y0 + t), (x0 + scale, y0 + t)]
                                                                         for t in ticks]
    ax.add_collection(LineCollection(segments, colors="white", linewidths=0.6, alpha=0.8))


def draw_flow(ax, explanation: Explanation, query_image, ref_image, *, origin: tuple[float, float] = (0.0, 0.0),
              scale: float = 1.0, top: int | None = None, numbers: bool = True, width: float = 4.0,
              norm: colors.Normalize | None = None) -> None:
    """Draw the matching flow of ``explanation`` on ``ax`` (the caller sets the limits).

    The query fills ``[x0, x0 + scale] x [y0, y0 + scale]`` and the reference the same square shifted right by
    ``(1 + GAP) * scale``; one line joins the centres of every cell pair carrying at least ``MIN_MASS`` of the
    largest mass, its width and opacity growing with ``T_ij`` and its colour giving ``S_ij``.

    Args:
        query_image, ref_image: PIL images or ``(H, W, 3)`` arrays (see :func:`~diml.explain.images.display_array`).
        origin, scale: where and how large (image side, data units).
        top: how many of ``explanation.top_pairs`` to number (default: all of them).
        numbers: write the rank of the top pairs at both ends of their lines.
        width: line width (points) of the pair with the largest mass.
        norm: colour scale of ``S_ij`` (default :func:`similarity_norm` of this explanation).
    """
    grid = explanation.grid
    norm = norm or similarity_norm(explanation)
    right = (origin[0] + (1.0 + GAP) * scale, origin[1])
    draw_image(ax, display_array(query_image), grid, origin=origin, scale=scale)
    draw_image(ax, display_array(ref_image), grid, origin=right, scale=scale)
    plan, sim = explanation.plan, explanation.cell_sim
    peak = max(float(plan.max()), 1e-300)
    rows, cols = np.nonzero(plan >= MIN_MASS * peak)
    order = np.argsort(plan[rows, cols], kind="stable")  # heavy lines drawn last, on top
    rows, cols = rows[order], cols[order]
    left_c, right_c = cell_centres(grid, origin, scale), cell_centres(grid, right, scale)
    mass = plan[rows, cols] / peak
    rgba = colormaps[SIM_CMAP](norm(sim[rows, cols]))
    rgba[:, 3] = 0.2 + 0.8 * mass
    ax.add_collection(LineCollection(np.stack([left_c[rows], right_c[cols]], axis=1), colors=rgba,
                                     linewidths=0.3 + width * mass))
    if numbers:
        box = {"boxstyle": "circle,pad=0.15", "fc": "white", "ec": "black", "lw": 0.5}
        for pair in explanation.top_pairs[: len(explanation.top_pairs) if top is None else top]:
            a, b = left_c[pair.query_cell], right_c[pair.ref_cell]
            for x, y in (a + 0.06 * (b - a), b - 0.06 * (b - a)):
                ax.text(x, y, str(pair.rank), fontsize=7, ha="center", va="center", bbox=box)


def _draw_contributions(ax, explanation: Explanation, top: int | None) -> None:
    pairs = explanation.top_pairs[: len(explanation.top_pairs) if top is None else top]
    values = [p.contribution for p in pairs]
    labels = [f"#{p.rank} ({p.query_rc[0]},{p.query_rc[1]})->({p.ref_rc[0]},{p.ref_rc[1]})" for p in pairs]
    y = np.arange(len(pairs))
    norm = similarity_norm(explanation)
    ax.barh(y, values, color=colormaps[SIM_CMAP](norm([p.cell_similarity for p in pairs])),
            edgecolor="black", linewidth=0.5)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    for k, pair in enumerate(pairs):
        share = "" if pair.share is None else f" {100 * pair.share:.1f}%"
        ax.text(pair.contribution, k, share, va="center", ha="left", fontsize=8)
    ax.set_xlim(min(0.0, min(values, default=0.0)) * 1.3, max(max(values, default=0.0), 1e-12) * 1.35)
    ax.set_xlabel("contribution T_ij * S_ij", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("top part contributions (share of total)", fontsize=9)


def _title(explanation: Explanation) -> str:
    parts = [f"structural similarity {explanation.similarity:.4f}"]
    if explanation.global_similarity is not None:
        parts.append(f"global cosine {explanation.global_similarity:.4f}")
    if explanation.exact_similarity is not None:
        parts.append(f"exact OT {explanation.exact_similarity:.4f}")
    names = f"{explanation.query_id or 'query'}  vs  {explanation.ref_id or 'reference'}"
    return f"{names}\n" + " | ".join(parts) + f"  (eps {explanation.eps:g}, {explanation.marginals} marginals)"


def plot_matching_flow(
    explanation: Explanation,
    query_image,
    ref_image,
    path: str | os.PathLike,
    *,
    top: int | None = None,
    size: tuple[int, int] = FLOW_SIZE,
    dpi: int = 100,
    parts: PartMarks | None = None,
    resize_ratio: float = DEFAULT_RESIZE_RATIO,
) -> pathlib.Path:
    """Write the matching-flow figure of ``explanation`` (see the module docstring) as a ``size`` PNG.

    Args:
        explanation: from :func:`diml.explain.explain_pair`.
        query_image, ref_image: the two images: PIL images (shown as the model saw them: resize the short side to
            ``resize_ratio`` x the crop, centre crop; pass the run's ``data.augmentation.eval_resize_ratio``) or
            ``(H, W, 3)`` arrays of the crop (:func:`~diml.explain.images.display_array`).
        path: the PNG to write.
        top: pairs numbered and shown in the bar chart (default: all of ``explanation.top_pairs``).
        size: ``(width, height)`` in pixels; dpi: resolution (fonts scale with it).
        parts: part keypoints to draw on the flow (:class:`PartMarks`), or None.
        resize_ratio: the eval transform's resize ratio (for PIL images).

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    query_image, ref_image = (display_array(image, resize_ratio=resize_ratio) for image in (query_image, ref_image))
    fig = figure_of_size(size, dpi)
    spec = fig.add_gridspec(2, 3, height_ratios=[1.3, 1.0], left=0.03, right=0.97, top=0.9, bottom=0.07,
                            wspace=0.45, hspace=0.15)
    flow_ax = fig.add_subplot(spec[0, :])
    draw_flow(flow_ax, explanation, query_image, ref_image, top=top)
    if parts is not None:
        draw_parts(flow_ax, parts)
    flow_ax.set_xlim(0.0, 2.0 + GAP)
    flow_ax.set_ylim(1.0, 0.0)
    flow_ax.set_aspect("equal")
    flow_ax.axis("off")
    colour_axes = fig.add_axes((0.9, 0.53, 0.012, 0.33))
    fig.colorbar(cm.ScalarMappable(norm=similarity_norm(explanation), cmap=SIM_CMAP), cax=colour_axes,
                 label="cell similarity S_ij")
    weights = np.concatenate([explanation.query_weights, explanation.ref_weights])
    for col, (image, heat, name) in enumerate([(query_image, explanation.query_heatmap, "query cell weights a"),
                                               (ref_image, explanation.ref_heatmap, "reference cell weights b")]):
        ax = fig.add_subplot(spec[1, col])
        draw_image(ax, display_array(image), explanation.grid, heat=heat, values=explanation.grid <= 8,
                   heat_range=(float(weights.min()), float(weights.max())))
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(1.0, 0.0)
        ax.axis("off")
        ax.set_title(f"{name} (%, shared colour scale)", fontsize=9)
    _draw_contributions(fig.add_subplot(spec[1, 2]), explanation, top)
    fig.suptitle(_title(explanation), fontsize=10)
    return save_png(fig, path)
