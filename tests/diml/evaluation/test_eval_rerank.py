"""Re-ranking at several depths against a per-query brute-force loop (full sort, re-rank the top K)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diml.evaluation import evaluate, iter_rankings, unique_pairs
from diml.ot import OTOptions, structural_similarity_candidates

DEPTHS = (1, 5, 20, 37)


def _cell_dot(q_local, q_global, c_local, c_global):
    """A hand-made symmetric stage-2 score: mean dot product of corresponding cells, (B, K)."""
    return torch.einsum("bcr,bkcr->bk", q_local, c_local) / q_local.shape[-1]


def _asymmetric(q_local, q_global, c_local, c_global):
    """A hand-made asymmetric stage-2 score: query cells against the candidate's first cell, (B, K)."""
    return torch.einsum("bc,bkc->bk", q_local.mean(dim=2), c_local[..., 0])


# The metrics are means of per-query counts, compared to float64 rounding (abs=1e-9) across paths that compute the
# scores in float32 (ours) and float64 (the loops), or solve the matching in other batches: they rank alike because
# the sets below hold no near-tie between a positive and a negative, or across a depth, closer than 4e-6, above
# float32 rounding (< 1e-6 here) and the solver's tol (1e-6). test_rankings_* compares orders, near-ties included.
def _data(seed=0, n=160, dim=8, cells=4):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 25, (n,), generator=gen)
    local = torch.randn(n, dim, cells, generator=gen) + 0.8 * torch.randn(25, dim, cells, generator=gen)[labels]
    return local.mean(dim=2) + 0.3 * torch.randn(n, dim, generator=gen), labels, local


def _brute_force(glob, local, i, depths, score=_cell_dot):
    """Query ``i``: full argsort of the global cosine (query removed), stage-2 + global on the first ``depth``.

    Returns ``{depth: (ranking, key)}``: the ranked gallery indices and, per index, the float64 score that ordered
    it (stage-2 + cosine in the head, cosine in the tail).
    """
    x = F.normalize(glob.double(), dim=1)
    cos = x @ x[i]
    order = [j for j in torch.argsort(cos, descending=True, stable=True).tolist() if j != i]
    deepest = order[: max(depths)]
    stage2 = score(local[i][None], glob[i][None], local[deepest][None], glob[deepest][None])[0].double()
    out = {}
    for depth in depths:
        head = order[:depth]
        final = stage2[:depth] + cos[head]
        reranked = [head[j] for j in torch.argsort(final, descending=True, stable=True).tolist()]
        key = {j: float(cos[j]) for j in order} | {j: float(f) for j, f in zip(head, final)}
        out[depth] = (reranked + order[depth:], key)
    return out


def _metrics_of(ranking, labels, i, ks, r_includes_query):
    same = (labels[ranking] == labels[i]).numpy()
    r = int((labels == labels[i]).sum()) - (0 if r_includes_query else 1)
    precision = np.cumsum(same[:r]) / np.arange(1, r + 1)
    values = {f"R@{k}": float(same[:k].any()) for k in ks}
    return values | {"RP": same[:r].sum() / r, "MAP@R": (precision * same[:r]).sum() / r}


def _check_metrics(ours, glob, labels, local, depths, ks, r_includes_query, score):
    per_query = {depth: [] for depth in depths}
    for i in range(len(labels)):
        if (labels == labels[i]).sum() > 1:
            for depth, (ranking, _) in _brute_force(glob, local, i, depths, score).items():
                per_query[depth].append(_metrics_of(ranking, labels, i, ks, r_includes_query))
    for depth, rows in per_query.items():
        for name in rows[0]:
            expected = 100 * float(np.mean([q[name] for q in rows]))
            assert ours[f"diml@{depth}"][name] == pytest.approx(expected, abs=1e-9), (depth, name)


@pytest.mark.parametrize(("r_includes_query", "symmetric"), [(False, True), (True, True), (False, False)])
def test_every_depth_equals_brute_force_loop(r_includes_query, symmetric):
    glob, labels, local = _data()
    ks = (1, 2, 4, 8)
    score = _cell_dot if symmetric else _asymmetric
    ours = evaluate(glob, labels, local, depths=DEPTHS, ks=ks, r_includes_query=r_includes_query, nmi=False,
                    query_chunk=50, pair_chunk=333, candidate_similarity=score, symmetric=symmetric)
    assert set(ours) == {"global", "convention"} | {f"diml@{d}" for d in DEPTHS}
    _check_metrics(ours, glob, labels, local, DEPTHS, ks, r_includes_query, score)
    assert ours["diml@37"]["R@1"] != ours["global"]["R@1"], "the stage-2 score must change the rankings"


def test_structural_similarity_re_ranking_equals_brute_force_loop():
    glob, labels, local = _data(seed=5, n=80)
    ours = evaluate(glob, labels, local, depths=(4, 25), ks=(1, 2), nmi=False, ot=OTOptions(eps=0.05))
    ot = lambda *args: structural_similarity_candidates(*args, ot=OTOptions(eps=0.05))  # noqa: E731
    _check_metrics(ours, glob, labels, local, (4, 25), (1, 2), False, ot)


