"""The paper-style report's part-correspondence table and the results table's flow columns (issue 25)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from diml import names
from pipeline.report import build_report
from pipeline.results import ResultsTable, TrialRow


def _key(prefix: str, method: str, metric: str) -> str:
    return names.interp_key(prefix, names.interp_name(method, metric))


def _run(seed: int, grid: int, cell_acc: float | None):
    tags = {"diml.role": "trial", "dataset": "synthetic", "loss": "margin", "loss_variant": "margin",
            "backbone": "resnet18", "grid": str(grid), "similarity": "diml", "seed": str(seed),
            "selection_split": "test", "r_convention": "PML (R excludes the query)"}
    metrics = {"best/test/global/R_at_1": 80.0 + seed, "best/test/global/RP": 40.0, "best/test/global/MAP_at_R": 30.0}
    if cell_acc is not None:
        for method in names.INTERP_REPORTED:
            metrics[_key("best/test", method, "cell_acc")] = cell_acc + len(method)
            metrics[_key("best/test", method, "PCK@0.1")] = 2 * cell_acc
        metrics[_key("init/test", "ot_argmax", "cell_acc")] = 5.0 + seed
        metrics[_key("init/test", "ot_argmax", "PCK@0.1")] = 7.0
    return SimpleNamespace(info=SimpleNamespace(status="FINISHED", run_id=f"r{seed}{grid}"),
                           data=SimpleNamespace(tags=tags, metrics=metrics, params={}))


def test_report_has_a_part_correspondence_table_per_grid_with_the_baselines():
    text = build_report([_run(0, 4, 20.0), _run(1, 4, 30.0), _run(0, 7, 10.0)]).markdown()
    section = text.split("### Part correspondence", 1)[1]
    header, _, *rows = [line for line in section.splitlines() if line.startswith("|")]
    assert header.split("|")[7:-1] == [" untrained flow argmax ", " flow argmax ", " flow mean ", " uniform-OT argmax ",
                                       " uniform-OT mean ", " nearest-cos ", " identity ", " ceiling "]
    grid4 = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert grid4[3] == "4" and grid4[5] == "2"
    # mean ± std over the two seeds: cell acc (20, 30) + len("ot_argmax") = 9; PCK@0.1 = 2 x cell acc
    assert grid4[6] == "5.50 ± 0.71 / 7.00"  # a std of 0 is not written
    assert grid4[7] == "34.00 ± 7.07 / 50.00 ± 14.14"
    grid7 = [c.strip() for c in rows[1].split("|")[1:-1]]
    assert grid7[3] == "7" and grid7[7] == "19.00 / 20.00"


def test_report_without_part_annotations_has_no_correspondence_table():
    assert "Part correspondence" not in build_report([_run(0, 4, None), _run(1, 4, None)]).markdown()


def test_results_table_shows_the_flow_columns_only_where_measured():
    metrics = {"best/test/global/R_at_1": 81.0, _key("best/test", "ot_argmax", "cell_acc"): 42.5,
               _key("best/test", "ot_mean", "PCK@0.1"): 55.25}
    table = ResultsTable(rows=[TrialRow("a", "1", "FINISHED", {"loss": "margin", "similarity": "diml"}, metrics)],
                         rankings=["global"])
    header, _, row = table.render().splitlines()
    assert "flow argmax cell acc" in header and "flow mean PCK@0.1" in header
    assert row.split()[-2:] == ["42.50", "55.25"]
    bare = ResultsTable(rows=[TrialRow("a", "1", "FINISHED", {}, {"best/test/global/R_at_1": 81.0})],
                        rankings=["global"])
    assert "flow" not in bare.render()
