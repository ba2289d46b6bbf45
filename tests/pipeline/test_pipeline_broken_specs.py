"""A catalogue of broken spec files run through ``python -m pipeline.launch`` (in-process, in an empty working
directory): each exits 2 with a one-line problem naming the field, prints no traceback, and creates nothing -- no
MLflow store, no Ray session, no results folder. These are mistakes that used to pass validation and fail after Ray
had started (or fail with a traceback), beyond the field errors of test_pipeline_specs.py."""

from __future__ import annotations

import os
import pathlib

import pytest
import yaml

from pipeline.launch import local_ray
from pipeline.launch.cli import main as launch_main

BASE = {"name": "t", "epochs": 4, "data": {"dataset": "synthetic", "image_size": 32},
        "model": {"backbone": "resnet18"}, "batch": {"size": 8, "images_per_class": 2},
        "resources": {"workers_per_trial": 1}}


def spec(**sections):
    """BASE with dotted-path changes, e.g. ``spec(**{"evaluation.depths": [10]})``."""
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for path, value in sections.items():
        node = raw
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return raw


def _folder_dataset(root: pathlib.Path, classes: int) -> str:
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(3):
            (root / f"class{c}" / f"{i}.jpg").write_bytes(b"")  # names only: validation opens no image
    return str(root)


def _sop(root: pathlib.Path, classes: int) -> str:
    root.mkdir(parents=True)
    rows = [f"{i + 1} {c + 1} 1 bicycle_final/{c}_{i}.JPG" for c in range(classes) for i in range(2)]
    (root / "Ebay_train.txt").write_text("image_id class_id super_class_id path\n" + "\n".join(rows) + "\n")
    (root / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n1 99 1 bicycle_final/x.JPG\n"
                                        "2 99 1 bicycle_final/y.JPG\n")
    (root / "bicycle_final").mkdir()
    for row in rows + ["- - - bicycle_final/x.JPG", "- - - bicycle_final/y.JPG"]:
        (root / row.split()[-1]).write_bytes(b"")  # names only: validation opens no image
    return str(root)


