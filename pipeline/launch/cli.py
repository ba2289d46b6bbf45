"""``python -m pipeline.launch SPEC [--dry-run] [--resume] [--address ADDR] [--set path=value ...]``

Validates the spec (every problem reported together, exit status 2, before Ray or MLflow start), then runs one Ray
Tune trial per grid point, each a Ray Train ``TorchTrainer`` with the spec's workers, tracked in MLflow under one
parent run, and prints the results table at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
import time

from pipeline import tracking
from pipeline.launch import capacity
from pipeline.launch.study import SpecError, Study, build_study, load_spec_file
from pipeline.storage import check_writable, is_local, local_path

EXIT_SPEC = 2
EXIT_TRIALS_FAILED = 1
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by SIGINT (143 after a SIGTERM: 128 + the signal)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.launch", description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="experiment spec (YAML), e.g. specs/quickstart.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the trials and resource plan, start nothing")
    parser.add_argument("--resume", action="store_true", help="finish an interrupted launch of the same spec")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                        help="override a spec field, e.g. --set optimizer.lr=1e-4 (repeatable)")
    parser.add_argument("--assume-resources", default=None, metavar="CPU=64,GPU=8",
                        help="with --dry-run: plan for this fixed-size cluster instead of the current machine")
    parser.add_argument("--assume-cluster", default=None, metavar="CLUSTER.yaml",
                        help="with --dry-run: plan for this cluster launcher YAML or KubeRay RayCluster, as it "
                             "starts and grown to its largest (e.g. clusters/aws-gpu.yaml)")
    parser.add_argument("--num-cpus", type=float, default=None,
                        help="local mode: logical CPUs Ray may schedule (default: enough for the spec)")
    return parser.parse_args(argv)


def launch_id(study: Study) -> str:
    """Stable id of a launch (spec content after --set): a resumed launch finds its parent run by it."""
    digest = hashlib.sha1(json.dumps(study.raw, sort_keys=True, default=str).encode()).hexdigest()
    return f"{study.name}-{digest[:10]}"


def storage_path(study: Study) -> str:
    configured = study.launch.launch.storage_path
    if configured and "://" in configured:
        return configured
    return str(pathlib.Path(configured or "ray_results").expanduser().resolve())


def runtime_problems(study: Study, uri: str) -> list[str]:
    """What no spec check sees but would fail the launch after Ray started: a tracking store that cannot be reached
    or written, a results folder or artifact location that cannot be written (tried with a probe file; object
    stores are left alone: no credentials to try them with)."""
    problems = []
    artifacts = study.launch.tracking.artifact_location or tracking.default_artifact_location(uri)
    for field, check, value in (("tracking.uri", tracking.check_reachable, uri),
                                ("tracking.artifact_location", tracking.check_artifact_location, artifacts)):
        try:
            check(value)
        except tracking.TrackingError as exc:
            problems.append(f"{field}: {exc}")
    storage = storage_path(study)
    if is_local(storage):
        try:
            check_writable(local_path(storage))
        except OSError as exc:
            problems.append(f"launch.storage_path: cannot write to {local_path(storage)} ({exc.strerror or exc}): "
                            "set launch.storage_path to a writable folder (an absolute path, or s3://..., gs://...)")
    return problems


def main(argv: list[str] | None = None) -> int:
    from pipeline.launch.tune_run import QUIET_ENV

    for key, value in QUIET_ENV.items():  # before Ray is imported: some are read at import time
        os.environ.setdefault(key, value)
    args = parse_args(argv)
    try:
        study = build_study(load_spec_file(args.spec), source=args.spec, sets=args.sets,
                            check_paths=not args.dry_run)
        resources = (capacity.assumed_cluster(args.assume_cluster) if args.assume_cluster else
                     capacity.assumed_resources(args.assume_resources) if args.assume_resources else None)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SPEC
    if args.dry_run:
        print(capacity.describe(study, resources or capacity.local_resources(args.address)))
        return 0
    problems = capacity.resource_problems(study, resources or capacity.local_resources(args.address),
                                          local=not (args.address or os.environ.get("RAY_ADDRESS")))
    uri = tracking.resolve_tracking_uri(study.launch.tracking.uri)
    problems += runtime_problems(study, uri)
    if problems:
        print(f"error: {SpecError(args.spec, problems)}", file=sys.stderr)
        return EXIT_SPEC
    from pipeline.launch.tune_run import run_study
    from pipeline.launch.tune_state import DamagedState

    started = time.perf_counter()
    try:
        outcome = run_study(study, uri=uri, launch=launch_id(study), storage=storage_path(study), resume=args.resume,
                           address=args.address, num_cpus=args.num_cpus)
    except DamagedState as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SPEC
    print(outcome.render())
    print(f"\nwall time: {time.perf_counter() - started:.1f} s")
    if outcome.tracking_error is None:
        print(tracking.ui_hint(uri, study.launch.tracking.experiment or study.name))
    if outcome.interrupted:
        return 128 + outcome.stop_signal if outcome.stop_signal else EXIT_INTERRUPTED
    return 0 if outcome.all_ok else EXIT_TRIALS_FAILED


def entry() -> None:
    sys.exit(main())
