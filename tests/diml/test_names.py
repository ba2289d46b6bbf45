"""diml.names: the result keys of evaluate() and correspondence_metrics(), their tracked (MLflow) names and display
labels, written out by hand here as the reference."""

import posixpath
import re
import subprocess
import sys

import pytest
import torch

from diml import names
from diml.evaluation import correspondence_metrics, evaluate

# MLflow 3.17's rule for metric names (mlflow/utils/validation.py: validate_param_and_metric_name, POSIX form)
MLFLOW_NAME = re.compile(r"^[/\w.\- :]*$")


def test_every_result_key_of_evaluate_has_a_tracked_name_that_maps_back():
    gen = torch.Generator().manual_seed(0)
    glob, local = torch.randn(24, 4, generator=gen), torch.randn(24, 4, 4, generator=gen)
    results = evaluate(glob, torch.arange(24) % 4, local, depths=(3, 10), ks=(1, 2))
    assert set(results) == {"global", "diml@3", "diml@10", "convention"}
    assert set(results["global"]) == {"R@1", "R@2", "RP", "MAP@R", "NMI"}
    assert set(results["diml@10"]) == {"R@1", "R@2", "RP", "MAP@R"}
    tracked = {names.metric_key("test", r, m) for r in ("global", "diml@3", "diml@10") for m in results[r]}
    assert {"test/global/R_at_1", "test/global/MAP_at_R", "test/global/NMI", "test/diml_K10/R_at_2",
            "test/diml_K3/RP"} <= tracked
    assert all(MLFLOW_NAME.match(key) and "@" not in key for key in tracked)
    for key in tracked:
        _, ranking, metric = key.split("/")
        assert names.result_name(ranking) in results and names.result_name(metric) in results["global"]


@pytest.mark.parametrize("key, tracked", [("global", "global"), ("diml@100", "diml_K100"), ("R@1", "R_at_1"),
                                          ("R@16", "R_at_16"), ("RP", "RP"), ("MAP@R", "MAP_at_R"), ("NMI", "NMI")])
def test_tracked_names_and_back(key, tracked):
    assert names.tracked_name(key) == tracked
    assert names.result_name(tracked) == key


def test_rankings_sort_by_depth_with_global_first_and_have_two_labels():
    assert sorted(["diml_K100", "global", "diml_K5", "diml_K20"], key=names.ranking_order) == [
        "global", "diml_K5", "diml_K20", "diml_K100"]
    assert sorted(["diml@100", "global", "diml@5"], key=names.ranking_order) == ["global", "diml@5", "diml@100"]
    assert [names.is_ranking(n) for n in ("global", "diml@7", "diml_K7", "R@1", "convention", "diml_Kx")] == [
        True, True, True, False, False, False]
    assert names.ranking_label("diml_K5") == "diml@5" and names.ranking_label("diml_K5", paper=True) == "DIML@5"
    assert names.ranking_label("global", paper=True) == "global"


@pytest.mark.parametrize("value", ["global/R_at_1", "diml_K100/MAP_at_R", "global/NMI", "diml_K5/RP"])
def test_selection_metrics_of_the_right_form_pass(value):
    assert names.check_selection_metric(value) == value


@pytest.mark.parametrize("value", ["R@1", "R_at_1", "global/R@1", "global/R_at_1/x", "global/AUC", "global/MAP@R"])
def test_selection_metrics_of_another_form_name_the_form(value):
    with pytest.raises(ValueError, match=rf"selection_metric {re.escape(repr(value))} must be '<ranking>/<metric>' "
                                         r"with ranking 'global' or 'diml_K<k>' and metric one of RP, MAP_at_R, NMI "
                                         r"or R_at_<k>"):
        names.check_selection_metric(value)


def test_the_names_and_the_ot_options_import_without_torch():
    """The pipeline's spec, results table and report import these in processes that never load a model."""
    code = "import sys, diml.names, diml.options; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_correspondence_result_key_is_an_mlflow_name_under_interp_that_maps_back():
    gen = torch.Generator().manual_seed(0)
    keypoints = torch.rand(12, 3, 3, generator=gen) * 224
    keypoints[..., 2] = 1.0
    boxes = torch.tensor([[10.0, 20.0, 200.0, 180.0]]).expand(12, 4)
    results = correspondence_metrics(torch.randn(12, 8, 16, generator=gen), torch.randn(12, 8, generator=gen),
                                     torch.arange(12) % 3, keypoints, grid=4, image_size=224,
                                     part_names=["left eye", "beak", "tail-tip.2"], boxes=boxes)
    methods = ("ot_argmax", "ot_mean", "uniform_ot_argmax", "uniform_ot_mean", "nearest_cosine", "identity",
               "grid_ceiling")
    assert {f"{m}/{metric}" for m in methods for metric in ("PCK@0.05", "PCK@0.1", "PCK@0.2", "PCK_bbox@0.1",
                                                             "cell_acc")} <= set(results)
    assert {"ot_mean/part/left eye/PCK@0.1", "grid_ceiling/part/tail-tip.2/cell_acc", "part/beak/num_keypoints",
            "uniform_ot_mean/untransferred", "num_pairs", "num_keypoints", "seed"} <= set(results)
    assert names.interp_key("test", "ot_argmax/PCK@0.1") == "test/interp/ot_argmax/PCK_at_0.1"
    for key in results:
        tracked = names.interp_key("test", key)
        assert MLFLOW_NAME.match(tracked) and "@" not in tracked and posixpath.normpath(tracked) == tracked, tracked
        assert names.result_name(tracked.removeprefix("test/interp/")) == key


@pytest.mark.parametrize("part", ["left eye", "beak", "tail-tip.2", "P_1"])
def test_part_names_fit_for_mlflow_pass(part):
    assert names.check_part_name(part) == part


@pytest.mark.parametrize("part", ["", " eye", "left/eye", "eye@1", "seat_at_front", "x_diml_K3", "é", "a\n", 3,
                                  "x" * 65])
def test_other_part_names_raise_naming_the_fix(part):
    with pytest.raises(ValueError, match=r"part_names entry .* must be 1-64 ASCII letters, .*: rename the part"):
        names.check_part_name(part)