def test_rankings_equal_brute_force_and_hold_no_duplicates():
    glob, labels, local = _data(seed=1, n=150)
    length = 60
    queries = torch.arange(3, 150, 2)  # a subset of the gallery as queries
    chunks = list(iter_rankings(glob, local, length=length, depths=DEPTHS, similarity=_cell_dot, query_chunk=32,
                                pair_chunk=100, queries=queries))
    assert torch.equal(torch.cat([q for q, _ in chunks]), queries)
    brute = {i: _brute_force(glob, local, i, DEPTHS) for i in queries.tolist()}
    for query_index, rankings in chunks:
        global_ranking = rankings["global"]
        for depth in DEPTHS:
            ranking = rankings[f"diml@{depth}"]
            for row, i in enumerate(query_index.tolist()):
                expected, key = brute[i][depth]
                got = ranking[row].tolist()
                # same order up to float32 near-ties; exact membership of the head. Our scores are float32 sums
                # (cosine + a 32-term cell dot, up to ~9 here) in another reduction order than the reference's: a
                # swap may join keys a few ulp apart, ~1e-6 relative (ulp(8) = 9.5e-7)
                assert set(got[:depth]) == set(expected[:depth]), (i, depth)
                np.testing.assert_allclose([key[j] for j in got], [key[j] for j in expected[:length]], rtol=1e-6,
                                           atol=1e-6)
                assert sum(a != b for a, b in zip(got, expected)) <= 2, "only a near-tie may swap"
                assert len(set(ranking[row].tolist())) == length and i not in ranking[row].tolist()
            # the head is a permutation of the global head; the tail is the global tail
            assert torch.equal(ranking[:, :depth].sort(dim=1).values, global_ranking[:, :depth].sort(dim=1).values)
            assert torch.equal(ranking[:, depth:], global_ranking[:, depth:])


def test_depths_are_independent_of_each_other():
    glob, labels, local = _data(seed=2)
    together = evaluate(glob, labels, local, depths=(5, 50), nmi=False, candidate_similarity=_cell_dot)
    alone = evaluate(glob, labels, local, depths=(5,), nmi=False, candidate_similarity=_cell_dot)
    assert together["diml@5"] == alone["diml@5"]
    assert together["global"] == alone["global"]


def test_authors_reuse_of_the_deepest_reranking_duplicates_items_ours_does_not():
    """The authors' script cuts the depth-K re-ranking at d and appends the global list from d: duplicates."""
    glob, labels, local = _data(seed=3, n=120)
    ((query_index, rankings),) = iter_rankings(glob, local, length=60, depths=(5, 50), similarity=_cell_dot,
                                               query_chunk=120)
    authors = torch.cat([rankings["diml@50"][:, :5], rankings["global"][:, 5:]], dim=1)
    has_duplicate = [len(set(row.tolist())) < row.numel() for row in authors]
    assert any(has_duplicate)
    assert all(len(set(row.tolist())) == row.numel() for row in rankings["diml@5"])


def test_chunking_does_not_change_the_result():
    glob, labels, local = _data(seed=4)
    one = evaluate(glob, labels, local, depths=(10,), nmi=False, candidate_similarity=_cell_dot, query_chunk=1000)
    many = evaluate(glob, labels, local, depths=(10,), nmi=False, candidate_similarity=_cell_dot, query_chunk=13)
    more_depths = evaluate(glob, labels, local, depths=(5, 10), nmi=False, candidate_similarity=_cell_dot,
                           query_chunk=7)
    # bit-identical: the per-query values are summed once, whatever the chunking
    assert one == many
    assert more_depths["diml@10"] == one["diml@10"] and more_depths["global"] == one["global"]


def test_unique_pairs_lists_each_unordered_pair_once():
    queries = torch.tensor([0, 1, 2])
    cand = torch.tensor([[1, 2], [0, 3], [0, 1]])
    low, high, inverse = unique_pairs(queries, cand, num_images=4)
    assert list(zip(low.tolist(), high.tolist())) == [(0, 1), (0, 2), (1, 2), (1, 3)]
    pairs = [(min(q, c), max(q, c)) for q, row in zip(queries.tolist(), cand.tolist()) for c in row]
    assert [(low[u].item(), high[u].item()) for u in inverse.flatten()] == pairs


def test_default_scorer_on_the_normalised_gallery_equals_the_structural_similarity_on_raw_embeddings():
    glob, labels, local = _data(seed=6, n=120)
    glob, local = 5 * glob, 3 * local  # far from unit norm: the default path normalises the gallery once
    default = evaluate(glob, labels, local, depths=(5, 20), nmi=False)
    raw = evaluate(glob, labels, local, depths=(5, 20), nmi=False,
                   candidate_similarity=structural_similarity_candidates)
    assert default.keys() == raw.keys()
    for name in default:
        assert default[name] == pytest.approx(raw[name], abs=1e-9)
