"""The Triton solver (diml/ot/_gpu.py) against the batched tensor path, run in Triton's CPU interpreter.

Triton decides at import whether its kernels (and its own standard library) are interpreted, so the comparison runs
in a subprocess started with ``TRITON_INTERPRET=1``; ``DIML_OT_GPU_INTERPRET=1`` makes the solver serve CPU tensors
with the kernels.  The reference is the tensor path (numba kernels off), the one CUDA solves took before.  On a GPU
``benchmarks/gpu_ot_kernel.py`` runs the same comparison compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, "benchmarks")
from bench_ot import batch_case
from diml.ot import _cpu, _gpu, OTOptions
from diml.ot._scaling import LogKernel
from diml.ot.matching import _prepare, pair_terms_all
from diml.ot.sinkhorn import solve
_cpu.ENABLED = False
_gpu.INTERPRET = True
assert _gpu._works_on(torch.device("cpu"))  # the kernels' one-problem trial, before the calls are counted
rows, calls, original = {}, [], _gpu.solve
_gpu.solve = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)

def compare(name, sim, a, b, ot):
    results = []
    for interpret in (False, True):
        _gpu.INTERPRET = interpret
        before = len(calls)
        res = solve(LogKernel(sim, 1.0 / ot.eps, -1.0 / ot.eps), a, b, ot, direct=True)
        results.append((res, len(calls) - before))
    (ref, ref_calls), (got, got_calls) = results
    rows[name] = {
        "kernel_calls": [ref_calls, got_calls],
        "sim": float(((ref.plan - got.plan) * sim).sum((1, 2)).abs().max()),
        "plan": float((ref.plan - got.plan).abs().max()),
        "iters_equal": bool(torch.equal(ref.problem_iterations, got.problem_iterations)),
        "newton_equal": bool(torch.equal(ref.problem_newton_steps, got.problem_newton_steps)),
        "newton_problems": int((got.problem_newton_steps > 0).sum()), "max_err": float(got.marginal_error.max()),
        "tol": ot.tol}

# tol 1e-5, not 1e-6: a float32 L1 marginal error of 16 cells has rounding noise near 1e-6, where two float32
# implementations may disagree on the check at which a problem converges (both then meet the tolerance)
for kind, n, cases in (("random", 5, ((1e-5, 30),)), ("near_duplicate", 5, ((1e-4, 30), (1e-4, 0)))):
    local, glob, _ = batch_case(kind)  # near-duplicates: images 0-3 are one class (17 of the 25 pairs)
    cell_sim, a, b = pair_terms_all(*_prepare(local[:n], glob[:n], local[:n], glob[:n], candidates=False),
                                    "cross_attention")
    for tol, newton in cases:
        ot = OTOptions(tol=tol, max_iter=200, newton_steps=newton)
        compare(f"{kind} tol={tol} newton={newton}", cell_sim.reshape(-1, 16, 16), a.reshape(-1, 16),
                b.reshape(-1, 16), ot)

# zero-mass cells (a relu attention that kills cells) in both marginals
gen = torch.Generator().manual_seed(3)
sim = torch.rand(6, 16, 16, generator=gen) * 1.5 - 0.5
a, b = torch.rand(6, 16, generator=gen), torch.rand(6, 16, generator=gen)
a[:, :5] = 0
b[:, 10:] = 0
compare("zero-mass cells", sim, a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True), OTOptions(tol=1e-6))
print(json.dumps(rows))
"""


def test_triton_kernels_match_the_tensor_path_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", DIML_OT_GPU_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 4
    for name, row in rows.items():
        assert row["kernel_calls"] == [0, 1], (name, row)  # the reference is the tensor path, the other the kernels
        assert row["sim"] <= 1e-6 and row["plan"] <= 1e-6, (name, row)
        assert row["iters_equal"] and row["newton_equal"], (name, row)
        if "newton=0" not in name:
            assert row["max_err"] <= row["tol"], (name, row)
    # the polish really ran in the kernel: near-duplicates need it, and with newton_steps=0 nothing is polished
    assert rows["near_duplicate tol=0.0001 newton=30"]["newton_problems"] > 0
    assert rows["near_duplicate tol=0.0001 newton=0"]["newton_problems"] == 0


