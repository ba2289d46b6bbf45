"""The compiled CPU scaling phase (diml.ot._cpu) against the tensor path and against POT in float64."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ot_testkit import near_duplicates, pot_plan, random_images, reference_terms

from diml.ot import OTOptions, _cpu, match, structural_similarity
from diml.ot.similarity import _similarities
from diml.ot._scaling import LogKernel
from diml.ot.sinkhorn import solve

pytestmark = pytest.mark.skipif(not _cpu.ENABLED, reason="numba is not installed or DIML_OT_CPU_KERNEL=0")

EPS = 0.05


def _terms(n_images=9, cells=16, seed=0, dup_noise=None):
    """Cell similarities and marginals of all pairs of ``n_images`` (plus near-duplicates if ``dup_noise``)."""
    images = random_images(n_images, channels=32, cells=cells, seed=seed)
    if dup_noise is not None:
        dup = near_duplicates(images, dup_noise)
        images = (torch.cat([images[0], dup[0]]), torch.cat([images[1], dup[1]]))
    S, a, b = reference_terms(*images, *images)
    return S.reshape(-1, cells, cells), a.reshape(-1, cells), b.reshape(-1, cells)


def _solve(S, a, b, compiled: bool, monkeypatch, **kw):
    monkeypatch.setattr(_cpu, "ENABLED", compiled)
    opts = OTOptions(eps=EPS, max_iter=300, tol=1e-6, newton_steps=30, check_every=5, grad="plan_constant")
    return solve(LogKernel(S, 1 / EPS, -1 / EPS), a, b, opts.replace(**kw), direct=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_iterations_and_plans_as_the_tensor_path(dtype, monkeypatch):
    # 9 random images plus their near-duplicates: 324 pairs, more than the lanes, mixing fast, slow and polished
    S, a, b = (t.to(dtype) for t in _terms(dup_noise=0.03))
    a[3, :5] = 0.0  # zero-mass rows and columns
    b[7, 2] = 0.0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    compiled = _solve(S, a, b, True, monkeypatch)
    tensor = _solve(S, a, b, False, monkeypatch)
    assert compiled.plan.dtype == dtype
    assert int((compiled.problem_newton_steps > 0).sum()) >= 10  # the near-duplicates went to the polish
    assert int((compiled.problem_newton_steps == 0).sum()) >= 100
    # The same algorithm: the same checks and switch rule.  Summation order differs, so a problem whose error sits
    # at a threshold at some check may leave one check (5 iterations) earlier or later on the other path.  In
    # float32 the L1 marginal error of 32 entries carries rounding noise within a few times of tol / 2 = 5e-7, and
    # how many problems sit there depends on the SIMD width and FMA of both paths (twice as many without FMA, e.g.
    # NUMBA_CPU_NAME=generic): up to 10 %; a path with other checks or another switch rule differs on most problems.
    differ = compiled.problem_iterations != tensor.problem_iterations
    assert int(differ.sum()) <= (0.10 if dtype == torch.float32 else 0.05) * len(differ)
    assert int((compiled.problem_iterations - tensor.problem_iterations).abs().max()) <= 5
    assert float((compiled.plan - tensor.plan).abs().max()) <= 1e-6
    # the compiled Newton polish takes the tensor polish's steps (same directions, line search and tests)
    same_start = ~differ
    assert torch.equal(compiled.problem_newton_steps[same_start], tensor.problem_newton_steps[same_start])
    assert bool(compiled.converged.all()) and float(compiled.marginal_error.max()) <= 1e-6
    assert float(compiled.plan[3, :5].abs().max()) == 0.0 and float(compiled.plan[7, :, 2].abs().max()) == 0.0
    assert compiled.f[3, 0] == -float("inf") and compiled.g[7, 2] == -float("inf")


def test_plans_match_pot_in_float64(monkeypatch):
    # random images (the near-duplicates' polished plans are checked against POT in test_ot_sinkhorn; here the
    # compiled path agrees with the tensor path on them, above)
    S, a, b = _terms(n_images=5, cells=9, seed=5)
    res = _solve(S.float(), a.float(), b.float(), True, monkeypatch)
    off_diagonal = [k for k in range(S.shape[0]) if k // 5 != k % 5]  # self-pairs are near-permutations
    assert bool((res.problem_newton_steps[off_diagonal] == 0).all())
    for k in off_diagonal:
        ref = pot_plan(1 - S[k], a[k], b[k], EPS, stop=1e-12)
        assert np.abs(res.plan[k].double().numpy() - ref).max() <= 1e-5


def test_rectangular_problems_fewer_than_the_lanes_and_one_problem(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    for B in (1, 5, _cpu.LANES + 1):
        S = torch.rand(B, 4, 7, generator=gen) * 2 - 1
        a = torch.rand(B, 4, generator=gen)
        b = torch.rand(B, 7, generator=gen)
        a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
        compiled = _solve(S, a, b, True, monkeypatch)
        tensor = _solve(S, a, b, False, monkeypatch)
        assert int((compiled.problem_iterations - tensor.problem_iterations).abs().max()) <= 5
        assert float((compiled.plan - tensor.plan).abs().max()) <= 1e-6


def test_max_iter_without_polish_reports_the_unconverged_iterate(monkeypatch):
    S, a, b = _terms(n_images=3, dup_noise=0.02)
    compiled = _solve(S.float(), a.float(), b.float(), True, monkeypatch, max_iter=12, newton_steps=0)
    tensor = _solve(S.float(), a.float(), b.float(), False, monkeypatch, max_iter=12, newton_steps=0)
    assert int(compiled.problem_iterations.max()) == 12 and not bool(compiled.converged.all())
    assert torch.equal(compiled.converged, tensor.converged)
    assert float((compiled.plan - tensor.plan).abs().max()) <= 1e-6


def test_public_functions_agree_with_the_tensor_path(monkeypatch):
    q = random_images(6, channels=32, cells=16, seed=8)
    r = near_duplicates(q, 0.1)
    args = (q[0].float(), q[1].float(), r[0].float(), r[1].float())
    sims = {}
    for compiled in (True, False):
        monkeypatch.setattr(_cpu, "ENABLED", compiled)
        sims[compiled] = structural_similarity(*args, chunk_size=7)
    assert float((sims[True] - sims[False]).abs().max()) <= 1e-6
    # autodiff never takes the compiled path (it needs the graph), and still gives the same values
    monkeypatch.setattr(_cpu, "ENABLED", True)
    grad_args = [t.clone().requires_grad_(True) for t in args]
    autodiff = match(*grad_args, ot=OTOptions(grad="autodiff"))
    autodiff.similarity.sum().backward()
    assert grad_args[0].grad is not None
    assert float((autodiff.similarity.detach() - sims[True]).abs().max()) <= 1e-5


def test_numba_is_imported_on_first_use_only():
    code = ("import sys, torch; from diml.ot import structural_similarity; import diml.evaluation; "
            "before = 'numba' in sys.modules; "
            "x = torch.randn(3, 4, 4); structural_similarity(x, x.mean(2), x, x.mean(2)); "
            "print(before, 'numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_environment_variable_disables_the_compiled_path():
    code = "from diml.ot import _cpu; print(_cpu.ENABLED)"
    env = {**os.environ, "DIML_OT_CPU_KERNEL": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_compiled_polish_reaches_float64_precision_with_the_tensor_polish_steps(monkeypatch):
    S, a, b = _terms(n_images=4, dup_noise=0.02)
    S, a, b = S.double(), a.double(), b.double()
    runs = {}
    for compiled in (True, False):
        runs[compiled] = _solve(S, a, b, compiled, monkeypatch, tol=1e-12, max_iter=20)
    polished = runs[True].problem_newton_steps > 0
    assert int(polished.sum()) >= 8
    assert float(runs[True].marginal_error.max()) <= 1e-12
    assert torch.equal(runs[True].problem_newton_steps, runs[False].problem_newton_steps)
    assert float((runs[True].plan - runs[False].plan).abs().max()) <= 1e-12


def test_cholesky_solve_and_its_failure_report():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    spd, rhs = m @ m.T + 0.1 * torch.eye(6, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)
    out = np.empty(6)
    _cpu.compile_kernels()
    assert _cpu._cholesky_solve(spd.numpy().copy(), rhs.numpy(), out)
    assert np.abs(out - torch.linalg.solve(spd, rhs).numpy()).max() <= 1e-10
    indefinite = spd.numpy().copy()
    indefinite[3, 3] = -1.0
    assert not _cpu._cholesky_solve(indefinite, rhs.numpy(), out)


def _block_terms(dtype, dup_noise=0.03):
    """All pairs of 9 images (and their near-duplicates if ``dup_noise``) as a block: ``S (N, N, R, R)`` as the
    strided view that pair_terms_all returns (query cells x reference cells, transposed), with zero-mass rows and
    columns."""
    S, a, b = _terms(dup_noise=dup_noise)
    S, a, b = (t.to(dtype) for t in (S, a, b))
    a[3, :5] = 0.0
    b[7, 2] = 0.0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    n = int(round(S.shape[0] ** 0.5))
    strided = S.view(n, n, 16, 16).transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided.is_contiguous()
    return strided, a.view(n, n, 16), b.view(n, n, 16)


def _counting_polish(monkeypatch):
    _cpu.compile_kernels()
    polished = []
    kernel = _cpu._polish_similarities

    def counting(src, a, b, x, y, status, lo, hi, *args):
        polished.append(int((status[lo:hi] == 1).sum()))
        return kernel(src, a, b, x, y, status, lo, hi, *args)

    monkeypatch.setattr(_cpu, "_polish_similarities", counting)
    return polished


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_similarities_equal_the_plan_pipeline(dtype, monkeypatch):
    S, a, b = _block_terms(dtype)
    polished = _counting_polish(monkeypatch)
    opts = OTOptions(eps=EPS, tol=1e-6)
    fused = _similarities(S, a, b, opts)
    assert fused.dtype == dtype and fused.shape == (18, 18)
    assert sum(polished) >= 10  # the near-duplicates went to the polish
    monkeypatch.setattr(_cpu, "ENABLED", False)  # the tensor pipeline: plans, then sum(T * S)
    tensor = _similarities(S, a, b, opts)
    assert float((fused - tensor).abs().max()) <= 1e-6


def test_fused_similarities_match_pot_in_float64():
    S, a, b = _block_terms(torch.float64, dup_noise=None)
    S, a, b = S[:4, 4:], a[:4, 4:], b[:4, 4:]  # no self-pairs (near-permutations, slow for POT)
    fused = _similarities(S, a, b, OTOptions(eps=EPS, tol=1e-10))
    for q in range(4):
        for k in range(5):
            plan = pot_plan(1 - S[q, k], a[q, k], b[q, k], EPS, stop=1e-12)
            assert abs(float(fused[q, k]) - float((plan * S[q, k].numpy()).sum())) <= 1e-8


def test_fused_similarities_without_polish_report_the_unconverged_iterate(monkeypatch):
    S, a, b = _block_terms(torch.float32)
    opts = OTOptions(eps=EPS, max_iter=12, newton_steps=0)
    fused = _similarities(S, a, b, opts)
    monkeypatch.setattr(_cpu, "ENABLED", False)
    assert float((fused - _similarities(S, a, b, opts)).abs().max()) <= 1e-6


@pytest.mark.parametrize("where", ["S", "a", "b"])
def test_fused_similarities_raise_the_pipeline_errors(where):
    S, a, b = (t.clone() for t in _block_terms(torch.float32))
    {"S": S, "a": a, "b": b}[where][2, 5, 3] = float("nan")
    with pytest.raises(ValueError, match="contain NaN or inf"):
        _similarities(S, a, b, OTOptions(eps=EPS))
    S, a, b = _block_terms(torch.float32)
    S = S * 1.01
    with pytest.raises(ValueError, match=r"cell cosine similarities reach 1\.01, beyond \[-1, 1\]"):
        _similarities(S, a, b, OTOptions(eps=EPS))