SEARCH_LR = {"space": {"optimizer.lr": {"type": "loguniform", "low": 1e-5, "high": 100.0}}}
# (id, spec: a dict, text/bytes of a file, or a callable(data folder) -> dict; a phrase the problem line holds)
CATALOGUE = [
    ("key written twice", "name: t\nepochs: 2\nepochs: 30\n", "epochs: written twice (lines 2 and 3)"),
    ("nested key written twice", "name: t\nloss:\n  name: margin\n  params: {beta: 1.2, beta: 0.6}\n",
     "loss.params.beta: written twice"),
    ("key twice in a grid value", "name: t\ngrid:\n  loss:\n    - {name: margin, name: triplet}\n",
     "grid.loss[0].name: written twice"),
    ("binary file", b"\x7fELF\x02\x01\x01\x00\x00\x00", "is binary (a NUL byte at offset 7)"),
    ("latin-1 file", "name: caf\xe9\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 on line 1)"),
    ("a list, not a mapping", "- name: t\n", "the spec must be a mapping"),
    ("empty file", "", "the spec must be a mapping"),
    ("selection depth not evaluated", spec(**{"evaluation.selection_metric": "diml_K100/R_at_1",
                                              "evaluation.depths": [10, 50]}),
     "evaluation.selection_metric 'diml_K100/R_at_1': depth 100 is not evaluated (evaluation.depths [10, 50])"),
    ("selection recall not evaluated", spec(**{"evaluation.selection_metric": "global/R_at_16"}),
     "evaluation.selection_metric 'global/R_at_16': Recall@16 is not evaluated (evaluation.ks [1, 2, 4, 8])"),
    ("selection ranking unknown", spec(**{"evaluation.selection_metric": "local/R_at_1"}),
     "evaluation.selection_metric 'local/R_at_1': ranking 'local' is neither 'global' nor 'diml_K<depth>'"),
    ("NMI of a DIML ranking", spec(**{"evaluation.selection_metric": "diml_K10/NMI", "evaluation.depths": [10]}),
     "evaluation.selection_metric 'diml_K10/NMI': NMI is computed for the global ranking only"),
    ("recall without a k", spec(**{"evaluation.selection_metric": "global/R_at_x"}),
     "evaluation.selection_metric 'global/R_at_x': unknown metric 'R_at_x'"),
    ("one image per class, margin", spec(**{"batch.images_per_class": 1}),
     "batch.images_per_class 1 with loss.name 'margin': a batch of one image per class holds no positive pair"),
    ("one image per class, angular", spec(**{"batch.images_per_class": 1, "loss.name": "angular"}),
     "batch.images_per_class 1 with loss.name 'angular'"),
    ("batch needs more classes than synthetic train", spec(**{"batch.size": 16, "data.synthetic.num_classes": 8}),
     "batch.size 16: each of the 1 worker(s) draws 8 classes x 2 images per batch, but the training split of "
     "data.synthetic.num_classes 8 (half train) holds 4 classes"),
    ("validation leaves too few classes", spec(**{"batch.size": 32, "data.val_fraction": 0.5}),
     "holds 12 classes after data.val_fraction 0.5 held out 12: lower batch.size to at most 24"),
    ("validation takes every class", spec(**{"data.synthetic.num_classes": 4, "data.val_fraction": 0.8,
                                            "batch.size": 2}),
     "data.val_fraction 0.8 moves all 2 training classes of synthetic to validation"),
    ("batch needs more classes than a folder", lambda d: spec(**{"data.dataset": "folder",
                                                                 "data.root": _folder_dataset(d / "f", 4)}),
     "but the training split of folder at"),
    ("batch needs more classes than SOP train", lambda d: spec(**{"data.dataset": "sop", "batch.size": 8,
                                                                  "data.root": _sop(d / "sop", 3)}),
     "draws 4 classes x 2 images per batch, but the training split of sop at"),
    ("milestone after the last epoch", spec(schedule={"name": "multistep", "milestones": [2, 4]}),
     "schedule.milestones [4] are not below epochs 4"),
    ("step size past the last epoch", spec(schedule={"name": "step", "step_size": 10}),
     "schedule.step_size 10 is not below epochs 4"),
    ("root for synthetic data", spec(**{"data.root": "/tmp"}), "data.root '/tmp' is set but the synthetic dataset"),
    ("amp without GPU", spec(**{"model.amp": True}), "model.amp is true but resources.use_gpu is false"),
    ("ASHA selecting on test", spec(search={"space": {"seed": {"type": "choice", "values": [0, 1]}}}),
     "search.scheduler.name: 'asha' stops trials early on the selection split's score, but 1 of 1 trial(s) "
     "select on the test split"),
    ("search bound out of the field's range", spec(search={**SEARCH_LR, "scheduler": {"name": "fifo"}}),
     "search.space.optimizer.lr: the loguniform value 100 makes an invalid trial (optimizer.lr: Input should be "
     "less than or equal to 10)"),
    ("uniform search over an int field", spec(search={"space": {"epochs": {"type": "uniform", "low": 1, "high": 4}},
                                                      "scheduler": {"name": "fifo"}}),
     "search.space.epochs: the uniform value 2.11 makes an invalid trial (epochs: Input should be a valid integer"),
    ("search choice not a loss", spec(search={"space": {"loss.name": {"type": "choice", "values": ["margin",
                                                                                                   "hinge"]}},
                                              "scheduler": {"name": "fifo"}}),
     "search.space.loss.name: the choice value 'hinge' makes an invalid trial (loss.name: unknown loss 'hinge'"),
    ("search randint from zero epochs", spec(search={"space": {"epochs": {"type": "randint", "low": 0, "high": 3}},
                                                     "scheduler": {"name": "fifo"}}),
     "search.space.epochs: the randint value 0 makes an invalid trial"),
    ("grid over the storage path", spec(grid={"launch.storage_path": ["/a", "/b"]}),
     "grid: launch.storage_path belongs to the launch as a whole"),
    ("one grid point without positives", spec(grid={"batch.images_per_class": [1, 2]}),
     "trial 0 (1): batch.images_per_class 1 with loss.name 'margin'"),
    # places that cannot be written (tried with a probe file; /proc refuses even root)
    ("results folder that cannot be written", spec(**{"launch.storage_path": "/proc/diml-results"}),
     "launch.storage_path: cannot write to /proc/diml-results (No such file or directory): set "
     "launch.storage_path to a writable folder"),
    ("results folder under a file", lambda d: _file_in_the_way(d, "launch.storage_path", "results"),
     "launch.storage_path: cannot write to"),
    ("tracking store in a folder that cannot be written", spec(**{"tracking.uri": "sqlite:////proc/mlflow.db"}),
     "tracking.uri: MLflow store sqlite:////proc/mlflow.db: cannot write to /proc ("),
    ("artifact location that cannot be written", spec(**{"tracking.artifact_location": "/proc/diml-art"}),
     "tracking.artifact_location: artifact location /proc/diml-art: cannot write to /proc/diml-art"),
]


