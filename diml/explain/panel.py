"""The retrieval panel: a query and its top results before and after DIML re-ranking (matplotlib, Agg).

Two sections, "global ranking" and "after DIML re-ranking": the query in the first column, then one column per result
with its global cosine ``g``, its structural similarity ``s`` and, below it, a thumbnail of its matching flow. With
relevance known, a result's frame is green (same class as the query) or red.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping

from matplotlib.patches import Rectangle

from diml.data.transforms import DEFAULT_RESIZE_RATIO
from diml.explain.flow import GAP, draw_flow, draw_image, figure_of_size, save_png, similarity_norm
from diml.explain.images import display_array
from diml.explain.retrieval import QueryRanking, RankedItem

COLUMN_WIDTH = 230
PANEL_HEIGHT = 900
RELEVANT, IRRELEVANT = "#1a9641", "#d7191c"
PITCH = 1.2  # column pitch in image sides
TITLE = 0.45  # room above each image row for its title
THUMB = 1.0 / (2.0 + GAP)  # scale of a flow thumbnail as wide as one image
SECTION = TITLE + 1.0 + 0.06 + THUMB + 0.25


def panel_size(top: int) -> tuple[int, int]:
    """Default ``(width, height)`` in pixels of a panel listing ``top`` results per ranking."""
    return COLUMN_WIDTH * (top + 1), PANEL_HEIGHT


def _result_title(item: RankedItem, rank: int, reranked: bool) -> str:
    moved = f" (global #{item.global_rank})" if reranked and item.global_rank != rank else ""
    return f"#{rank}{moved}\ng {item.global_score:.3f}  s {item.structural_score:.3f}"


def _frame(ax, x: float, y: float, colour: str) -> None:
    ax.add_patch(Rectangle((x, y), 1.0, 1.0, fill=False, edgecolor=colour, linewidth=3))


def plot_retrieval_panel(
    ranking: QueryRanking,
    query_image,
    image_of: Callable[[int], object] | Mapping[int, object],
    path: str | os.PathLike,
    *,
    relevant: Mapping[int, bool] | None = None,
    title: str | None = None,
    size: tuple[int, int] | None = None,
    dpi: int = 100,
    resize_ratio: float = DEFAULT_RESIZE_RATIO,
) -> pathlib.Path:
    """Write the retrieval panel of ``ranking`` as a PNG (all of it drawn in one axes, for speed).

    Args:
        ranking: from :func:`diml.explain.retrieval.rank_query`.
        query_image: the query (PIL image or ``(H, W, 3)`` array).
        image_of: the image of a gallery row (a function or a mapping ``index -> image``).
        path: the PNG to write.
        relevant: ``index -> bool`` (same class as the query) to colour the frames, or None.
        title: figure title (default: the query id and what the scores are).
        size: ``(width, height)`` pixels (default :func:`panel_size` of the number of results); dpi: resolution.
        resize_ratio: the eval transform's resize ratio, for PIL images (see
            :func:`~diml.explain.images.display_array`).

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    load = image_of if callable(image_of) else image_of.__getitem__
    count = max(len(ranking.before), len(ranking.after))
    fig = figure_of_size(size or panel_size(count), dpi)
    ax = fig.add_axes((0.005, 0.0, 0.99, 0.93))
    query = display_array(query_image, resize_ratio=resize_ratio)
    cached: dict[int, object] = {}
    norm = similarity_norm(*(i.explanation for i in ranking.before + ranking.after))  # one scale for all thumbnails
    sections = [("global ranking", ranking.before, False),
                (f"DIML re-ranking (top {ranking.depth})", ranking.after, True)]
    for block, (name, items, reranked) in enumerate(sections):
        y = block * SECTION + TITLE
        draw_image(ax, query, 1, origin=(0.0, y))
        _frame(ax, 0.0, y, "black")
        ax.text(0.5, y - 0.04, f"query\n{name}", ha="center", va="bottom", fontsize=9, fontweight="bold")
        ax.text(0.5, y + 1.06 + THUMB / 2, "matching flow\n(query left; width T,\ncolour S, shared scale)", ha="center",
                va="center", fontsize=7)
        for col, item in enumerate(items, start=1):
            if item.index not in cached:
                cached[item.index] = display_array(load(item.index), resize_ratio=resize_ratio)
            x = col * PITCH
            draw_image(ax, cached[item.index], 1, origin=(x, y))
            flag = None if relevant is None else relevant.get(item.index)
            if flag is not None:
                _frame(ax, x, y, RELEVANT if flag else IRRELEVANT)
            ax.text(x + 0.5, y - 0.04, _result_title(item, col, reranked), ha="center", va="bottom", fontsize=8)
            draw_flow(ax, item.explanation, query, cached[item.index], origin=(x, y + 1.06), scale=THUMB,
                      numbers=False, width=1.5, norm=norm)
    ax.set_xlim(-0.05, count * PITCH + 1.05)
    ax.set_ylim(2 * SECTION, 0.0)
    ax.set_aspect("equal")
    ax.axis("off")
    query_id = next((i.explanation.query_id for i in ranking.before if i.explanation.query_id is not None), None)
    fig.suptitle(title or f"query {query_id if query_id is not None else ranking.query_index}\n"
                 "g = global cosine, s = structural similarity, DIML ranks by g + s", fontsize=10)
    return save_png(fig, path)
