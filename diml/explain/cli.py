"""``python -m diml.explain``: explain a query's retrieval in a gallery with a trained checkpoint.

Writes to ``--out``: ``retrieval.png`` (the query's top results before and after DIML re-ranking),
``flow_01.png, ...`` (the matching flow of each top result after re-ranking), ``explanation_01.json, ...`` (their
explanations) and ``results.json`` (both rankings with their scores). Bad paths and checkpoints of another
architecture end with a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

import torch

from diml.explain.flow import plot_matching_flow
from diml.explain.images import embed_images, list_images, open_image
from diml.explain.panel import plot_retrieval_panel
from diml.explain.retrieval import RankedItem, rank_query
from diml.models.checkpoint import eval_resize_ratio, load_checkpoint
from diml.ot import OTOptions
from diml.options import MARGINAL_MODES

PROG = "python -m diml.explain"


def add_arguments(parser: argparse.ArgumentParser, *, checkpoint: bool = True) -> argparse.ArgumentParser:
    """Add the CLI options to ``parser`` (``checkpoint=False`` leaves out ``--checkpoint``, for front ends that
    fetch the checkpoint themselves, e.g. ``python -m pipeline.explain --run-id``)."""
    if checkpoint:
        parser.add_argument("--checkpoint", required=True, help="checkpoint written by the pipeline (best_model.pt)")
    parser.add_argument("--query", required=True, help="the query image")
    parser.add_argument("--gallery", required=True, help="an image, or a folder searched recursively for images")
    parser.add_argument("--out", required=True, help="folder for the figures and JSON (created)")
    parser.add_argument("--top", type=int, default=5, help="results shown per ranking and pairs per explanation")
    parser.add_argument("--depth", type=int, default=100, help="global candidates re-ranked by DIML")
    parser.add_argument("--image-size", type=int, default=None, help="model input size (default: the checkpoint's)")
    parser.add_argument("--eval-resize-ratio", type=float, default=None,
                        help="the eval transform resizes the short side to ratio x the input size before the centre "
                             "crop (default: the checkpoint's; 256/224 for checkpoints that do not record it)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--eps", type=float, default=OTOptions.eps, help="entropic regularisation of the matching")
    parser.add_argument("--marginals", default=OTOptions.marginals, choices=MARGINAL_MODES)
    parser.add_argument("--exact", action="store_true", help="add the unregularised plan (POT ot.emd)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0]))


def _gallery(query: pathlib.Path, gallery: str) -> list[pathlib.Path]:
    files = [p for p in list_images(gallery) if p.resolve() != query.resolve()]
    if not files:
        raise ValueError(f"gallery {gallery} holds no image other than the query; add images to compare with")
    return files


def _record(item: RankedItem) -> dict:
    return {"image_id": item.explanation.ref_id, "global_rank": item.global_rank, "global_score": item.global_score,
            "structural_score": item.structural_score, "final_score": item.final_score}


def run(args: argparse.Namespace, loaded: tuple[torch.nn.Module, dict] | None = None) -> list[pathlib.Path]:
    """Run the CLI on parsed arguments; returns the written files.

    ``loaded``: ``(model, model_config)`` already loaded by a front end (e.g. an MLflow model loaded by
    ``python -m pipeline.explain``) instead of ``args.checkpoint``; ``model(images) -> Embeddings``.
    """
    if args.top < 1 or args.depth < 1:
        raise ValueError(f"--top and --depth must be >= 1, got {args.top} and {args.depth}")
    model, config = loaded if loaded is not None else load_checkpoint(args.checkpoint, device=args.device)
    image_size = args.image_size or config["image_size"]
    ratio = getattr(args, "eval_resize_ratio", None)
    ratio = eval_resize_ratio(config) if ratio is None else ratio
    query_path = pathlib.Path(args.query)
    query = open_image(query_path)
    paths = _gallery(query_path, args.gallery)
    root = pathlib.Path(args.gallery) if pathlib.Path(args.gallery).is_dir() else pathlib.Path(args.gallery).parent
    images = [query] + [open_image(p) for p in paths]
    ids = [str(query_path)] + [str(p.relative_to(root)) for p in paths]
    glob, local = embed_images(model, images, image_size=image_size, resize_ratio=ratio, device=args.device,
                               progress=True)
    ot = OTOptions(eps=args.eps, marginals=args.marginals)
    ranking = rank_query(glob, local, 0, grid=config["grid"], top=args.top, depth=args.depth, ot=ot, ids=ids,
                         pairs=args.top, exact=args.exact, device=args.device)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_retrieval_panel(ranking, query, images.__getitem__, out / "retrieval.png", resize_ratio=ratio)]
    for rank, item in enumerate(ranking.after, start=1):
        written.append(plot_matching_flow(item.explanation, query, images[item.index], out / f"flow_{rank:02d}.png",
                                          resize_ratio=ratio))
        path = out / f"explanation_{rank:02d}.json"
        path.write_text(item.explanation.to_json(indent=1))
        written.append(path)
    summary = {"checkpoint": str(getattr(args, "checkpoint", None) or getattr(args, "model_uri", None)), "query": str(query_path), "gallery": str(args.gallery),
               "model_config": config, "image_size": image_size, "eval_resize_ratio": ratio, "depth": ranking.depth,
               "eps": args.eps, "marginals": args.marginals, "before": [_record(i) for i in ranking.before],
               "after": [_record(i) for i in ranking.after]}
    results = out / "results.json"
    results.write_text(json.dumps(summary, indent=1))
    return written + [results]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 after printing a one-line error)."""
    return execute(build_parser().parse_args(argv))


def execute(args: argparse.Namespace, loaded: tuple[torch.nn.Module, dict] | None = None) -> int:
    """:func:`run` with the CLI's reporting: the written paths on stdout, or a one-line error and status 2."""
    try:
        written = run(args, loaded)
    except (FileNotFoundError, ValueError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
