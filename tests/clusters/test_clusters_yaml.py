"""Every cluster configuration under clusters/ validates offline, is complete but for its documented DIML_* values,
and fits the grid it is for; broken configurations are rejected by the same validators."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTERS = REPO / "clusters"


def _load_clusterconf():
    spec = importlib.util.spec_from_file_location("clusterconf", CLUSTERS / "clusterconf.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["clusterconf"] = module
    spec.loader.exec_module(module)
    return module


cc = _load_clusterconf()
ALL_YAML = sorted(p for p in CLUSTERS.rglob("*") if p.suffix in (".yaml", ".yml"))
LAUNCHER = [p for p in ALL_YAML if any(cc.is_launcher_config(d) for d in cc.load_documents(p))]
KUBERAY = [p for p in ALL_YAML if any(cc.is_kuberay(d) for d in cc.load_documents(p))]
CLOUD = [p for p in LAUNCHER if cc.load_documents(p)[0]["provider"]["type"] != "local"]
ids = lambda paths: [str(p.relative_to(CLUSTERS)) for p in paths]  # noqa: E731


def rendered(path: Path) -> dict:
    """The config with stand-ins for its required values, Ray's defaults merged, validated (check_file)."""
    return cc.check_file(path)[0]


def commands(config: dict, *keys: str) -> list[str]:
    keys = keys or cc.COMMAND_KEYS
    return [c for key in keys for c in config.get(key, [])]


# ------------------------------------------------------------------------------------------------ what is there
def test_every_yaml_under_clusters_is_a_launcher_config_or_a_kuberay_manifest():
    assert {p.name for p in LAUNCHER} >= {"aws-gpu.yaml", "gcp-gpu.yaml", "onprem.yaml"}
    assert {p.name for p in KUBERAY} == {"raycluster.yaml", "rayjob.yaml"}
    assert set(ALL_YAML) == set(LAUNCHER) | set(KUBERAY)


def test_the_private_ray_api_the_validation_relies_on_is_present():
    # Private API of Ray's autoscaler (what `ray up` runs before it talks to a cloud): pinned to ray 2.60.
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    assert ray.__version__.startswith("2.60."), "re-check clusterconf.prepare() against this Ray version"
    assert callable(prepare_config) and callable(validate_config)
    assert cc.ray_schema()["title"] == "Ray AutoScaler"


# ------------------------------------------------------------------------------------------- launcher configs
@pytest.mark.parametrize("path", LAUNCHER, ids=ids(LAUNCHER))
def test_launcher_template_validates_against_rays_schema_as_written(path):
    jsonschema.validate(cc.load_documents(path)[0], cc.ray_schema())


