"""``python -m pipeline.explain --run-id ID [--tracking-uri URI] --query IMG --gallery DIR|IMG --out DIR [...]``

``python -m diml.explain`` on the model of an MLflow run: downloads the run's artifact ``checkpoint/best_model.pt``
(logged by the trial when ``tracking.log_checkpoint`` is on) and explains the query with it. The other options are
those of ``python -m diml.explain`` without ``--checkpoint``. The tracking URI defaults to ``$MLFLOW_TRACKING_URI``,
else ``sqlite:///<cwd>/mlflow.db``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
from collections.abc import Sequence

from diml.explain.cli import add_arguments, execute
from pipeline import tracking

PROG = "python -m pipeline.explain"
ARTIFACT = tracking.CHECKPOINT_ARTIFACT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("--run-id", required=True, help="MLflow run (a trial's child run) holding the checkpoint")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    return add_arguments(parser, checkpoint=False)


def download_checkpoint(uri: str, run_id: str, folder: str | pathlib.Path) -> pathlib.Path:
    """Download ``checkpoint/best_model.pt`` of run ``run_id`` from the store at ``uri`` into ``folder``."""
    from mlflow.exceptions import MlflowException

    client = tracking.client(uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise ValueError(f"run {run_id} is not in the MLflow store {uri}; pass the run id of a trial "
                         "(and --tracking-uri if the store is elsewhere)") from None
    try:
        path = client.download_artifacts(run_id, ARTIFACT, dst_path=str(folder))
    except (MlflowException, OSError):
        raise ValueError(f"run {run_id} in {uri} has no artifact {ARTIFACT}; launch with tracking.log_checkpoint "
                         "enabled, or pass a checkpoint file to python -m diml.explain --checkpoint") from None
    return pathlib.Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 after printing a one-line error)."""
    args = build_parser().parse_args(argv)
    uri = tracking.resolve_tracking_uri(args.tracking_uri, explicit=True)
    with tempfile.TemporaryDirectory(prefix="diml-explain-") as folder:
        try:
            args.checkpoint = str(download_checkpoint(uri, args.run_id, folder))
        except (ValueError, tracking.TrackingError) as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return 2
        return execute(args)


if __name__ == "__main__":
    sys.exit(main())
