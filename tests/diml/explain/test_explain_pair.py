"""explain_pair: contributions, similarity, marginals and the exact plan against independent POT / scipy references."""

import json

import numpy as np
import ot
import pytest
import torch
from scipy.optimize import linprog

from diml.explain import Explanation, explain_pair
from diml.ot import OTOptions

EPS = 0.05
# The entropic plan is solved (float64) to the default marginal error OTOptions().tol: it is feasible, and so its
# similarity bounded by the exact optimum, only up to that (|S| <= 1), not to float64 rounding.
SOLVER_TOL = OTOptions().tol
# POT takes log(a) of the cross-attention weights, some of which relu sets to exactly zero
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")


def _reference(q_local, q_global, r_local, r_global, marginals):
    """Independent float64 computation of S, a, b and the Sinkhorn plan (POT, log domain)."""
    ql = q_local.double().numpy()
    rl = r_local.double().numpy()
    ql, rl = ql / np.linalg.norm(ql, axis=0), rl / np.linalg.norm(rl, axis=0)
    qg = q_global.double().numpy() / np.linalg.norm(q_global.double().numpy())
    rg = r_global.double().numpy() / np.linalg.norm(r_global.double().numpy())
    sim = ql.T @ rl
    cells = sim.shape[0]
    if marginals == "uniform":
        a = b = np.full(cells, 1.0 / cells)
    else:
        a, b = np.maximum(rg @ ql, 0.0), np.maximum(qg @ rl, 0.0)
        a, b = a / a.sum(), b / b.sum()
    plan = ot.sinkhorn(a, b, 1.0 - sim, EPS, method="sinkhorn_log", numItermax=20000, stopThr=1e-10)
    return sim, a, b, plan


def _features(seed, channels=12, grid=3, noise=None):
    gen = torch.Generator().manual_seed(seed)
    cells = grid * grid
    q_local = torch.randn(channels, cells, generator=gen)
    r_local = torch.randn(channels, cells, generator=gen)
    if noise is not None:  # the reference is a perturbed copy of the query
        r_local = q_local + noise * r_local
    # globals correlated with the cells so that cross-attention keeps several cells alive
    q_global = q_local.mean(1) + 0.3 * torch.randn(channels, generator=gen)
    r_global = r_local.mean(1) + 0.3 * torch.randn(channels, generator=gen)
    return q_local, q_global, r_local, r_global


@pytest.mark.parametrize("marginals", ["cross_attention", "uniform"])
def test_contributions_sum_to_a_similarity_equal_to_pot(marginals):
    q_local, q_global, r_local, r_global = _features(1)
    e = explain_pair(q_local, q_global, r_local, r_global, grid=3, ot=OTOptions(eps=EPS, marginals=marginals))
    sim, a, b, plan = _reference(q_local, q_global, r_local, r_global, marginals)
    assert abs(e.contributions.sum() - e.similarity) <= 1e-6
    np.testing.assert_allclose(e.contributions, e.plan * e.cell_sim, rtol=0, atol=1e-15)
    assert abs(e.similarity - float((plan * sim).sum())) <= 1e-5
    np.testing.assert_allclose(e.cell_sim, sim, atol=1e-12)
    np.testing.assert_allclose(e.query_weights, a, atol=1e-12)
    np.testing.assert_allclose(e.ref_weights, b, atol=1e-12)
    np.testing.assert_allclose(e.plan, plan, atol=1e-5)
    np.testing.assert_allclose(e.query_heatmap, a.reshape(3, 3), atol=1e-12)  # row-major cells
    cosine = float(q_global @ r_global / (q_global.norm() * r_global.norm()))
    assert e.global_similarity == pytest.approx(cosine, abs=1e-6)


def test_near_duplicates_keep_exact_contributions_and_marginals():
    q_local, q_global, r_local, r_global = _features(7, grid=4, noise=0.01)
    e = explain_pair(q_local, q_global, r_local, r_global, grid=4, exact=True)
    assert abs(e.contributions.sum() - e.similarity) <= 1e-6
    sim, a, b, _ = _reference(q_local, q_global, r_local, r_global, "cross_attention")
    np.testing.assert_allclose(e.plan.sum(1), a, atol=1e-6)
    np.testing.assert_allclose(e.plan.sum(0), b, atol=1e-6)
    # <T_eps, C> - eps H(T_eps) <= <T*, C> - eps H(T*) and H(T*) >= 0 bound the gap to the exact optimum
    entropy = -float(np.sum(e.plan[e.plan > 0] * np.log(e.plan[e.plan > 0])))
    assert e.similarity <= e.exact_similarity + SOLVER_TOL
    assert e.exact_similarity - e.similarity <= EPS * entropy + SOLVER_TOL


