"""Fill in and check the cluster configurations under ``clusters/`` (offline, no cloud credentials).

The configurations are templates: the few values only a user knows (bucket, AMI, project, IPs) are written
``${DIML_NAME}`` (required) or ``${DIML_NAME:-default}`` (optional). Only ``DIML_*`` names are templated; every
other ``$VAR`` is left to the shell on the nodes.

    python clusters/clusterconf.py render clusters/aws-gpu.yaml -o aws.yaml --set DIML_STORAGE=s3://b/diml ...
    python clusters/clusterconf.py check clusters/aws-gpu.yaml clusters/kuberay/raycluster.yaml

``render`` takes values from ``--set NAME=VALUE`` and then from the environment, refuses to write anything while a
required value is missing, turns the relative ``file_mounts`` sources into absolute paths of this checkout (so
``ray up`` works from any folder), validates the result and writes it. A list item that is exactly one variable
(``worker_ips: ["${DIML_WORKER_IPS}"]``) becomes one item per comma-separated value.

``check`` validates templates as they are, with a stand-in value for each required variable:

- Ray cluster-launcher YAMLs: the JSON schema Ray ships (``ray/autoscaler/ray-schema.json``), then Ray's own
  ``prepare_config`` + ``validate_config`` (private API of ray 2.60, the same calls ``ray up`` makes before it
  talks to the cloud), then checks of ours: no command list silently inherited from Ray's provider defaults,
  ``file_mounts`` sources that exist in this checkout, and for AWS each ``node_config`` against botocore's
  EC2 ``RunInstances`` model (when botocore is installed).
- KubeRay manifests (``apiVersion: ray.io/v1``): the fields the KubeRay operator needs (see
  :func:`kuberay_problems`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
VARIABLE = re.compile(r"\$\{(DIML_[A-Z0-9_]+)(?::-([^}]*))?\}")
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")
STANDIN = "stand-in"


class ConfigError(ValueError):
    """A configuration that cannot be used; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}:\n  - " + "\n  - ".join(problems))


# ------------------------------------------------------------------------------------------------- templating
def variables(tree: Any) -> dict[str, str | None]:
    """``{name: default}`` for every ``${DIML_*}`` in the tree; None when some use of it has no default."""
    found: dict[str, str | None] = {}
    required: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)
        elif isinstance(node, str):
            for match in VARIABLE.finditer(node):
                name, default = match.group(1), match.group(2)
                if default is None:
                    required.add(name)
                found.setdefault(name, default)

    visit(tree)
    return {name: None if name in required else default for name, default in found.items()}


def substitute(tree: Any, values: dict[str, str]) -> Any:
    """The tree with every ``${DIML_*}`` replaced; raises :class:`ConfigError` naming every missing value."""
    missing: list[str] = []

    def one(text: str) -> str:
        def repl(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            value = values.get(name)
            if value is None or value == "":
                if default is not None:
                    return default
                if name not in missing:
                    missing.append(name)
                return match.group(0)
            return value

        return VARIABLE.sub(repl, text)

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: visit(value) for key, value in node.items()}
        if isinstance(node, list):
            out = []
            for item in node:
                whole = VARIABLE.fullmatch(item) if isinstance(item, str) else None
                if whole and values.get(whole.group(1)):
                    out += [part.strip() for part in values[whole.group(1)].split(",") if part.strip()]
                else:
                    out.append(visit(item))
            return out
        if isinstance(node, str):
            return one(node)
        return node

    result = visit(tree)
    if missing:
        raise ConfigError("missing values", [f"{name} is required: pass --set {name}=... or export {name}"
                                             for name in missing])
    return result


