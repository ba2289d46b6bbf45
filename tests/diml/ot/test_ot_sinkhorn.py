"""diml.ot.sinkhorn against POT's float64 log-domain Sinkhorn, plus its flags, gradients and option checks."""

import math

import numpy as np
import pytest
import torch
from ot_testkit import near_duplicates, pot_plan, pot_plans_batched, random_images, reference_terms

from diml.ot import OTOptions, sinkhorn


def _random_problems(B=6, n=5, m=7, seed=0, zeros=True):
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(B, n, m, generator=gen, dtype=torch.float64)
    a = torch.rand(B, n, generator=gen, dtype=torch.float64)
    b = torch.rand(B, m, generator=gen, dtype=torch.float64)
    if zeros:
        a[0, 1] = 0.0
        b[1, :2] = 0.0
    return cost, a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)


def _near_duplicate_problems(n_pairs=6):
    images = random_images(n_pairs, channels=32, cells=9, seed=3)
    S, a, b = reference_terms(*images, *near_duplicates(images, 0.03))
    idx = torch.arange(n_pairs)
    return 1.0 - S[idx, idx], a[idx, idx], b[idx, idx]


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-6)])
def test_plans_match_pot_on_random_costs(dtype, atol):
    cost, a, b = _random_problems()
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    res = sinkhorn(cost.to(dtype), a.to(dtype), b.to(dtype), ot=OTOptions(eps=0.1, tol=tol))
    assert res.plan.dtype == dtype and res.plan.shape == cost.shape
    for k in range(cost.shape[0]):
        ref = pot_plan(cost[k], a[k], b[k], 0.1, stop=1e-13)
        assert np.abs(res.plan[k].double().numpy() - ref).max() <= atol
    assert bool(res.converged.all())
    assert res.marginal_error.shape == (cost.shape[0],)
    assert float(res.marginal_error.max()) <= (1e-12 if dtype == torch.float64 else 1e-6)
    assert float(res.plan[0, 1].abs().max()) == 0.0 and float(res.plan[1, :, :2].abs().max()) == 0.0


def test_potentials_reproduce_the_plan_and_are_minus_inf_off_support():
    cost, a, b = _random_problems()
    res = sinkhorn(cost, a, b, ot=OTOptions(eps=0.1, tol=1e-12))
    gibbs = torch.exp((res.f[:, :, None] + res.g[:, None, :] - cost) / 0.1)
    assert torch.allclose(gibbs, res.plan, rtol=1e-9, atol=1e-15)
    assert res.f[0, 1] == -math.inf and bool((res.g[1, :2] == -math.inf).all())
    assert bool(torch.isfinite(res.f[1:]).all())


def test_near_duplicates_need_and_get_the_newton_polish():
    cost, a, b = _near_duplicate_problems()
    ref = pot_plans_batched(cost, a, b, 0.05)
    polished = sinkhorn(cost.float(), a.float(), b.float(), ot=OTOptions(eps=0.05, max_iter=50))
    assert polished.newton_steps > 0 and bool(polished.converged.all())
    assert float((polished.plan.double() - ref).abs().max()) <= 1e-5
    sim_ref = ((1 - cost) * ref).sum((1, 2))
    assert float((((1 - cost) * polished.plan.double()).sum((1, 2)) - sim_ref).abs().max()) <= 1e-5
    # Without the polish the same budget is honestly reported as not converged.
    raw = sinkhorn(cost.float(), a.float(), b.float(), ot=OTOptions(eps=0.05, max_iter=50, newton_steps=0))
    assert raw.newton_steps == 0 and not bool(raw.converged.all())
    assert float(raw.marginal_error.max()) > 1e-6


def test_converged_problems_stop_and_slow_ones_switch_to_newton_early():
    easy_cost, easy_a, easy_b = _random_problems(B=3, zeros=False, n=9, m=9)
    hard_cost, hard_a, hard_b = _near_duplicate_problems(3)
    cost, a, b = torch.cat([0.2 * easy_cost, hard_cost]), torch.cat([easy_a, hard_a]), torch.cat([easy_b, hard_b])
    res = sinkhorn(cost, a, b, ot=OTOptions(eps=0.05, max_iter=400, tol=1e-9))
    assert res.problem_iterations.shape == (6,) and bool(res.converged.all()) and res.newton_steps > 0
    # The easy problems converged by Sinkhorn alone, each at its own check; the near-duplicates were handed to
    # Newton as soon as their observed rate predicted hundreds of iterations, long before max_iter.
    assert int(res.problem_iterations[:3].max()) <= 30 and 20 <= int(res.problem_iterations[3:].max()) < 100
    assert bool((res.problem_newton_steps[:3] == 0).all()) and bool((res.problem_newton_steps[3:] > 0).all())
    assert int(res.problem_newton_steps.max()) == res.newton_steps
    without = sinkhorn(cost, a, b, ot=OTOptions(eps=0.05, max_iter=400, tol=1e-9, newton_steps=0))
    assert bool((without.problem_iterations[3:] == 400).all()) and not bool(without.converged[3:].all())
    assert torch.equal(without.problem_iterations[:3], res.problem_iterations[:3])