def _file_in_the_way(data: pathlib.Path, field: str, name: str) -> dict:
    data.mkdir()
    (data / "a-file").write_text("")
    return spec(**{field: str(data / "a-file" / name)})


def _write(folder: pathlib.Path, content) -> pathlib.Path:
    path = folder / "spec.yaml"
    if callable(content):
        content = content(folder / "data")
    if isinstance(content, dict):
        content = yaml.safe_dump(content, sort_keys=False)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _ray_dirs() -> set[str]:
    return {n for n in os.listdir("/tmp") if n.startswith(local_ray.TEMP_PREFIX)}


@pytest.mark.parametrize("content,expected", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_broken_spec_exits_2_names_the_field_and_creates_nothing(content, expected, tmp_path, monkeypatch, capsys):
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start for a broken spec")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, content)
    before, ray_before = sorted(os.listdir(tmp_path)), _ray_dirs()
    assert launch_main([str(path)]) == 2
    out, err = capsys.readouterr()
    assert expected in err, err
    assert "Traceback" not in err + out
    assert err.startswith("error: ") and all(line.startswith("  - ") for line in err.splitlines()[1:]), err
    assert sorted(os.listdir(tmp_path)) == before  # no mlflow.db, mlruns, mlartifacts, ray_results
    assert _ray_dirs() <= ray_before


def test_catalogue_size():
    assert len(CATALOGUE) >= 25


def test_the_full_grid_without_its_datasets_reports_one_line_per_missing_root(monkeypatch, capsys):
    monkeypatch.setenv("DIML_DATA", "/nonexistent")
    full_grid = pathlib.Path(__file__).resolve().parents[2] / "specs" / "full_grid.yaml"
    assert launch_main([str(full_grid)]) == 2  # a launch here: the roots must exist, every problem once
    problems = capsys.readouterr().err.splitlines()[1:]
    assert len(problems) == 3, problems
    for name, dataset in (("CUB_200_2011", "cub200"), ("cars196", "cars196"), ("Stanford_Online_Products", "sop")):
        line = next(p for p in problems if f"'/nonexistent/{name}'" in p)
        assert line.endswith(f"(in 180 of 540 trials: data={dataset})"), line
    # a dry run plans for another machine: it lists the trials and names the missing roots in one line
    assert launch_main([str(full_grid), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("/nonexistent/") == 3 and "3 dataset root(s) missing here" in out


def test_problems_of_several_grid_values_are_grouped_with_their_values():
    from pipeline.launch.study import SpecError, build_study

    raw = spec(grid={"batch.images_per_class": [1, 2], "seed": [0, 1, 2]})
    with pytest.raises(SpecError) as info:
        build_study(raw)
    assert info.value.problems == [
        "batch.images_per_class 1 with loss.name 'margin': a batch of one image per class holds no positive pair, "
        "so this pair-based loss has nothing to learn from; set batch.images_per_class >= 2 (the paper uses 2) or a "
        "proxy loss (proxynca, proxyanchor, softmax, arcface, softtriple) (in 3 of 6 trials: "
        "batch.images_per_class=1)"]


def test_proxy_loss_with_one_image_per_class_is_fine():
    from pipeline.launch.study import build_study

    study = build_study(spec(**{"batch.images_per_class": 1, "loss.name": "proxynca"}))
    assert study.trials[0].spec.batch.images_per_class == 1


def test_training_class_counts_follow_the_loaders(tmp_path):
    """The cheap counts agree with the splits the real loaders build (folder and SOP layouts on empty files)."""
    from diml.data import build_splits
    from diml.data.class_counts import train_class_count

    folder = _folder_dataset(tmp_path / "f", 7)
    sop = _sop(tmp_path / "sop", 5)
    for dataset, root, options in (("folder", folder, {"test_fraction": 0.3}), ("sop", sop, {}),
                                   ("synthetic", None, {"num_classes": 10})):
        count = train_class_count(dataset, root, **options)
        splits = build_splits(dataset, root=root, image_size=16, **options)
        assert count == splits.train.num_classes, dataset