def standin_values(tree: Any) -> dict[str, str]:
    """A value for every required variable, shaped like the real one, for checking templates."""
    shaped = {"IP": "10.0.0.1", "IPS": "10.0.0.2,10.0.0.3", "AMI": "ami-0123456789abcdef0",
              "STORAGE": "s3://stand-in-bucket/diml", "SOURCE": "s3://stand-in-bucket/datasets",
              "SHARED": "/mnt/stand-in/diml", "KEY": "~/.ssh/stand-in-key", "IMAGE": "registry.example/diml:stand-in"}
    out = {}
    for name, default in variables(tree).items():
        if default is None:
            suffix = name.rsplit("_", 1)[-1]
            out[name] = shaped.get(suffix, f"{STANDIN}-{name.lower().replace('_', '-')}")
    return out


# ----------------------------------------------------------------------------------------- Ray cluster launcher
def is_launcher_config(doc: Any) -> bool:
    return isinstance(doc, dict) and "provider" in doc and "cluster_name" in doc


def ray_schema() -> dict:
    import ray.autoscaler

    with open(Path(ray.autoscaler.__file__).parent / "ray-schema.json") as f:
        return json.load(f)


def launcher_problems(config: dict, *, repo: Path = REPO) -> list[str]:
    """Everything wrong with a (rendered) Ray cluster-launcher config, checked offline."""
    import jsonschema

    problems = [f"schema: {'.'.join(str(p) for p in err.absolute_path) or '<top>'}: {err.message}"
                for err in jsonschema.Draft7Validator(ray_schema()).iter_errors(config)]
    if problems:
        return problems
    try:
        prepared = prepare(config)
    except Exception as exc:  # prepare_config aborts with click exceptions, asserts or ValueErrors
        return [f"ray prepare_config/validate_config: {type(exc).__name__}: {exc}"]
    problems += _inherited_commands(config)
    problems += _file_mount_sources(config, repo)
    if config["provider"]["type"] == "aws":
        problems += _aws_node_configs(prepared)
    return problems


def prepare(config: dict) -> dict:
    """Ray's own ``prepare_config`` then ``validate_config``: what ``ray up`` runs before any cloud call."""
    import logging

    from ray.autoscaler._private.util import prepare_config, validate_config

    # Ray logs notes on the way (file mounts that are files matter only with docker): keep the output to problems.
    quiet = [logging.getLogger(name) for name in ("ray.autoscaler", "ray.autoscaler._private.util",
                                                  "ray.autoscaler._private.docker")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    return prepared


def _inherited_commands(config: dict) -> list[str]:
    # prepare_config merges Ray's provider defaults shallowly: a command list we leave out is taken from them
    # (AWS's installs a nightly Ray wheel), so every list must be spelled out, even when empty.
    return [f"{key} is missing: Ray would run its provider defaults' {key}; write it (an empty list is fine)"
            for key in COMMAND_KEYS if key not in config]


def _file_mount_sources(config: dict, repo: Path) -> list[str]:
    problems = []
    for remote, local in config.get("file_mounts", {}).items():
        if local.startswith("~"):
            continue  # on the user's machine (e.g. ~/.ray/auth_token), created by a documented step
        path = Path(local) if os.path.isabs(local) else repo / local
        if not path.exists():
            problems.append(f"file_mounts[{remote!r}]: source {local!r} does not exist in {repo}")
    return problems


def _aws_node_configs(prepared: dict) -> list[str]:
    try:
        import botocore.session
        import botocore.validate
    except ImportError:
        return []
    model = botocore.session.get_session().get_service_model("ec2")
    shape = model.operation_model("RunInstances").input_shape
    known_types = set(model.shape_for("InstanceType").enum)
    problems = []
    for name, node_type in prepared["available_node_types"].items():
        params = dict(node_type["node_config"], MinCount=1, MaxCount=1)
        params.pop("SubnetIds", None)  # Ray's own key: it picks one and passes SubnetId
        report = botocore.validate.ParamValidator().validate(params, shape).generate_report()
        if report:
            problems.append(f"available_node_types.{name}.node_config (EC2 RunInstances): {report}")
        if params.get("InstanceType") not in known_types:
            problems.append(f"available_node_types.{name}.node_config.InstanceType {params.get('InstanceType')!r} "
                            "is not an EC2 instance type")
    return problems


# ------------------------------------------------------------------------------------------------------ KubeRay
def is_kuberay(doc: Any) -> bool:
    return isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("ray.io/")


def kuberay_problems(doc: dict) -> list[str]:
    """What the KubeRay operator (ray.io/v1) needs of a RayCluster or RayJob manifest."""
    problems: list[str] = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion {doc.get('apiVersion')!r}: use ray.io/v1")
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name or ""):
        problems.append(f"metadata.name {name!r}: a DNS-1123 label is required")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return problems + ["spec is missing"]
    kind = doc.get("kind")
    if kind == "RayCluster":
        problems += _cluster_spec_problems(spec, "spec")
    elif kind == "RayJob":
        if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"].strip():
            problems.append("spec.entrypoint: the command the job runs is required")
        has_cluster, has_selector = "rayClusterSpec" in spec, "clusterSelector" in spec
        if has_cluster == has_selector:
            problems.append("spec: exactly one of rayClusterSpec (a cluster for this job) or clusterSelector "
                            "(an existing RayCluster) is required")
        elif has_cluster:
            problems += _cluster_spec_problems(spec["rayClusterSpec"], "spec.rayClusterSpec")
        elif not isinstance(spec["clusterSelector"], dict) or "ray.io/cluster" not in spec["clusterSelector"]:
            problems.append("spec.clusterSelector: select the cluster with the label ray.io/cluster")
    else:
        problems.append(f"kind {kind!r}: expected RayCluster or RayJob")
    return problems


