"""``python -m pipeline.explain --run-id ID [--tracking-uri URI] --query IMG --gallery DIR|IMG --out DIR [...]``

``python -m diml.explain`` on the model of an MLflow run: loads the trial's MLflow model with
``mlflow.pytorch.load_model("runs:/<run id>/model")`` (logged when ``tracking.log_checkpoint`` is on) and explains
the query with it. The other options are those of ``python -m diml.explain`` without ``--checkpoint``. The tracking
URI defaults to ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from diml.explain.cli import add_arguments, execute
from pipeline import logged_model, tracking

PROG = "python -m pipeline.explain"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("--run-id", required=True, help="MLflow run (a trial's child run) holding the model")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    return add_arguments(parser, checkpoint=False)


def load_run_model(uri: str, run_id: str):
    """``(model, model_config)`` of trial run ``run_id`` in the store at ``uri`` (its logged MLflow model)."""
    from mlflow.exceptions import MlflowException

    try:
        tracking.client(uri).get_run(run_id)
    except MlflowException:
        raise ValueError(f"run {run_id} is not in the MLflow store {uri}; pass the run id of a trial "
                         "(and --tracking-uri if the store is elsewhere)") from None
    return logged_model.load_model(uri, run_id)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 after printing a one-line error)."""
    args = build_parser().parse_args(argv)
    uri = tracking.resolve_tracking_uri(args.tracking_uri, explicit=True)
    if args.device != "cpu":
        print(f"{PROG}: error: --device {args.device}: the logged model is an exported CPU graph; use --device cpu",
              file=sys.stderr)
        return 2
    try:
        loaded = load_run_model(uri, args.run_id)
    except (ValueError, tracking.TrackingError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    args.model_uri = f"runs:/{args.run_id}/{logged_model.ARTIFACT}"
    return execute(args, loaded)


if __name__ == "__main__":
    sys.exit(main())
