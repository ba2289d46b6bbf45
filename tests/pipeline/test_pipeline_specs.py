"""Spec validation: a catalogue of malformed specs, each with the message a user sees; grid expansion."""

import pathlib

import pytest
import yaml

from pipeline.launch.study import SpecError, build_study, check_path, load_spec_file
from pipeline.launch.cli import main as launch_main
from pipeline.specs import RunSpec

BASE = {"name": "t", "data": {"dataset": "synthetic", "image_size": 32}, "model": {"backbone": "resnet18"},
        "batch": {"size": 8, "images_per_class": 2}}


def _with(path: str, value):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    node = raw
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return raw


CATALOGUE = [
    ("unknown top-level key", _with("epoch", 3), "'epoch' is not a spec field; allowed under the top level"),
    ("unknown nested key", _with("model.backbon", "resnet18"), "'backbon' is not a spec field; allowed under model"),
    ("wrong type", _with("epochs", "two"), "epochs: Input should be a valid integer"),
    ("out of range", _with("epochs", 0), "epochs: Input should be greater than or equal to 1 (got 0)"),
    ("batch not divisible by M", _with("batch", {"size": 9, "images_per_class": 2}),
     "batch.size 9 is not divisible by batch.images_per_class 2"),
    ("batch does not split over workers", _with("resources", {"workers_per_trial": 3}),
     "must split into resources.workers_per_trial 3 equal batches"),
    ("unknown loss", _with("loss", {"name": "hinge-ish"}), "loss.name: unknown loss 'hinge-ish'; allowed: "),
    ("unknown backbone", _with("model.backbone", "resnet7"), "model.backbone: unknown backbone 'resnet7'; allowed:"),
    ("input smaller than the backbone takes", _with("data.image_size", 16),
     "data.image_size 16 is too small for model.backbone resnet18 (its feature map would be empty): set "
     "data.image_size >= 32"),
    ("input smaller than inception takes", _with("model.backbone", "inception_v3"),
     "data.image_size 32 is too small for model.backbone inception_v3"),
    ("unknown loss hyperparameter", _with("loss", {"name": "margin", "params": {"betta": 1.0}}),
     "loss (margin, similarity global): "),
    ("proxy loss cannot be structural", _with("loss", {"name": "proxynca", "similarity": "diml"}),
     "loss (proxynca, similarity diml): "),
    ("bad similarity", _with("loss", {"name": "margin", "similarity": "structural"}),
     "loss.similarity: Input should be 'global' or 'diml' (got 'structural')"),
    ("unknown dataset", _with("data.dataset", "imagenet"), "data.dataset: Input should be 'synthetic', 'cub200'"),
    ("root required", _with("data.dataset", "cub200"), "data.root is required for dataset 'cub200'"),
    ("root missing", _with("data", {"dataset": "cars196", "root": "/nonexistent/cars"}),
     "data.root '/nonexistent/cars' does not exist"),
    ("gpu without gpus", _with("resources", {"use_gpu": True}), "resources.use_gpu is true but gpus_per_worker is 0"),
    ("negative eps", _with("loss", {"name": "margin", "ot": {"eps": -0.1}}),
     "loss.ot.eps: Input should be greater than 0"),
    ("bad marginals", _with("evaluation", {"ot": {"marginals": "sinkhorn"}}),
     "evaluation.ot.marginals: Input should be 'cross_attention' or 'uniform'"),
    ("missing weights file", _with("model.weights", "/nonexistent/w.pt"), "model.weights '/nonexistent/w.pt' is not"),
    ("val selection without val split", _with("evaluation", {"selection_split": "val"}),
     "evaluation.selection_split is 'val' but data.val_fraction is 0"),
    ("zero depth", _with("evaluation", {"depths": [0, 10]}), "evaluation.depths: values must be >= 1"),
    ("unknown miner", _with("loss", {"name": "triplet", "miner": "hardest-ever"}), "unknown miner 'hardest-ever'"),
    ("missing name", {k: v for k, v in BASE.items() if k != "name"}, "name: Field required"),
    ("bad selection metric", _with("evaluation", {"selection_metric": "R@1"}),
     "selection_metric 'R@1' must be '<ranking>/<metric>'"),
    ("grid axis not a field", _with("grid", {"loss.nmae": ["margin"]}), "'nmae' is not a spec field; allowed under loss"),
    ("empty grid axis", _with("grid", {"seed": []}), "grid axis 'seed' has no values"),
    ("search bounds", _with("search", {"space": {"optimizer.lr": {"type": "loguniform", "low": 0, "high": 1}}}),
     "a 'loguniform' search dimension needs low > 0"),
    ("override path not a field", _with("overrides", [{"when": {"data.datset": "sop"}, "set": {"epochs": 1}}]),
     "'datset' is not a spec field; allowed under data"),
    ("grid over a launch field", _with("grid", {"tracking.experiment": ["a", "b"]}),
     "grid: tracking.experiment belongs to the launch as a whole (tracking.experiment) and cannot vary"),
    ("grid over a moved launch field", _with("grid", {"resources.storage_path": ["/a", "/b"]}),
     "grid: resources.storage_path belongs to the launch as a whole (launch.storage_path) and cannot vary"),
    ("override sets a launch field", _with("overrides", [{"when": {"seed": 0}, "set": {"launch.driver_cpus": 1}}]),
     "overrides: launch.driver_cpus belongs to the launch as a whole"),
    ("search over a launch field", _with("search", {"space": {"launch.max_concurrent_trials": {
        "type": "randint", "low": 1, "high": 4}}}), "search.space: launch.max_concurrent_trials belongs to the launch"),
    ("launch field in its old place", _with("resources", {"max_concurrent_trials": 2}),
     "resources.max_concurrent_trials is now launch.max_concurrent_trials (a setting of the launch as a whole)"),
    ("bad launch value", _with("launch", {"driver_cpus": 0}), "launch.driver_cpus: Input should be greater than 0"),
    ("unknown launch key", _with("launch", {"storage": "/x"}), "'storage' is not a spec field; allowed under launch"),
    ("negative driver memory", _with("launch", {"driver_memory_mb": -1}),
     "launch.driver_memory_mb: Input should be greater than or equal to 0"),
    ("built-in worker resource", _with("resources", {"worker_resources": {"GPU": 1}}),
     "resources.worker_resources.GPU: a built-in resource; use cpus_per_worker / gpus_per_worker"),
    ("bad worker resource name", _with("resources", {"worker_resources": {"a b": 1}}),
     "resources.worker_resources: 'a b' is not a Ray resource name"),
    ("zero worker resource", _with("resources", {"worker_resources": {"trialnode": 0}}),
     "resources.worker_resources.trialnode: 0.0 must be > 0"),
    ("unknown input format", _with("data", {"dataset": "synthetic", "input": "half"}),
     "data.input: Input should be 'uint8' or 'float'"),
    ("decoded cache of float input", _with("data", {"dataset": "synthetic", "input": "float", "decoded_cache_gb": 2}),
     "data.decoded_cache_gb needs data.input: uint8"),
]