def test_top_pairs_are_the_largest_contributions_with_cell_coordinates():
    q_local, q_global, r_local, r_global = _features(2, grid=4)
    e = explain_pair(q_local, q_global, r_local, r_global, grid=4, top=6, query_id="q.png", ref_id="r.png")
    expected = np.sort(e.contributions.reshape(-1))[::-1][:6]
    assert [p.contribution for p in e.top_pairs] == pytest.approx(expected.tolist(), abs=0)
    for rank, pair in enumerate(e.top_pairs, start=1):
        assert pair.rank == rank
        assert pair.query_rc == (pair.query_cell // 4, pair.query_cell % 4)
        assert pair.ref_rc == (pair.ref_cell // 4, pair.ref_cell % 4)
        assert pair.transport == e.plan[pair.query_cell, pair.ref_cell]
        assert pair.cell_similarity == e.cell_sim[pair.query_cell, pair.ref_cell]
        assert pair.share == pytest.approx(pair.contribution / e.similarity, rel=1e-12)
    assert (e.query_id, e.ref_id) == ("q.png", "r.png")


def test_exact_plan_is_pot_emd_and_the_lp_optimum():
    q_local, q_global, r_local, r_global = _features(3)
    e = explain_pair(q_local, q_global, r_local, r_global, grid=3, exact=True)
    sim, a, b, _ = _reference(q_local, q_global, r_local, r_global, "cross_attention")
    np.testing.assert_allclose(e.exact_plan, ot.emd(a, b, 1.0 - sim), atol=1e-9)
    # independent LP solve of max <T, S> s.t. T 1 = a, T^T 1 = b, T >= 0
    n = len(a)
    rows = np.kron(np.eye(n), np.ones(n))
    cols = np.kron(np.ones(n), np.eye(n))
    lp = linprog(-sim.reshape(-1), A_eq=np.vstack([rows, cols]), b_eq=np.concatenate([a, b]), bounds=(0, None),
                 method="highs")
    assert e.exact_similarity == pytest.approx(-lp.fun, abs=1e-9)
    assert e.exact_similarity >= e.similarity - SOLVER_TOL  # the entropic plan is feasible, so never better
    plain = explain_pair(q_local, q_global, r_local, r_global, grid=3)
    assert plain.exact_plan is None and plain.exact_similarity is None


def test_json_round_trip_is_exact_and_plain():
    q_local, q_global, r_local, r_global = _features(4, grid=2)
    e = explain_pair(q_local, q_global, r_local, r_global, grid=2, exact=True, query_id="a/1.jpg", ref_id="b/2.jpg")
    text = e.to_json()
    back = Explanation.from_json(text)
    assert back == e
    assert back.to_json() == text
    for name in ("plan", "cell_sim", "contributions", "query_weights", "ref_weights", "exact_plan"):
        assert np.array_equal(getattr(back, name), getattr(e, name)), name
    assert back.similarity == e.similarity and back.top_pairs == e.top_pairs
    data = json.loads(text)
    assert data["grid"] == 2 and data["query_id"] == "a/1.jpg" and data["ref_id"] == "b/2.jpg"
    assert data["query_weights"] == e.query_heatmap.tolist() and len(data["plan"]) == 4
    other = explain_pair(r_local, r_global, q_local, q_global, grid=2)
    assert other != e


def test_from_json_rejects_other_data():
    with pytest.raises(ValueError, match="not valid JSON"):
        Explanation.from_json("{not json")
    with pytest.raises(ValueError, match="format"):
        Explanation.from_json(json.dumps({"grid": 2}))
    with pytest.raises(ValueError, match="incomplete"):
        Explanation.from_json(json.dumps({"format": 1, "grid": 2}))


def test_bad_inputs_name_the_argument():
    q_local, q_global, r_local, r_global = _features(6)
    with pytest.raises(ValueError, match="grid"):
        explain_pair(q_local, q_global, r_local, r_global, grid=4)
    with pytest.raises(ValueError, match="shapes must agree"):
        explain_pair(q_local, q_global, r_local[:5], r_global[:5], grid=3)
    with pytest.raises(ValueError, match="top"):
        explain_pair(q_local, q_global, r_local, r_global, grid=3, top=0)
    with pytest.raises(ValueError, match="q_local"):
        explain_pair(q_local.numpy(), q_global, r_local, r_global, grid=3)
    with pytest.raises(ValueError, match="r_local"):
        explain_pair(q_local, q_global, r_local[None], r_global, grid=3)
