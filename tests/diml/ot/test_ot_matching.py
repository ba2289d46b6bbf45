"""diml.ot.match / match_candidates: terms against a hand loop, plans and similarities against POT float64,
degenerate inputs, precision and gradient modes."""

import pytest
import torch
import torch.nn.functional as F
from ot_testkit import certified_plan, correlated_images, near_duplicates, pot_plan, random_images, reference_terms

from diml.ot import OTOptions, match, match_candidates


def _pairs(kind):
    if kind == "random":
        return random_images(3, seed=0), random_images(4, seed=1)
    images = random_images(3, seed=2) if kind.startswith("near_duplicate_independent") else correlated_images(3, seed=4)
    return images, near_duplicates(images, 0.1 if kind.endswith("_cross") else 0.03)


def _float(images):
    return tuple(t.float() for t in images)


@pytest.mark.parametrize("kind, marginals", [
    ("random", "cross_attention"), ("random", "uniform"),
    ("near_duplicate_independent_cross", "cross_attention"), ("near_duplicate_correlated_cross", "cross_attention"),
    ("near_duplicate_independent", "uniform"), ("near_duplicate_correlated", "uniform"),
])
def test_match_agrees_with_float64_reference(kind, marginals):
    """float32 match vs POT float64 (``ot.sinkhorn``, log domain, stopThr 1e-12); for uniform marginals on
    near-duplicates POT needs > 10^5 iterations, so the reference there is a certified optimum that POT confirms."""
    query, ref = _pairs(kind)
    m = match(*_float(query), *_float(ref), ot=OTOptions(marginals=marginals))
    S, a, b = reference_terms(*query, *ref, marginals=marginals)
    nq, nr, r = a.shape
    if marginals == "uniform" and kind != "random":
        plans = certified_plan(1 - S.view(-1, r, r), a.view(-1, r), b.view(-1, r), 0.05).view(nq, nr, r, r)
    else:
        plans = torch.stack([torch.from_numpy(pot_plan(1 - S[p, q], a[p, q], b[p, q], 0.05, stop=1e-12))
                             for p in range(nq) for q in range(nr)]).view(nq, nr, r, r)
    assert bool(m.converged.all())
    assert float((m.plan.double() - plans).abs().max()) <= 1e-5
    assert float((m.similarity.double() - (plans * S).sum((-1, -2))).abs().max()) <= 1e-5
    assert float((m.plan.double().sum(-1) - a).abs().max()) <= 1e-5
    assert float((m.plan.double().sum(-2) - b).abs().max()) <= 1e-5


def test_terms_follow_the_evaluation_orientation():
    query, ref = random_images(2, channels=8, cells=4, seed=5), random_images(3, channels=8, cells=4, seed=6)
    m = match(*query, *ref)
    S, a, b = reference_terms(*query, *ref)
    assert m.plan.shape == m.cell_sim.shape == (2, 3, 4, 4) and m.a.shape == m.b.shape == (2, 3, 4)
    assert torch.allclose(m.cell_sim, S, atol=1e-12)
    assert torch.allclose(m.a, a, atol=1e-12) and torch.allclose(m.b, b, atol=1e-12)
    assert torch.allclose(m.similarity, (m.plan * m.cell_sim).sum((-1, -2)), atol=1e-14)


def test_hand_computed_two_cell_example():
    # Query cells e1, e2; reference cells e2, -e1 (C = 2, R = 2); globals chosen so that attention is one-hot.
    q_local = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)  # (1, C, R): columns are cells
    r_local = torch.tensor([[[0.0, -1.0], [1.0, 0.0]]], dtype=torch.float64)
    q_global = torch.tensor([[0.0, 2.0]], dtype=torch.float64)  # attends to reference cell 0 (e2) only
    r_global = torch.tensor([[3.0, 0.0]], dtype=torch.float64)  # attends to query cell 0 (e1) only
    m = match(q_local, q_global, r_local, r_global)
    assert torch.equal(m.cell_sim[0, 0], torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64))
    assert m.a[0, 0].tolist() == [1.0, 0.0] and m.b[0, 0].tolist() == [1.0, 0.0]
    # All the mass goes from query cell 0 to reference cell 0, whose cosine is 0.
    assert torch.allclose(m.plan[0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64), atol=1e-12)
    assert abs(float(m.similarity)) <= 1e-12