@pytest.mark.parametrize("raw,expected", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_malformed_spec_is_reported_with_field_path_and_fix(raw, expected):
    with pytest.raises(SpecError) as info:
        build_study(raw, source="bad.yaml")
    text = str(info.value)
    assert expected in text, text
    assert text.startswith("1 problem(s) in bad.yaml") or "problem(s) in bad.yaml" in text


def test_several_errors_are_reported_together():
    raw = _with("epochs", 0)
    raw["model"]["backbone"] = "resnet7"
    raw["loss"] = {"name": "nope"}
    with pytest.raises(SpecError) as info:
        build_study(raw)
    assert len(info.value.problems) == 3
    assert {p.split(":")[0] for p in info.value.problems} == {"epochs", "model.backbone", "loss.name"}


def test_base_error_in_a_grid_is_reported_once():
    raw = _with("epochs", 0)
    raw["grid"] = {"seed": [0, 1, 2]}
    with pytest.raises(SpecError) as info:
        build_study(raw)
    assert info.value.problems == ["epochs: Input should be greater than or equal to 1 (got 0) (in all 3 trials)"]


def test_error_in_one_grid_point_names_the_trial():
    raw = _with("grid", {"batch.size": [8, 9]})
    with pytest.raises(SpecError) as info:
        build_study(raw)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("trial 1 (9): batch: ")


def test_grid_is_cartesian_with_dict_axes_and_overrides():
    raw = _with("grid", {
        "loss": [{"name": "margin", "params": {"beta": 0.6}}, {"name": "triplet", "miner": "semihard"}],
        "loss.similarity": ["global", "diml"],
        "seed": [0, 1],
    })
    raw["overrides"] = [{"when": {"loss.name": "triplet"}, "set": {"epochs": 7}}]
    study = build_study(raw)
    assert len(study.trials) == 8
    specs = [t.spec for t in study.trials]
    assert [s.loss.name for s in specs] == ["margin"] * 4 + ["triplet"] * 4
    assert [s.seed for s in specs[:4]] == [0, 1, 0, 1]
    assert {s.epochs for s in specs if s.loss.name == "triplet"} == {7}
    assert {s.epochs for s in specs if s.loss.name == "margin"} == {1}
    assert specs[0].loss.params == {"beta": 0.6} and specs[4].loss.miner == "semihard"
    assert study.trials[0].varying["loss.similarity"] == "global"
    assert len({t.label for t in study.trials}) == 8


def test_set_overrides_are_applied_and_checked():
    study = build_study(BASE, sets=["optimizer.lr=1e-4", "grid.seed=[3, 4]", "model.embed_dim=64"])
    assert [t.spec.seed for t in study.trials] == [3, 4]
    assert study.trials[0].spec.optimizer.lr == pytest.approx(1e-4)
    assert study.trials[0].spec.model.embed_dim == 64
    with pytest.raises(SpecError, match="--set optimizer.lrr: 'lrr' is not a spec field"):
        build_study(BASE, sets=["optimizer.lrr=1"])
    with pytest.raises(SpecError, match="expected path=value"):
        build_study(BASE, sets=["optimizer.lr"])


def test_spec_round_trips_through_json():
    spec = build_study(BASE).trials[0].spec
    assert RunSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_check_path_accepts_free_form_params_and_rejects_values_as_sections():
    assert check_path("loss.params.beta") is None
    assert "is a value, not a section" in check_path("epochs.x")


def test_launch_exits_2_before_starting_anything(tmp_path, capsys, monkeypatch):
    import ray

    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(_with("epochs", 0)))

    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(ray, "init", refuse)
    assert launch_main([str(spec)]) == 2
    err = capsys.readouterr().err
    assert "epochs: Input should be greater than or equal to 1" in err

    assert not (tmp_path / "mlflow.db").exists()
    assert launch_main([str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unparseable_yaml_is_a_spec_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec_file(path)


SPECS = sorted(pathlib.Path(__file__).resolve().parents[2].joinpath("specs").rglob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[str(p.relative_to(SPECS[0].parents[1])) for p in SPECS])
def test_every_spec_in_the_tree_validates(path, monkeypatch, tmp_path):
    """Walks specs/ recursively; the paper specs' dataset roots ($DIML_DATA/...) point at folders made here."""
    for name in ("CUB_200_2011", "cars196", "Stanford_Online_Products", "digits_cub", "real_parts"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("DIML_DATA", str(tmp_path))
    study = build_study(load_spec_file(path), source=str(path))
    assert study.trials
    for trial in study.trials:
        if trial.spec.data.dataset != "synthetic":
            assert trial.spec.data.root.startswith(str(tmp_path))


def test_paper_grid_has_the_papers_study():
    import os

    os.environ.setdefault("DIML_DATA", "/nonexistent")
    path = next(p for p in SPECS if p.name == "full_grid.yaml")
    raw = load_spec_file(path)
    assert len(raw["grid"]["loss"]) == 20 and raw["grid"]["seed"] == [0, 1, 2]
    assert [d["dataset"] for d in raw["grid"]["data"]] == ["cub200", "cars196", "sop"]
    diml_trained = [v for v in raw["grid"]["loss"] if v.get("similarity") == "diml"]
    assert {v["name"] for v in diml_trained} == {"margin", "multisimilarity"}


def test_env_references_in_roots(monkeypatch, tmp_path):
    from pipeline.specs import expand_env

    monkeypatch.setenv("DIML_DATA", str(tmp_path))
    assert expand_env("${DIML_DATA}/x") == f"{tmp_path}/x"
    monkeypatch.delenv("DIML_DATA")
    assert expand_env("${DIML_DATA:-/data}/x") == "/data/x"
    with pytest.raises(ValueError, match="environment variable DIML_DATA is not set"):
        expand_env("${DIML_DATA}/x")


def test_readme_spec_example_validates(tmp_path):
    """The YAML example in the README is a real spec (its dataset root pointed at an existing folder)."""
    readme = pathlib.Path(__file__).resolve().parents[2].joinpath("README.md").read_text()
    raw = yaml.safe_load(readme.split("```yaml\n", 1)[1].split("```", 1)[0])
    raw["data"]["root"] = str(tmp_path)
    study = build_study(raw, source="README.md")
    assert len(study.trials) == 12
    assert {t.spec.optimizer.lr for t in study.trials if t.spec.loss.name == "multisimilarity"} == {2e-5}


def test_the_launch_level_is_read_from_the_launch_spec_and_not_from_the_trials():
    raw = {**BASE, "tracking": {"experiment": "exp", "log_checkpoint": False},
           "launch": {"storage_path": "/tmp/somewhere", "max_concurrent_trials": 3, "driver_cpus": 0.5},
           "grid": {"seed": [0, 1]}}
    study = build_study(raw, sets=["launch.trial_max_failures=2"])
    assert study.name == "t" and study.samples == 1
    assert study.launch.launch.storage_path == "/tmp/somewhere" and study.launch.launch.max_concurrent_trials == 3
    assert study.launch.launch.trial_max_failures == 2 and study.launch.tracking.log_checkpoint is False
    assert "tracking" not in RunSpec.model_fields and "launch" not in RunSpec.model_fields
    assert [t.spec.seed for t in study.trials] == [0, 1]


def test_set_of_a_moved_field_names_its_new_place():
    with pytest.raises(SpecError) as info:
        build_study(BASE, sets=["resources.storage_path=/x"])
    assert info.value.problems == ["--set resources.storage_path is now launch.storage_path (a setting of the launch "
                                   "as a whole): move it there"]


def test_validation_builds_no_loss_and_solves_no_transport(monkeypatch):
    import diml.losses
    import diml.ot

    def refuse(*args, **kwargs):
        raise AssertionError("validation must not build or solve")

    monkeypatch.setattr(diml.losses, "build_loss", refuse)
    monkeypatch.setattr(diml.ot, "match", refuse)
    monkeypatch.setattr(diml.ot, "sinkhorn", refuse)
    study = build_study({**BASE, "loss": {"name": "margin", "similarity": "diml", "miner": "distance"}})
    assert study.trials[0].spec.loss.similarity == "diml"


def test_custom_worker_resources_join_each_workers_ray_resources():
    raw = {**{k: v for k, v in BASE.items() if k != "grid"}, "resources": {"worker_resources": {"trialnode": 0.5}}}
    assert RunSpec.model_validate(raw).resources.per_worker() == {"CPU": 1.0, "trialnode": 0.5}
    gpu = {**raw, "resources": {"use_gpu": True, "gpus_per_worker": 1, "cpus_per_worker": 6}}
    assert RunSpec.model_validate(gpu).resources.per_worker() == {"CPU": 6.0, "GPU": 1.0}
