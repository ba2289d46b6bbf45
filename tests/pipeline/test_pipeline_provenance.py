"""Provenance: the env.* tags every trial run records, the determinism switch, and the report's hardware flag."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pipeline import provenance
from pipeline.report import build_report


def test_environment_names_this_machine_and_its_libraries():
    tags = provenance.environment(torch.device("cpu"))
    assert tags["env.cpu"] == provenance.cpu_model() and tags["env.cpu"]
    assert tags["env.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert tags["env.torch"] == torch.__version__.split("+")[0] or tags["env.torch"] == torch.__version__
    assert tags["env.gpu"] == "none" and tags["env.cudnn"] == "none"
    assert tags["env.hardware"] == f"{tags['env.cpu']} ({tags['env.cpu_capability']})"
    assert {"env.ray", "env.mlflow", "env.numba", "env.pot", "env.llvm_cpu"} <= set(tags)
    assert all(isinstance(v, str) and v for v in tags.values())
    # the same process gives the same fingerprint; another thread count does not change it (results do not
    # depend on it: the OT blocks are solved alone), the determinism switch does
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert provenance.environment()["env.fingerprint"] == tags["env.fingerprint"]
        provenance.apply_determinism(True)
        assert provenance.environment()["env.deterministic"] == "true"
        assert provenance.environment()["env.fingerprint"] != tags["env.fingerprint"]
    finally:
        provenance.apply_determinism(False)
        torch.set_num_threads(threads)


def test_apply_determinism_switches_pytorch_and_cudnn(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        provenance.apply_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert provenance.CUBLAS_WORKSPACE.items() <= dict(__import__("os").environ).items()
    finally:
        provenance.apply_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


def _run(seed: str, similarity: str, r1: float, hardware: str | None):
    tags = {"diml.role": "trial", "dataset": "synthetic", "loss": "margin", "loss_variant": "margin",
            "backbone": "resnet18", "grid": "4", "similarity": similarity, "seed": seed, "selection_split": "test",
            "r_convention": "PML (R excludes the query)"}
    if hardware:
        tags.update({"env.hardware": hardware, "env.torch": "2.14.1", "env.cuda": "none"})
    return SimpleNamespace(info=SimpleNamespace(status="FINISHED", run_id=f"{similarity}{seed}{hardware}"),
                           data=SimpleNamespace(tags=tags, metrics={"best/test/global/R_at_1": r1, "best/test/global/RP": r1 / 2,
                                                        "best/test/global/MAP_at_R": r1 / 3}))


def test_report_says_where_the_numbers_were_computed():
    report = build_report([_run("0", "global", 80.0, "AMD EPYC (AVX512)"),
                           _run("1", "global", 82.0, "AMD EPYC (AVX512)")])
    assert "All trials ran on: AMD EPYC (AVX512); torch 2.14.1." in report.markdown()
    assert "hardware" not in report.markdown().splitlines()[0]


def test_report_flags_a_row_that_mixes_hardware():
    report = build_report([_run("0", "global", 80.0, "AMD EPYC (AVX512)"),
                           _run("1", "global", 82.0, "Intel Xeon (AVX2)"),
                           _run("0", "diml", 81.0, "Intel Xeon (AVX2)"),
                           _run("1", "diml", 83.0, None)])
    text = report.markdown()
    header, _, *rows = text.splitlines()[:4]
    assert "| hardware |" in header
    cells = {row.split("|")[5].strip(): row.split("|")[7].strip() for row in rows}
    assert cells == {"diml": "B+C", "global": "A+B"}
    assert "**A** = AMD EPYC (AVX512); torch 2.14.1" in text and "**C** = not recorded" in text
    assert "Warning: 2 row(s) average trials run on different hardware" in text
    assert report.frame["global/R@1 mean"].tolist() == pytest.approx([82.0, 81.0])