def test_degenerate_inputs_stay_finite_in_float32():
    query = random_images(3, channels=16, seed=7)
    cases = {
        "near_duplicates": (query, near_duplicates(query, 1e-4)),
        "identical": (query, query),
        "all_negative_attention": ((query[0].abs(), query[1]), (query[0], -torch.ones_like(query[1]))),
        "single_cell": (random_images(3, cells=1, seed=8), random_images(2, cells=1, seed=9)),
        "one_channel": (random_images(3, channels=1, seed=10), random_images(2, channels=1, seed=11)),
    }
    for name, (q, r) in cases.items():
        m = match(*_float(q), *_float(r))
        for field in (m.plan, m.a, m.b, m.similarity, m.marginal_error):
            assert bool(torch.isfinite(field).all()), name
        assert bool(m.converged.all()), name
        assert float((m.similarity - m.similarity.clamp(-1, 1)).abs().max()) <= 1e-6, name
    m = match(*_float(cases["all_negative_attention"][0]), *_float(cases["all_negative_attention"][1]))
    assert bool((m.a == 1.0 / 16).all())  # relu killed every query cell: uniform fallback
    single = match(*_float(cases["single_cell"][0]), *_float(cases["single_cell"][1]))
    assert torch.allclose(single.similarity, single.cell_sim[..., 0, 0]) and bool((single.plan == 1).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    query, ref = random_images(3, seed=12), random_images(2, seed=13)
    half = tuple(t.to(dtype) for t in (*query, *ref))
    m = match(*half)
    assert m.similarity.dtype == torch.float32 and bool(torch.isfinite(m.plan).all())
    ref_m = match(*(t.float() for t in half))
    assert torch.allclose(m.similarity, ref_m.similarity, atol=1e-6)


def test_candidates_form_equals_all_pairs_form():
    query, ref = random_images(3, seed=14), random_images(5, seed=15)
    full = match(*_float(query), *_float(ref))
    pick = torch.tensor([[4, 0], [2, 2], [1, 3]])
    cand = match_candidates(*_float(query), ref[0].float()[pick], ref[1].float()[pick])
    rows = torch.arange(3).unsqueeze(1)
    assert cand.plan.shape == (3, 2, 16, 16) and cand.similarity.shape == (3, 2)
    for field in ("plan", "cell_sim", "a", "b", "similarity"):
        assert torch.allclose(getattr(cand, field), getattr(full, field)[rows, pick], atol=1e-6), field


def test_plan_constant_gradient_is_the_gradient_of_sum_detached_plan_times_cells():
    query, ref = random_images(2, channels=8, cells=4, seed=16), random_images(2, channels=8, cells=4, seed=17)
    q_local = query[0].clone().requires_grad_(True)
    m = match(q_local, query[1], *ref)
    assert not m.plan.requires_grad and m.cell_sim.requires_grad
    (grad,) = torch.autograd.grad(m.similarity.sum(), q_local)
    q_hat = F.normalize(q_local, dim=1)
    manual_S = torch.einsum("pci,qcj->pqij", q_hat, F.normalize(ref[0], dim=1))
    (expected,) = torch.autograd.grad((m.plan.detach() * manual_S).sum(), q_local)
    assert torch.allclose(grad, expected, atol=1e-12)
    m_auto = match(q_local, query[1], *ref, ot=OTOptions(grad="autodiff", tol=1e-12))
    (grad_auto,) = torch.autograd.grad(m_auto.similarity.sum(), q_local)
    assert float((grad_auto - grad).abs().max()) > 1e-3  # the plan's own dependence on the features counts


def test_autodiff_gradient_passes_gradcheck():
    query, ref = random_images(1, channels=3, cells=4, seed=18), random_images(2, channels=3, cells=4, seed=19)
    inputs = (query[0].clone().requires_grad_(True), query[1].clone().requires_grad_(True), ref[0], ref[1])

    def similarity(ql, qg, rl, rg):
        return match(ql, qg, rl, rg, ot=OTOptions(eps=0.1, tol=1e-13, grad="autodiff")).similarity

    assert torch.autograd.gradcheck(similarity, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, word", [
    (dict(marginals="softmax"), "marginals"), (dict(grad="none"), "grad"), (dict(eps=-0.1), "eps"),
    (dict(max_iter=0), "max_iter"), (dict(tol=float("inf")), "tol"),
])
def test_bad_options_raise(kwargs, word):
    query, ref = random_images(1, seed=20), random_images(1, seed=21)
    with pytest.raises(ValueError, match=word):
        match(*query, *ref, ot=OTOptions(**kwargs))


def test_bad_shapes_raise():
    query, ref = random_images(2, seed=22), random_images(2, seed=23)
    with pytest.raises(ValueError, match="r_local"):
        match(*query, ref[0][:, :5], ref[1])
    with pytest.raises(ValueError, match="q_global"):
        match(query[0], query[1][:1], *ref)
    with pytest.raises(ValueError, match="c_local"):
        match_candidates(*query, *ref)
    with pytest.raises(ValueError, match="floating"):
        match(query[0].long(), *query[1:], *ref)


def test_small_eps_matches_pot():
    # eps = 0.02: (S - 1) / eps spans 100, beyond the direct-exponential range, so the shifted kernel is used.
    query, ref = random_images(2, seed=24), random_images(3, seed=25)
    m = match(*_float(query), *_float(ref), ot=OTOptions(eps=0.02))
    S, a, b = reference_terms(*query, *ref)
    for p in range(2):
        for q in range(3):
            plan = torch.from_numpy(pot_plan(1 - S[p, q], a[p, q], b[p, q], 0.02, stop=1e-12))
            assert float((m.plan[p, q].double() - plan).abs().max()) <= 1e-5
            assert abs(float(m.similarity[p, q]) - float((plan * S[p, q]).sum())) <= 1e-5


def test_candidate_products_per_query_equal_the_transposed_copy_path():
    from diml.ot.matching import candidate_products

    gen = torch.Generator().manual_seed(26)
    qn = F.normalize(torch.randn(3, 8, 4, generator=gen, dtype=torch.float64), dim=1)
    qg = F.normalize(torch.randn(3, 8, generator=gen, dtype=torch.float64), dim=1)
    c_local = torch.randn(3, 5, 8, 4, generator=gen, dtype=torch.float64)
    loop_p, loop_n = candidate_products(qn, qg, c_local, per_query=True)
    copy_p, copy_n = candidate_products(qn, qg, c_local, per_query=False)
    expected = torch.einsum("pkcj,pci->pkij", c_local, torch.cat([qn, qg.unsqueeze(2)], 2))
    one_p, one_n = candidate_products(qn, qg, c_local[:, :1], per_query=False)
    assert torch.allclose(one_p, expected[:, :1]) and torch.allclose(one_n, c_local[:, :1].norm(dim=2))
    assert loop_p.shape == (3, 5, 5, 4) and torch.allclose(loop_p, expected) and torch.allclose(copy_p, expected)
    assert torch.allclose(loop_n, c_local.norm(dim=2)) and torch.allclose(copy_n, c_local.norm(dim=2))
