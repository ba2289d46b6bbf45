"""Dry-run planning: trial table, resource needs and concurrency, computed without starting Ray."""

import pytest

from pipeline.launch.study import SpecError, build_study
from pipeline.launch.cli import main as launch_main
from pipeline.launch.capacity import Demand, Resources, assumed_resources, concurrency, describe, resource_problems

BASE = {"name": "p", "data": {"dataset": "synthetic", "image_size": 32}, "model": {"backbone": "resnet18"},
        "batch": {"size": 8, "images_per_class": 2},
        "resources": {"workers_per_trial": 2, "use_gpu": True, "gpus_per_worker": 1, "cpus_per_worker": 4},
        "grid": {"loss.name": ["margin", "multisimilarity", "contrastive"], "seed": [0, 1]}}


def test_demand_counts_driver_share_and_workers():
    study = build_study(BASE)
    need = Demand.of(study.trials[0].spec, study.launch.launch)
    assert (need.cpus, need.gpus, need.workers) == (0.01 + 2 * 4, 2.0, 2)
    assert need.per_worker == {"CPU": 4.0, "GPU": 1.0}
    assert need.driver == {"CPU": 0.01, "memory": 1400 * 1024**2}  # launch.driver_memory_mb default


def test_concurrency_is_limited_by_the_scarcest_resource_and_the_spec():
    study = build_study(BASE)
    assert concurrency(study, Resources(cpus=64, gpus=8, where="x")) == 4      # 8 GPUs / 2 per trial
    assert concurrency(study, Resources(cpus=20, gpus=8, where="x")) == 2      # 20 CPUs / 8.01 per trial
    capped = build_study(BASE, sets=["launch.max_concurrent_trials=1"])
    assert concurrency(capped, Resources(cpus=64, gpus=8, where="x")) == 1
    assert concurrency(study, Resources(cpus=64, gpus=1, where="x")) == 0


def test_describe_lists_every_trial_and_the_schedule():
    text = describe(build_study(BASE), assumed_resources("CPU=64,GPU=8"))
    lines = text.splitlines()
    assert lines[0].split() == ["#", "trial", "loss.name", "seed", "workers", "CPU", "GPU", "epochs"]
    rows = [line for line in lines[2:] if line[:1].isdigit()]
    assert len(rows) == 6
    assert rows[1].split()[:4] == ["1", "margin_1", "margin", "1"]
    assert "trials: 6" in text
    assert "at most 4 trial(s) run at once; about 2 wave(s)" in text
    assert "all trials at once would need 48.06 CPU, 12 GPU" in text


def test_assumed_resources_parsing():
    assert assumed_resources("CPU=8, GPU=2") == Resources(8.0, 2.0, "assumed cluster (CPU=8, GPU=2)")
    with pytest.raises(SpecError, match="expected CPU=<n>,GPU=<n>"):
        assumed_resources("TPU=4")


def test_gpu_trials_are_refused_on_a_local_machine_without_gpus():
    study = build_study(BASE)
    problems = resource_problems(study, Resources(cpus=2, gpus=0, where="this machine"), local=True)
    assert len(problems) == 6 and "need 2 GPU(s) but this machine has 0" in problems[0]
    assert resource_problems(study, Resources(cpus=2, gpus=0, where="cluster"), local=False) == []


def test_dry_run_cli_prints_plan_and_starts_nothing(tmp_path, capsys, monkeypatch):
    import ray
    import yaml

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(BASE))

    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(ray, "init", refuse)
    assert launch_main([str(spec), "--dry-run", "--assume-resources", "CPU=64,GPU=8"]) == 0
    out = capsys.readouterr().out
    assert "trials: 6" in out and "at most 4 trial(s) run at once" in out



def test_autoscaling_cluster_trusts_the_spec_limit():
    study = build_study(BASE, sets=["launch.max_concurrent_trials=5"])
    empty = Resources(cpus=8, gpus=0, where="cluster")
    assert concurrency(study, empty) == 0
    assert concurrency(study, empty, autoscaling=True) == 5


def test_search_space_becomes_tune_domains_and_combines_with_the_grid():
    from ray.tune.search.sample import Categorical, Float, Integer

    from pipeline.launch.tune_run import _param_space

    raw = {**BASE, "data": {**BASE["data"], "val_fraction": 0.25},  # ASHA selects on a validation split
           "search": {"space": {"optimizer.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
                                        "loss.params.margin": {"type": "choice", "values": [0.1, 0.2]},
                                        "batch.batches_per_epoch": {"type": "randint", "low": 1, "high": 4}},
                              "num_samples": 3, "scheduler": {"name": "asha", "grace_period": 1}}}
    study = build_study(raw)
    space = _param_space(study)
    assert space["trial"] == {"grid_search": [t.label for t in study.trials]}
    assert isinstance(space["optimizer__lr"], Float) and space["optimizer__lr"].lower == 1e-5
    assert isinstance(space["loss__params__margin"], Categorical)
    assert isinstance(space["batch__batches_per_epoch"], Integer)
    assert "trials: 18 (6 grid points x 3 search samples)" in describe(study, assumed_resources("CPU=64,GPU=8"))


