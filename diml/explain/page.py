"""The ``index.html`` of a trial's explanations: every query's retrieval panel and matching flow on one page.

MLflow's artifact viewer renders an HTML artifact from a ``blob:`` URL in a sandboxed iframe, where relative image
links cannot resolve; so each figure is embedded as a JPEG data URI (a few hundred kB, against about 1 MB for the
PNG) and links to the full-resolution PNG and the JSON, which work when the folder is opened or downloaded.
"""

from __future__ import annotations

import base64
import html
import io
import pathlib
from typing import Any

from PIL import Image

JPEG_QUALITY = 85


def data_uri(path: str | pathlib.Path) -> str:
    """The image file ``path`` as a ``data:image/jpeg;base64,...`` URI (same pixel size, JPEG quality 85)."""
    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _summary(record: dict[str, Any]) -> str:
    def first(items):
        item = items[0]
        mark = "relevant" if item["relevant"] else "not relevant"
        return (f"{html.escape(str(item['image_id']))} ({mark}; g {item['global_score']:.3f}, "
                f"s {item['structural_score']:.3f})")

    return f"top result, global: {first(record['before'])}<br>top result, DIML: {first(record['after'])}"


def _figure(folder: pathlib.Path, name: str, alt: str) -> str:
    return f'<a href="{name}"><img src="{data_uri(folder / name)}" alt="{alt}"></a>'


def index_html(records: list[tuple[str, dict[str, Any]]], settings: dict[str, Any], folder: pathlib.Path) -> str:
    """The page of ``records`` (``(stem, query record)`` pairs whose figures ``<stem>_retrieval.png`` and
    ``<stem>_flow.png`` and data ``<stem>.json`` lie in ``folder``); ``settings`` are listed at the top."""
    rows = []
    for stem, record in records:
        name = html.escape(str(record["query_id"]))
        rows.append(
            f'<section><h2>{stem}: query {name} (class {record["query_label"]})</h2>\n'
            f'<p>{_summary(record)} &middot; <a href="{stem}.json">{stem}.json</a></p>\n'
            f"{_figure(folder, f'{stem}_retrieval.png', f'retrieval panel {stem}')}\n"
            f"{_figure(folder, f'{stem}_flow.png', f'matching flow {stem}')}</section>"
        )
    options = ", ".join(f"{k} = {html.escape(str(v))}" for k, v in settings.items())
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>DIML explanations</title>\n'
        "<style>body{font-family:sans-serif;margin:1em} img{max-width:100%;border:1px solid #ccc;margin:4px 0}"
        " section{margin-bottom:2em}</style></head><body>\n"
        f"<h1>DIML explanations of {len(records)} test queries</h1>\n<p>{options}. Each panel shows the top results "
        "before and after DIML re-ranking (g = global cosine, s = structural similarity; green frame = same class). "
        "Each flow shows the cell matching of the query with its top DIML result: lines by transport mass, coloured "
        "by cell similarity; heat maps are the cell weights. Click a figure for its full-resolution PNG (from the "
        "artifact folder).</p>\n" + "\n".join(rows) + "\n</body></html>\n"
    )
