"""Memory-bounded similarity matrices: equal to the Matching similarities, independent of the chunking."""

import pytest
import torch
from ot_testkit import near_duplicates, random_images

from diml.ot import OTOptions, match, match_candidates, structural_similarity, structural_similarity_candidates


def _images():
    query = random_images(5, channels=16, cells=9, seed=30)
    ref = random_images(7, channels=16, cells=9, seed=31)
    # Make a few pairs near-duplicates so that some chunks need the Newton polish and others do not.
    dup = near_duplicates((query[0][:3], query[1][:3]), 0.05)
    return query, (torch.cat([dup[0], ref[0]]), torch.cat([dup[1], ref[1]]))


@pytest.mark.parametrize("marginals", ["cross_attention", "uniform"])
def test_all_pairs_similarity_equals_match_for_every_chunk_size(marginals):
    query, ref = _images()
    expected = match(*query, *ref, ot=OTOptions(marginals=marginals, tol=1e-12)).similarity
    for chunk_size in (1, 4, 10, 11, 35, 10_000):
        got = structural_similarity(*query, *ref, ot=OTOptions(marginals=marginals, tol=1e-12), chunk_size=chunk_size)
        assert got.shape == (5, 10) and got.dtype == torch.float64
        assert float((got - expected).abs().max()) <= 1e-12, chunk_size


def test_float32_chunking_changes_nothing_beyond_rounding():
    query, ref = _images()
    q32, r32 = tuple(t.float() for t in query), tuple(t.float() for t in ref)
    whole = structural_similarity(*q32, *r32, chunk_size=10_000)
    for chunk_size in (3, 17):
        assert float((structural_similarity(*q32, *r32, chunk_size=chunk_size) - whole).abs().max()) <= 1e-6


def test_candidates_similarity_equals_all_pairs_and_match_candidates():
    query, ref = _images()
    full = structural_similarity(*query, *ref, ot=OTOptions(tol=1e-12))
    pick = torch.tensor([[0, 4, 9], [1, 1, 2], [9, 8, 7], [3, 0, 5], [2, 6, 1]])
    c_local, c_global = ref[0][pick], ref[1][pick]
    expected = full[torch.arange(5).unsqueeze(1), pick]
    tight = OTOptions(tol=1e-12)
    assert float((match_candidates(*query, c_local, c_global, ot=tight).similarity - expected).abs().max()) <= 1e-12
    for chunk_size in (1, 3, 7, 1000):
        got = structural_similarity_candidates(*query, c_local, c_global, ot=tight, chunk_size=chunk_size)
        assert got.shape == (5, 3) and float((got - expected).abs().max()) <= 1e-12, chunk_size


def test_gradient_flows_through_chunks():
    query, ref = _images()
    q_local = query[0].clone().requires_grad_(True)
    sim = structural_similarity(q_local, query[1], *ref, chunk_size=4)
    (grad,) = torch.autograd.grad(sim.sum(), q_local)
    (expected,) = torch.autograd.grad(match(q_local, query[1], *ref).similarity.sum(), q_local)
    assert torch.allclose(grad, expected, atol=1e-10)


def test_empty_inputs_give_empty_matrices():
    query, ref = _images()
    assert structural_similarity(query[0][:0], query[1][:0], *ref).shape == (0, 10)
    assert structural_similarity(*query, ref[0][:0], ref[1][:0]).shape == (5, 0)
    assert structural_similarity_candidates(*query, ref[0][:0].expand(5, 0, 16, 9), ref[1][:0].expand(5, 0, 16)
                                            ).shape == (5, 0)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_bad_chunk_size_raises(chunk_size):
    query, ref = _images()
    with pytest.raises(ValueError, match="chunk_size"):
        structural_similarity(*query, *ref, chunk_size=chunk_size)
    with pytest.raises(ValueError, match="chunk_size"):
        structural_similarity_candidates(*query, ref[0][:2].expand(5, 2, 16, 9), ref[1][:2].expand(5, 2, 16),
                                         chunk_size=chunk_size)


@pytest.mark.parametrize("k", [1, 3, 20])  # one candidate (evaluation pairs), few (GEMM of copies), many (per query)
def test_prenormalised_candidates_give_the_same_similarities(k):
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(7)
    q_local, q_global = torch.randn(4, 16, 9, generator=gen), torch.randn(4, 16, generator=gen)
    c_local, c_global = 3 * torch.randn(4, k, 16, 9, generator=gen), torch.randn(4, k, 16, generator=gen)
    raw = structural_similarity_candidates(q_local, q_global, c_local, c_global)
    unit = structural_similarity_candidates(F.normalize(q_local, dim=1), F.normalize(q_global, dim=1),
                                            F.normalize(c_local, dim=2), F.normalize(c_global, dim=2),
                                            normalized=True)
    assert raw.shape == (4, k) and float((raw - unit).abs().max()) <= 1e-5
    reference = torch.stack([structural_similarity(q_local[p:p + 1], q_global[p:p + 1], c_local[p], c_global[p])[0]
                             for p in range(4)])
    assert float((raw - reference).abs().max()) <= 1e-5
    # a broken promise is caught (cell similarities beyond [-1, 1]) instead of giving wrong numbers
    with pytest.raises(ValueError, match="normalized=True"):
        structural_similarity_candidates(q_local, q_global, c_local, c_global, normalized=True)


def test_normalized_must_be_a_bool():
    query, ref = _images()
    with pytest.raises(ValueError, match="normalized must be True or False"):
        structural_similarity_candidates(query[0], query[1], ref[0][None], ref[1][None], normalized="yes")


@pytest.mark.parametrize("k", [1, 20])
def test_candidate_gradients_match_finite_differences_on_every_products_path(k):
    gen = torch.Generator().manual_seed(9)
    q_local = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    q_global = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    c_local = torch.randn(2, k, 6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    c_global = torch.randn(2, k, 6, generator=gen, dtype=torch.float64)
    autodiff = OTOptions(tol=1e-12, grad="autodiff")
    torch.autograd.gradcheck(lambda ql, cl: structural_similarity_candidates(ql, q_global, cl, c_global, ot=autodiff),
                             (q_local, c_local), eps=1e-6, atol=1e-5)
    # plan_constant (the default) differentiates through the cell similarities: the same on both paths
    sim = structural_similarity_candidates(q_local, q_global, c_local, c_global)
    grads = torch.autograd.grad(sim.sum(), (q_local, c_local))
    assert all(bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0 for g in grads)


@pytest.mark.parametrize("k", [1, 20])
def test_a_zero_candidate_cell_keeps_finite_gradients(k):
    gen = torch.Generator().manual_seed(11)
    q_local = torch.randn(2, 8, 4, generator=gen, requires_grad=True)
    c_local = torch.randn(2, k, 8, 4, generator=gen)
    c_local[:, 0, :, 1] = 0.0  # a dead cell (e.g. an all-zero feature column)
    c_local.requires_grad_(True)
    sim = structural_similarity_candidates(q_local, torch.randn(2, 8, generator=gen), c_local,
                                           torch.randn(2, k, 8, generator=gen))
    sim.sum().backward()
    assert bool(torch.isfinite(q_local.grad).all()) and bool(torch.isfinite(c_local.grad).all())