def test_sampled_values_fill_the_trial_spec():
    from pipeline.specs import RunSpec
    from pipeline.trial.driver import _decode_search, apply_search

    spec = build_study(BASE).trials[0].spec.model_dump(mode="json")
    filled = RunSpec.model_validate(apply_search(spec, _decode_search({"optimizer__lr": 3e-4,
                                                                       "loss__params__margin": 0.1})))
    assert filled.optimizer.lr == 3e-4 and filled.loss.params == {"margin": 0.1}


def test_asha_max_t_comes_from_the_longest_trial_not_the_first(tmp_path):
    from pipeline.launch.tune_run import _tuner
    from pipeline.specs import TrialLaunch

    raw = {**BASE, "epochs": 2, "grid": {"seed": [0, 1]}, "data": {**BASE["data"], "val_fraction": 0.25},
           "overrides": [{"when": {"seed": 1}, "set": {"epochs": 7}}],
           "search": {"space": {"optimizer.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}},
                      "scheduler": {"name": "asha"}}}
    study = build_study(raw)
    assert [t.spec.epochs for t in study.trials] == [2, 7]
    launch = TrialLaunch(tracking_uri=None, experiment_id=None, parent_run_id=None, storage_path=str(tmp_path))
    tuner = _tuner(study, launch, "asha", str(tmp_path), Resources(cpus=64, gpus=8, where="x"), autoscaling=False)
    assert tuner._local_tuner._tune_config.scheduler._max_t == 8  # a trial reports once per epoch, plus one


# ------------------------------------------------------------------------------- a cluster that can grow
def _limits(max_workers: int = 3):
    from pipeline.launch import autoscaler

    return autoscaler.from_autoscaling_config(
        {"head_node_type": "head", "available_node_types": {
            "head": {"resources": {"CPU": 4}, "max_workers": 0},
            "gpu4": {"resources": {"CPU": 32, "GPU": 4}, "min_workers": 0, "max_workers": max_workers}}}, "cfg.yaml")


def test_on_a_cluster_that_can_grow_tune_runs_what_fits_it_at_its_largest():
    study = build_study(BASE)  # 6 trials of 2 workers x (4 CPU, 1 GPU)
    head_only = Resources(cpus=4, gpus=0, where="cluster", nodes=({"CPU": 4.0, "memory": 20e9},), limits=_limits(2),
                          limits_note="cfg.yaml")
    assert concurrency(study, head_only) == 0                           # what is up now holds none
    assert concurrency(study, head_only, autoscaling=True) == 4          # 2 nodes x 4 GPUs / 2 GPUs per trial
    bigger = Resources(4, 0, "cluster", ({"CPU": 4.0},), _limits(10), "cfg.yaml")
    assert concurrency(study, bigger, autoscaling=True) == 6             # 20 trials fit: the 6 trials bound it
    capped = build_study(BASE, sets=["launch.max_concurrent_trials=3"])
    assert concurrency(capped, bigger, autoscaling=True) == 3            # the spec's cap stays a cap
    text = describe(study, head_only)
    assert "now: no trial fits" in text
    assert "grown to its largest (cfg.yaml: 68 CPU, 8 GPU): at most 4 trial(s) run at once; about 2 wave(s)" in text
    assert "the launcher lets Tune start 4 trial(s) at once" in text


def test_driver_memory_bounds_the_trials_a_node_holds():
    study = build_study({**BASE, "resources": {"workers_per_trial": 1, "cpus_per_worker": 1},
                         "batch": {"size": 8, "images_per_class": 2}})
    node = {"CPU": 64.0, "memory": 5 * 1400 * 1024**2}
    assert concurrency(study, Resources(64, 0, "x", (node,))) == 5       # 64 CPUs, but memory for 5 drivers
    unreserved = build_study({**BASE, "resources": {"workers_per_trial": 1, "cpus_per_worker": 1},
                              "batch": {"size": 8, "images_per_class": 2}}, sets=["launch.driver_memory_mb=0"])
    assert concurrency(unreserved, Resources(64, 0, "x", (node,))) == 6  # the 6 trials


def test_trials_that_never_fit_even_the_largest_cluster_are_refused():
    study = build_study(BASE, sets=["resources.workers_per_trial=2", "resources.gpus_per_worker=8"])
    grown = Resources(4, 0, "cluster", ({"CPU": 4.0},), _limits(5), "cfg.yaml")
    problems = resource_problems(study, grown, local=False)
    assert len(problems) == 6 and "never fit the cluster, even grown to its largest (cfg.yaml)" in problems[0]
    assert resource_problems(build_study(BASE), grown, local=False) == []


def test_dry_run_assume_cluster_plans_the_full_grid_on_the_aws_config(capsys, monkeypatch, tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    for name in ("CUB_200_2011", "cars196", "Stanford_Online_Products"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("DIML_DATA", str(tmp_path))
    assert launch_main([str(root / "specs/full_grid.yaml"), "--dry-run",
                        "--assume-cluster", str(root / "clusters/aws-gpu.yaml")]) == 0
    out = capsys.readouterr().out
    assert "trials: 540" in out and "now: no trial fits" in out  # the head alone: no GPU
    # 4 x 8 + 16 x 1 GPUs at most, one GPU per trial: 48 at once, ceil(540 / 48) = 12 waves
    assert "at most 48 trial(s) run at once; about 12 wave(s)" in out
    assert "the launcher lets Tune start 48 trial(s) at once" in out