def _cluster_spec_problems(spec: dict, where: str) -> list[str]:
    problems = []
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        return [f"{where}.headGroupSpec is required"]
    problems += _group_problems(head, f"{where}.headGroupSpec", gpu=False)
    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        return problems + [f"{where}.workerGroupSpecs: at least one worker group is required"]
    names = [g.get("groupName") for g in groups if isinstance(g, dict)]
    if len(set(names)) != len(names):
        problems.append(f"{where}.workerGroupSpecs: groupName values must be unique ({names})")
    for i, group in enumerate(groups):
        at = f"{where}.workerGroupSpecs[{i}]"
        if not isinstance(group, dict):
            problems.append(f"{at} must be a mapping")
            continue
        if not isinstance(group.get("groupName"), str) or not group["groupName"]:
            problems.append(f"{at}.groupName is required")
        counts = {key: group.get(key) for key in ("replicas", "minReplicas", "maxReplicas")}
        bad = [k for k, v in counts.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
        if bad:
            problems.append(f"{at}: {', '.join(bad)} must be non-negative integers")
        elif not counts["minReplicas"] <= counts["replicas"] <= counts["maxReplicas"]:
            problems.append(f"{at}: need minReplicas <= replicas <= maxReplicas, got {counts}")
        problems += _group_problems(group, at, gpu=True)
    return problems


def _group_problems(group: dict, at: str, *, gpu: bool) -> list[str]:
    problems = []
    params = group.get("rayStartParams")
    if not isinstance(params, dict):
        problems.append(f"{at}.rayStartParams is required (a mapping; {{}} is fine)")
    else:
        problems += [f"{at}.rayStartParams.{key}: value {value!r} must be a string (KubeRay passes them to "
                     "`ray start` verbatim and rejects other types)"
                     for key, value in params.items() if not isinstance(value, str)]
    containers = (((group.get("template") or {}).get("spec") or {}).get("containers"))
    if not isinstance(containers, list) or not containers:
        return problems + [f"{at}.template.spec.containers: at least the Ray container is required"]
    ray_container = containers[0]  # KubeRay runs Ray in the first container
    for i, container in enumerate(containers):
        if not container.get("name") or not container.get("image"):
            problems.append(f"{at}.template.spec.containers[{i}]: name and image are required")
    limits = ((ray_container.get("resources") or {}).get("limits") or {})
    if gpu:
        count = limits.get("nvidia.com/gpu")
        if count is None or str(count) in ("", "0"):
            problems.append(f"{at}: the Ray container needs resources.limits['nvidia.com/gpu'] >= 1")
    for key in ("cpu", "memory"):
        if key not in limits:
            problems.append(f"{at}: the Ray container needs resources.limits.{key} (Ray sizes itself from it)")
    return problems


# --------------------------------------------------------------------------------------------------- both kinds
def load_documents(path: Path) -> list[Any]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def document_problems(doc: Any, *, repo: Path = REPO) -> list[str]:
    if is_launcher_config(doc):
        return launcher_problems(doc, repo=repo)
    if is_kuberay(doc):
        return kuberay_problems(doc)
    return []  # plain Kubernetes objects (Service, PersistentVolumeClaim) next to a RayCluster


def check_file(path: Path, values: dict[str, str] | None = None) -> list[Any]:
    """Render ``path`` with ``values`` (stand-ins for what is missing) and validate every document in it."""
    docs = load_documents(path)
    if not any(is_launcher_config(d) or is_kuberay(d) for d in docs):
        raise ConfigError(str(path), ["neither a Ray cluster-launcher config nor a KubeRay manifest"])
    filled = {**standin_values(docs), **(values or {})}
    rendered = [absolute_mounts(d) if is_launcher_config(d) else d for d in substitute(docs, filled)]
    problems = [p for d in rendered for p in document_problems(d)]
    if problems:
        raise ConfigError(str(path), problems)
    return rendered


def absolute_mounts(config: dict, repo: Path = REPO) -> dict:
    """Relative ``file_mounts`` sources are relative to the repository root: make them absolute."""
    config = copy.deepcopy(config)
    config["file_mounts"] = {remote: (local if local.startswith("~") or os.path.isabs(local)
                                      else str(repo / local))
                             for remote, local in config.get("file_mounts", {}).items()}
    return config


def render_file(path: Path, values: dict[str, str]) -> list[Any]:
    docs = load_documents(path)
    rendered = [absolute_mounts(d) if is_launcher_config(d) else d for d in substitute(docs, values)]
    problems = [p for d in rendered for p in document_problems(d)]
    if problems:
        raise ConfigError(str(path), problems)
    return rendered


def _values(sets: list[str]) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if k.startswith("DIML_")}
    for item in sets:
        name, sep, value = item.partition("=")
        if not sep or not VARIABLE.fullmatch(f"${{{name}}}"):
            raise ConfigError("--set", [f"--set {item!r}: expected DIML_NAME=value"])
        values[name] = value
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python clusters/clusterconf.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="fill in the DIML_* values, validate, write the result")
    render.add_argument("template", type=Path)
    render.add_argument("-o", "--output", type=Path, help="where to write (default: standard output)")
    render.add_argument("--set", dest="sets", action="append", default=[], metavar="DIML_NAME=VALUE")
    check = sub.add_parser("check", help="validate templates offline (stand-ins for required values)")
    check.add_argument("templates", type=Path, nargs="+")
    sub.add_parser("variables", help="list each template's DIML_* values").add_argument("templates", type=Path,
                                                                                        nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "render":
            text = yaml.safe_dump_all(render_file(args.template, _values(args.sets)), sort_keys=False, width=10**6)
            if args.output:
                args.output.write_text(text)
                print(f"wrote {args.output} (validated)", file=sys.stderr)
            else:
                sys.stdout.write(text)
        elif args.command == "check":
            for template in args.templates:
                check_file(template)
                print(f"ok  {template}")
        else:
            for template in args.templates:
                for name, default in variables(load_documents(template)).items():
                    print(f"{template}  {name}  " + ("(required)" if default is None else f"default {default!r}"))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