@pytest.mark.parametrize("path", LAUNCHER, ids=ids(LAUNCHER))
def test_launcher_config_passes_prepare_config_validate_config_and_our_checks(path):
    config = rendered(path)
    prepared = cc.prepare(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert not re.search(r"\$\{DIML_", json.dumps(config)), "a value was left unrendered"


@pytest.mark.parametrize("path", LAUNCHER, ids=ids(LAUNCHER))
def test_every_node_runs_ray_with_token_auth_and_the_token_is_shipped(path):
    config = rendered(path)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = commands(config, "head_start_ray_commands", "worker_start_ray_commands")
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    # ~/.diml/env (node-setup.sh) exports RAY_AUTH_MODE=token; every Ray command sources it first.
    assert all(c.startswith(". ~/.diml/env && ") for c in starts), starts
    assert "export RAY_AUTH_MODE=token" in (CLUSTERS / "scripts/node-setup.sh").read_text()
    setups = commands(config, "head_setup_commands", "worker_setup_commands")
    assert sum("node-setup.sh --role head" in c for c in setups) == 1
    assert sum("node-setup.sh --role worker" in c for c in setups) == 1


@pytest.mark.parametrize("path", LAUNCHER, ids=ids(LAUNCHER))
def test_commands_and_file_mounts_reference_real_files_of_the_repo(path):
    config = rendered(path)
    mounts = config["file_mounts"]
    for remote, local in mounts.items():
        if not local.startswith("~"):
            assert Path(local).is_absolute() and Path(local).exists(), (remote, local)
    referenced = set(re.findall(r"~/diml/([\w./-]+)", " ".join(commands(config))))
    assert referenced >= {"clusters/scripts/node-setup.sh", "clusters/scripts/mlflow-server.sh"}
    for rel in referenced:
        assert (REPO / rel).is_file(), rel
        assert any(rel == m[len("~/diml/"):] or rel.startswith(m[len("~/diml/"):] + "/")
                   for m in mounts if m.startswith("~/diml/")), f"{rel} is not synced to the nodes"
    # What `pip install -e ~/diml` needs is synced too.
    assert {"~/diml/pyproject.toml", "~/diml/README.md", "~/diml/diml", "~/diml/pipeline"} <= set(mounts)


@pytest.mark.parametrize("path", LAUNCHER, ids=ids(LAUNCHER))
def test_head_runs_an_mlflow_server_on_shared_storage_and_workers_get_the_storage(path):
    config = rendered(path)
    head_start = commands(config, "head_start_ray_commands")
    assert any("mlflow-server.sh start" in c for c in head_start)
    head_setup = " ".join(commands(config, "head_setup_commands"))
    worker_setup = " ".join(commands(config, "worker_setup_commands"))
    for setup in (head_setup, worker_setup):
        storage = re.search(r"--env DIML_STORAGE=(\S+)", setup).group(1)
        assert re.match(r"(s3|gs)://|/", storage), storage  # object storage or an (NFS) absolute path
        assert re.search(r"--env DIML_DATA=\S+", setup)
    assert "--env-optional DIML_MLFLOW_URI=" in head_setup  # an existing server may be used instead


@pytest.mark.parametrize("path", CLOUD, ids=ids(CLOUD))
def test_cloud_configs_autoscale_8_gpu_and_1_gpu_workers_from_a_cpu_head(path):
    config = rendered(path)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpus = sorted(t["resources"]["GPU"] for t in workers.values())
    assert gpus[0] == 1 and gpus[-1] == 8, gpus
    for name, t in workers.items():
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"], name
    assert sum(t.get("min_workers", 0) for t in workers.values()) <= config["max_workers"]
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"] + 2  # bounds are meaningful


def test_onprem_config_is_the_local_provider_with_gpus_from_ray_start():
    config = rendered(CLUSTERS / "onprem.yaml")
    assert config["provider"]["type"] == "local"
    assert "available_node_types" not in config and "min_workers" not in config
    assert config["provider"]["worker_ips"] == ["10.0.0.2", "10.0.0.3"]  # the list item expanded per address
    worker_start = " ".join(commands(config, "worker_start_ray_commands"))
    assert "--num-gpus=$(nvidia-smi --list-gpus" in worker_start
    prepared = cc.prepare(config)  # Ray turns head_ip / worker_ips into its single local node type
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == 2


# ----------------------------------------------------------------------------------------- the launch command
def launch_argv(path: Path) -> tuple[list[str], list[str]]:
    text = cc.load_documents(path)[0]["metadata"]["diml_launch"]
    words = shlex.split(text)
    cut = words.index("--")
    return words[:cut], words[cut + 1:]


@pytest.mark.parametrize("path", LAUNCHER, ids=ids(LAUNCHER))
def test_launch_command_submits_the_full_grid_through_the_job_server(path):
    submit, entry = launch_argv(path)
    assert submit[:3] == ["ray", "job", "submit"] and "--working-dir" in submit
    assert entry[:3] == ["python", "-m", "pipeline.launch"]
    spec = entry[3]
    assert spec == "specs/full_grid.yaml" and (REPO / spec).is_file()
    from pipeline.launch.cli import parse_args

    parse_args(entry[3:])  # the launcher accepts the arguments as written


@pytest.fixture
def dataset_roots(tmp_path, monkeypatch):
    for name in ("CUB_200_2011", "cars196", "Stanford_Online_Products"):
        (tmp_path / "data" / name).mkdir(parents=True)
    monkeypatch.setenv("DIML_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("DIML_STORAGE", "s3://stand-in-bucket/diml/ray")
    return tmp_path / "data"


def full_grid_worker_demand() -> tuple[float, float, float]:
    """(cpus_per_worker, gpus_per_worker, driver_cpus) of the full grid, from the real spec."""
    from pipeline.launch.study import build_study, load_spec_file

    study = build_study(load_spec_file(str(REPO / "specs/full_grid.yaml")), source="specs/full_grid.yaml", sets=[])
    driver_cpus = study.launch.launch.driver_cpus
    resources = {(t.spec.resources.cpus_per_worker, t.spec.resources.gpus_per_worker, driver_cpus)
                 for t in study.trials}
    return max(resources)


@pytest.mark.parametrize("path", CLOUD, ids=ids(CLOUD))
def test_every_gpu_of_every_node_type_can_host_a_full_grid_worker(path, dataset_roots):
    cpus_per_worker, gpus_per_worker, trial_cpus = full_grid_worker_demand()
    config = rendered(path)
    for name, node_type in config["available_node_types"].items():
        res = node_type["resources"]
        if res.get("GPU", 0):
            workers = res["GPU"] / gpus_per_worker
            assert res["CPU"] >= workers * cpus_per_worker + trial_cpus, (
                f"{name}: {res['CPU']} CPUs cannot feed {workers:g} workers of {cpus_per_worker} CPUs: GPUs idle")


def test_launch_command_dry_runs_for_the_largest_aws_cluster(dataset_roots, capsys):
    """The exact entrypoint of the launch command, in the environment the head gives it, passes the launcher's
    checks; at the cluster's full size every GPU runs a trial at once."""
    from pipeline.launch.cli import main

    config = rendered(CLUSTERS / "aws-gpu.yaml")
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    cpus = sum(t["resources"]["CPU"] * t["max_workers"] for t in workers) + \
        config["available_node_types"][config["head_node_type"]]["resources"]["CPU"]
    gpus = sum(t["resources"]["GPU"] * t["max_workers"] for t in workers)
    _, entry = launch_argv(CLUSTERS / "aws-gpu.yaml")
    assert entry[:3] == ["python", "-m", "pipeline.launch"]
    code = main([*entry[3:], "--dry-run", f"--assume-resources=CPU={cpus},GPU={gpus}"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    trials = int(re.search(r"^trials: (\d+)", out.out, re.M).group(1))
    at_once = int(re.search(r"at most (\d+) trial", out.out).group(1))
    _, gpus_per_worker, _ = full_grid_worker_demand()
    assert at_once == min(trials, int(gpus // gpus_per_worker)), out.out[-600:]


# --------------------------------------------------------------------------------------------------- rendering
def test_render_fills_values_makes_mounts_absolute_and_names_every_missing_value(tmp_path):
    values = {"DIML_AWS_AMI": "ami-0abc", "DIML_STORAGE": "s3://my-bucket/diml",
              "DIML_DATA_SOURCE": "s3://my-bucket/datasets", "DIML_IMAGE": "registry.example/diml:1"}
    (config,) = cc.render_file(CLUSTERS / "aws-gpu.yaml", values)
    assert config["provider"]["region"] == "us-west-2"  # default kept
    assert config["available_node_types"]["gpu_8x"]["node_config"]["ImageId"] == "ami-0abc"
    assert "--env DIML_STORAGE=s3://my-bucket/diml" in config["head_setup_commands"][0]
    assert config["file_mounts"]["~/diml/specs"] == str(REPO / "specs")
    assert config["docker"]["image"] == "registry.example/diml:1"

    with pytest.raises(cc.ConfigError) as err:
        cc.render_file(CLUSTERS / "aws-gpu.yaml", {"DIML_STORAGE": "s3://b/d"})
    assert {"DIML_AWS_AMI", "DIML_DATA_SOURCE", "DIML_IMAGE"} <= set(re.findall(r"(DIML_\w+) is required", str(err.value)))

    out = tmp_path / "aws.yaml"
    env = {**os.environ, **values}
    done = subprocess.run([sys.executable, str(CLUSTERS / "clusterconf.py"), "render", str(CLUSTERS / "aws-gpu.yaml"),
                           "-o", str(out), "--set", "DIML_AWS_REGION=eu-west-1"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load(out.read_text())
    assert written["provider"]["region"] == "eu-west-1" and cc.launcher_problems(written) == []
    missing = subprocess.run([sys.executable, str(CLUSTERS / "clusterconf.py"), "render",
                              str(CLUSTERS / "gcp-gpu.yaml")], env={k: v for k, v in os.environ.items()
                                                                     if not k.startswith("DIML_")},
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "DIML_GCP_PROJECT is required" in missing.stderr


# ------------------------------------------------------------------------------------------ rejected configs
def aws() -> dict:
    return cc.absolute_mounts(cc.substitute(cc.load_documents(CLUSTERS / "aws-gpu.yaml")[0],
                                            cc.standin_values(cc.load_documents(CLUSTERS / "aws-gpu.yaml"))))


def onprem() -> dict:
    docs = cc.load_documents(CLUSTERS / "onprem.yaml")
    return cc.absolute_mounts(cc.substitute(docs[0], cc.standin_values(docs)))


def test_the_unbroken_bases_of_the_negative_tests_are_valid():
    assert cc.launcher_problems(aws()) == [] and cc.launcher_problems(onprem()) == []


def _local_with_node_types():
    config = onprem()
    config["available_node_types"] = {"gpu": {"resources": {"GPU": 8}, "node_config": {}}}
    config["head_node_type"] = "gpu"
    return config


def _head_type_unknown():
    config = aws()
    config["head_node_type"] = "no-such-type"
    return config


def _min_above_max():
    config = aws()
    config["available_node_types"]["gpu_1x"]["min_workers"] = 30
    return config


def _without(key):
    def broken():
        config = aws()
        del config[key]
        return config
    return broken


def _with(path, value):
    def broken():
        config = aws()
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return config
    return broken


BROKEN_LAUNCHER = {
    "local provider with available_node_types": (_local_with_node_types, "available_node_types"),
    "local provider with top-level min_workers": (lambda: {**onprem(), "min_workers": 1}, "min_workers"),
    "unknown top-level key": (lambda: {**aws(), "max_worker": 3}, "max_worker"),
    "GPU count as a string": (_with(["available_node_types", "gpu_8x", "resources", "GPU"], "8"), "GPU"),
    "head type not a node type": (_head_type_unknown, "head_node_type"),
    "sum of min_workers above max_workers": (_min_above_max, "min_workers"),
    "a command list left to Ray's defaults": (_without("setup_commands"), "setup_commands"),
    "a file mount whose source is not in the repo": (
        _with(["file_mounts", "~/diml/specs"], "no/such/folder"), "no/such/folder"),
}


@pytest.mark.parametrize("case", list(BROKEN_LAUNCHER), ids=list(BROKEN_LAUNCHER))
def test_broken_launcher_configs_are_rejected(case):
    build, needle = BROKEN_LAUNCHER[case]
    problems = cc.launcher_problems(build())
    assert problems and needle in " ".join(problems), problems


def test_aws_node_configs_are_checked_against_the_ec2_api_model():
    pytest.importorskip("botocore", reason="boto3/botocore not installed: the EC2 RunInstances model is not here")
    typo = aws()
    typo["available_node_types"]["gpu_1x"]["node_config"]["BlockDeviceMapping"] = []
    assert "BlockDeviceMapping" in " ".join(cc.launcher_problems(typo))
    bad_type = aws()
    bad_type["available_node_types"]["gpu_8x"]["node_config"]["InstanceType"] = "p4d.24xlargee"
    assert "is not an EC2 instance type" in " ".join(cc.launcher_problems(bad_type))


# ---------------------------------------------------------------------------------------------------- KubeRay
def kuberay_docs(name: str) -> list[dict]:
    return cc.check_file(CLUSTERS / "kuberay" / name)


def test_raycluster_has_token_auth_a_head_gpu_worker_groups_and_an_mlflow_service():
    docs = kuberay_docs("raycluster.yaml")
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    spec = cluster["spec"]
    assert spec["authOptions"]["mode"] == "token" and spec["rayVersion"].startswith("2.60.")
    assert all(isinstance(v, str) for v in spec["headGroupSpec"]["rayStartParams"].values())
    gpus = sorted(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
                  for g in spec["workerGroupSpecs"])
    assert gpus == [1, 8]
    head_containers = spec["headGroupSpec"]["template"]["spec"]["containers"]
    (mlflow,) = [c for c in head_containers if c.get("command", [])[:2] == ["mlflow", "server"]]
    args = " ".join(mlflow["command"])
    assert "--artifacts-destination=s3://stand-in-bucket/diml/mlflow-artifacts" in args
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in args
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert service["spec"]["selector"] == {"ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": "head"}
    env = {e["name"]: e.get("value") for e in head_containers[0]["env"]}
    assert env["MLFLOW_TRACKING_URI"] == f"http://{service['metadata']['name']}:5000"
    assert {"DIML_STORAGE", "DIML_DATA"} <= set(env)
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    volumes = spec["headGroupSpec"]["template"]["spec"]["volumes"]
    assert {"name": "mlflow-db", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}} in volumes


def test_kuberay_gpu_pods_have_the_cpus_a_full_grid_worker_needs(dataset_roots):
    cpus_per_worker, gpus_per_worker, trial_cpus = full_grid_worker_demand()
    (cluster,) = [d for d in kuberay_docs("raycluster.yaml") if d["kind"] == "RayCluster"]
    for group in cluster["spec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        workers = int(limits["nvidia.com/gpu"]) / gpus_per_worker
        assert float(limits["cpu"]) >= workers * cpus_per_worker + trial_cpus, group["groupName"]


def test_rayjob_runs_the_full_grid_on_the_raycluster():
    (job,) = kuberay_docs("rayjob.yaml")
    (cluster,) = [d for d in kuberay_docs("raycluster.yaml") if d["kind"] == "RayCluster"]
    assert job["spec"]["entrypoint"] == "python -m pipeline.launch specs/full_grid.yaml"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == {"working_dir": "/home/ray/diml"}


def test_the_image_holds_what_the_manifests_run():
    dockerfile = (CLUSTERS / "kuberay/Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:2\.60\.\d+-py311-gpu$", dockerfile, re.M)
    assert "WORKDIR /home/ray/diml" in dockerfile
    copied = set(re.findall(r"^COPY --chown=\S+ (.+) \S+$", dockerfile, re.M))
    copied = {w for line in copied for w in line.split()}
    assert copied >= {"pyproject.toml", "README.md", "clusters", "diml", "pipeline", "specs"}
    for doc in kuberay_docs("raycluster.yaml"):
        for path in re.findall(r"/home/ray/diml/([\w./-]+)", json.dumps(doc)):
            assert (REPO / path).exists(), path


BROKEN_KUBERAY = {
    "non-string rayStartParams value": (["spec", "headGroupSpec", "rayStartParams", "num-cpus"], 4, "num-cpus"),
    "GPU group without a GPU limit": (["spec", "workerGroupSpecs", 0, "template", "spec", "containers", 0,
                                       "resources", "limits", "nvidia.com/gpu"], None, "nvidia.com/gpu"),
    "minReplicas above replicas": (["spec", "workerGroupSpecs", 1, "minReplicas"], 3, "minReplicas"),
    "container without image": (["spec", "workerGroupSpecs", 0, "template", "spec", "containers", 0, "image"],
                                None, "image"),
    "old apiVersion": (["apiVersion"], "ray.io/v1alpha1", "apiVersion"),
}


@pytest.mark.parametrize("case", list(BROKEN_KUBERAY), ids=list(BROKEN_KUBERAY))
def test_broken_kuberay_clusters_are_rejected(case):
    path, value, needle = BROKEN_KUBERAY[case]
    (cluster,) = [copy.deepcopy(d) for d in kuberay_docs("raycluster.yaml") if d["kind"] == "RayCluster"]
    node = cluster
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    problems = cc.kuberay_problems(cluster)
    assert problems and needle in " ".join(problems), problems


def test_broken_rayjobs_are_rejected():
    (job,) = kuberay_docs("rayjob.yaml")
    no_entry = copy.deepcopy(job)
    del no_entry["spec"]["entrypoint"]
    assert "entrypoint" in " ".join(cc.kuberay_problems(no_entry))
    (cluster,) = [d for d in kuberay_docs("raycluster.yaml") if d["kind"] == "RayCluster"]
    both = copy.deepcopy(job)
    both["spec"]["rayClusterSpec"] = cluster["spec"]
    assert "exactly one of rayClusterSpec" in " ".join(cc.kuberay_problems(both))
    own = copy.deepcopy(job)
    del own["spec"]["clusterSelector"]
    own["spec"]["rayClusterSpec"] = copy.deepcopy(cluster["spec"])
    assert cc.kuberay_problems(own) == []  # a job with its own cluster is fine...
    own["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"] = {"num-gpus": 8}
    assert "must be a string" in " ".join(cc.kuberay_problems(own))  # ...and its cluster spec is checked too


def test_check_cli_accepts_every_config_and_rejects_a_broken_one(tmp_path):
    done = subprocess.run([sys.executable, str(CLUSTERS / "clusterconf.py"), "check", *map(str, ALL_YAML)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("ok  ") == len(ALL_YAML)
    broken = tmp_path / "broken.yaml"
    broken.write_text((CLUSTERS / "onprem.yaml").read_text().replace(
        "provider:\n", "min_workers: 2\nprovider:\n", 1))
    failed = subprocess.run([sys.executable, str(CLUSTERS / "clusterconf.py"), "check", str(broken)],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "min_workers" in failed.stderr


def test_aws_passrole_policy_lets_the_head_launch_workers_with_their_instance_profile():
    # Ray creates instance profile and role both named ray-autoscaler-v1 for the head (S3 + EC2 access); workers
    # use that profile to write checkpoints to S3, and launching them needs iam:PassRole on the role.
    policy = json.loads((CLUSTERS / "aws-worker-passrole.json").read_text())
    (statement,) = policy["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == "iam:PassRole"
    config = rendered(CLUSTERS / "aws-gpu.yaml")
    profiles = {t["node_config"]["IamInstanceProfile"]["Name"] for n, t in config["available_node_types"].items()
                if n != config["head_node_type"]}
    assert profiles == {"ray-autoscaler-v1"}
    assert statement["Resource"].endswith(":role/ray-autoscaler-v1")