def test_the_triton_path_is_chosen_only_for_what_it_serves(monkeypatch):
    import torch

    from diml.ot import _gpu

    monkeypatch.setattr(_gpu, "ENABLED", True)
    monkeypatch.setattr(_gpu, "INTERPRET", False)
    monkeypatch.setattr(_gpu, "_WORKS", {"cpu": True})  # as if the kernels had compiled for this device
    kernel = torch.rand(3, 16, 16)
    assert not _gpu.applies(kernel, direct=True, differentiable=False)  # a CPU tensor, no interpreter
    monkeypatch.setattr(_gpu, "INTERPRET", True)
    assert _gpu.applies(kernel, direct=True, differentiable=False)
    assert not _gpu.applies(kernel, direct=False, differentiable=False)  # needs stabilising shifts
    assert not _gpu.applies(kernel, direct=True, differentiable=True)  # autograd through the iterations
    assert not _gpu.applies(kernel.double(), direct=True, differentiable=False)
    assert not _gpu.applies(torch.rand(2, 65, 16), direct=True, differentiable=False)  # beyond one program's tile


def test_kernels_that_do_not_build_warn_once_and_leave_the_tensor_path(monkeypatch):
    import torch

    from diml.ot import _gpu
    from diml.ot.matching import match

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("in the interpreter the kernels do run on the CPU")
    monkeypatch.setattr(_gpu, "ENABLED", True)
    monkeypatch.setattr(_gpu, "INTERPRET", True)  # served on the CPU, but Triton finds no GPU driver to build for
    monkeypatch.setattr(_gpu, "_WORKS", {})
    gen = torch.Generator().manual_seed(0)
    local, glob = torch.randn(3, 8, 16, generator=gen), torch.randn(3, 8, generator=gen)
    with pytest.warns(RuntimeWarning, match="Triton OT kernels do not run on cpu"):
        first = match(local, glob, local, glob)
    assert _gpu._WORKS == {"cpu": False}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the second solve neither tries nor warns again
        second = match(local, glob, local, glob)
    assert torch.equal(first.similarity, second.similarity)
    assert float(first.marginal_error.max()) <= 1e-6


def test_both_kernels_compile_for_hopper_without_a_gpu():
    """Triton's ahead-of-time path (source -> TTIR -> TTGIR -> LLVM -> PTX -> cubin for sm_90) runs without a
    driver: it catches what the interpreter does not check (types of loop-carried values, unsupported operations)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from diml.ot import _gpu_kernels as kernels

    f32, i32 = "fp32", "i32"
    scale = dict.fromkeys(("K", "A", "B", "U", "V", "PLAN"), "*fp32") | {"ITERS": "*i32", "STATUS": "*i32"}
    scale |= {"n": i32, "m": i32, "max_iter": i32, "half_tol": f32, "check_every": i32, "min_iters": i32,
              "switch_iters": f32, "polish": i32, "hi": f32, "lo": f32, "tiny": f32, "BN": "constexpr",
              "BM": "constexpr"}
    newton = {"SRC": "*fp32", "scale": f32, "shift": f32, "A": "*fp32", "B": "*fp32", "X": "*fp32", "Y": "*fp32",
              "PLAN": "*fp32", "STATUS": "*i32", "STEPS": "*i32", "n": i32, "m": i32, "steps": i32, "half_tol": f32,
              "trust": f32, "armijo": f32, "BN": "constexpr", "BM": "constexpr", "HALVINGS": "constexpr"}
    for fn, signature, constants in ((kernels.scale_problems, scale, {"BN": 16, "BM": 16}),
                                     (kernels.newton_problems, newton, {"BN": 16, "BM": 16, "HALVINGS": 5})):
        assert list(signature) == fn.arg_names  # the signature written here is the kernel's
        try:
            compiled = triton.compile(ASTSource(fn, signature, constants), target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": 1})
        except RuntimeError as err:
            if "ptxas" in str(err).lower() and "not found" in str(err).lower():
                pytest.skip(f"Triton's ptxas is missing here: {err}")
            raise
        assert compiled.asm["cubin"] and ".local" not in compiled.asm["ptx"]  # machine code, no register spills