def test_half_precision_cost_is_solved_in_float32():
    cost, a, b = _random_problems(zeros=False)
    res = sinkhorn(cost.half(), a.half(), b.half(), ot=OTOptions(eps=0.1))
    assert res.plan.dtype == torch.float32 and bool(torch.isfinite(res.plan).all())
    ref = sinkhorn(cost.half().float(), a.half().float(), b.half().float(), ot=OTOptions(eps=0.1))
    assert torch.equal(res.plan, ref.plan)


def test_plan_constant_detaches_and_autodiff_matches_gradcheck():
    cost, a, b = _random_problems(B=2, n=3, m=4)
    cost.requires_grad_(True)
    assert not sinkhorn(cost, a, b, ot=OTOptions(eps=0.1)).plan.requires_grad

    def value(c):
        res = sinkhorn(c, a, b, ot=OTOptions(eps=0.1, tol=1e-13, grad="autodiff"))
        return (res.plan * torch.linspace(0, 1, 12, dtype=torch.float64).view(1, 3, 4)).sum((1, 2))

    assert torch.autograd.gradcheck(value, (cost,), eps=1e-6, atol=1e-6)


def test_autodiff_gradient_through_the_newton_polish_matches_finite_differences():
    cost, a, b = _near_duplicate_problems(2)
    cost = cost.clone().requires_grad_(True)
    weights = torch.rand(cost.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = sinkhorn(cost, a, b, ot=OTOptions(eps=0.05, max_iter=20, tol=1e-13, grad="autodiff"))
    assert res.newton_steps > 0
    (grad,) = torch.autograd.grad((res.plan * weights).sum(), cost)
    direction = torch.randn(cost.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = 1e-6
    plus = sinkhorn(cost.detach() + h * direction, a, b, ot=OTOptions(eps=0.05, max_iter=20, tol=1e-13)).plan
    minus = sinkhorn(cost.detach() - h * direction, a, b, ot=OTOptions(eps=0.05, max_iter=20, tol=1e-13)).plan
    numeric = ((plus - minus) * weights).sum() / (2 * h)
    assert abs(float((grad * direction).sum()) - float(numeric)) <= 1e-5 * max(1.0, abs(float(numeric)))


def test_empty_batch():
    res = sinkhorn(torch.zeros(0, 3, 4), torch.zeros(0, 3), torch.zeros(0, 4), ot=OTOptions(eps=0.1))
    assert res.plan.shape == (0, 3, 4) and res.converged.shape == (0,) and res.iterations == 0


_GOOD = dict(eps=0.1, max_iter=10, tol=1e-6, newton_steps=3, check_every=5, grad="plan_constant")


@pytest.mark.parametrize("name, value", [
    ("eps", 0.0), ("eps", -1.0), ("eps", float("nan")), ("eps", "0.1"), ("max_iter", 0), ("max_iter", 2.5),
    ("tol", -1e-3), ("newton_steps", -1), ("check_every", 0), ("grad", "implicit"), ("grad", None),
])
def test_bad_options_raise_value_error_naming_the_option(name, value):
    cost, a, b = _random_problems(B=1, zeros=False)
    with pytest.raises(ValueError, match=name):
        sinkhorn(cost, a, b, ot=OTOptions(**{**_GOOD, name: value}))


def test_bad_problems_raise_value_error():
    cost, a, b = _random_problems(B=2, zeros=False)
    with pytest.raises(ValueError, match="cost"):
        sinkhorn(cost[0], a, b, ot=OTOptions(eps=0.1))
    with pytest.raises(ValueError, match="a and b"):
        sinkhorn(cost, a[:, :3], b, ot=OTOptions(eps=0.1))
    with pytest.raises(ValueError, match="non-negative"):
        sinkhorn(cost, -a, b, ot=OTOptions(eps=0.1))
    with pytest.raises(ValueError, match="same positive mass"):
        sinkhorn(cost, a, 2 * b, ot=OTOptions(eps=0.1))
    with pytest.raises(ValueError, match="finite"):
        sinkhorn(cost.masked_fill(cost > 0.5, float("nan")), a, b, ot=OTOptions(eps=0.1))


def test_small_eps_uses_the_stabilised_path_and_still_matches_pot():
    # log K spans 1 / 0.01 = 100 here: the kernel is shifted per row/column and scalings beyond e^30 are absorbed.
    cost, a, b = _random_problems(B=4, n=6, m=5, seed=3)
    for dtype, atol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        tol = 1e-10 if dtype == torch.float64 else 1e-6
        res = sinkhorn(cost.to(dtype), a.to(dtype), b.to(dtype), ot=OTOptions(eps=0.01, tol=tol))
        assert bool(res.converged.all()) and bool(torch.isfinite(res.plan).all())
        for k in range(4):
            ref = pot_plan(cost[k], a[k], b[k], 0.01, stop=1e-13)
            assert np.abs(res.plan[k].double().numpy() - ref).max() <= atol
