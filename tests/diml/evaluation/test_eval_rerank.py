"""Re-ranking at several depths against a per-query brute-force loop (full sort, re-rank the top K)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diml.evaluation import evaluate, iter_rankings

DEPTHS = (1, 5, 20, 37)


def _cell_dot(q_local, q_global, c_local, c_global):
    """A hand-made stage-2 score: mean dot product of corresponding cells, (B, K)."""
    return torch.einsum("bcr,bkcr->bk", q_local, c_local) / q_local.shape[-1]


def _data(seed=0, n=240, dim=8, cells=4):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 25, (n,), generator=gen)
    local = torch.randn(n, dim, cells, generator=gen) + 0.8 * torch.randn(25, dim, cells, generator=gen)[labels]
    return local.mean(dim=2) + 0.3 * torch.randn(n, dim, generator=gen), labels, local


def _brute_force(glob, local, i, depth):
    """Query ``i``: full argsort of the global cosine (query removed), stage-2 + global on the first ``depth``.

    Returns ``(ranking, key)``: the ranked gallery indices and, per index, the float64 score that ordered it
    (stage-2 + cosine in the head, cosine in the tail).
    """
    x = F.normalize(glob.double(), dim=1)
    cos = x @ x[i]
    order = [j for j in torch.argsort(cos, descending=True, stable=True).tolist() if j != i]
    head = order[:depth]
    stage2 = _cell_dot(local[i][None], glob[i][None], local[head][None], glob[head][None])[0].double()
    final = stage2 + cos[head]
    reranked = [head[j] for j in torch.argsort(final, descending=True, stable=True).tolist()]
    key = {j: float(cos[j]) for j in order} | {j: float(f) for j, f in zip(head, final)}
    return reranked + order[depth:], key


def _brute_force_ranking(glob, local, i, depth):
    return _brute_force(glob, local, i, depth)[0]


def _metrics_of(ranking, labels, i, ks, r_includes_query):
    same = (labels[ranking] == labels[i]).numpy()
    r = int((labels == labels[i]).sum()) - (0 if r_includes_query else 1)
    precision = np.cumsum(same[:r]) / np.arange(1, r + 1)
    values = {f"R@{k}": float(same[:k].any()) for k in ks}
    return values | {"RP": same[:r].sum() / r, "MAP@R": (precision * same[:r]).sum() / r}


@pytest.mark.parametrize("r_includes_query", [False, True])
def test_every_depth_equals_brute_force_loop(r_includes_query):
    glob, labels, local = _data()
    ks = (1, 2, 4, 8)
    ours = evaluate(glob, labels, local, depths=DEPTHS, ks=ks, r_includes_query=r_includes_query, nmi=False,
                    query_chunk=50, candidate_similarity=_cell_dot)
    assert set(ours) == {"global", "convention"} | {f"diml@{d}" for d in DEPTHS}
    for depth in DEPTHS:
        per_query = [_metrics_of(_brute_force_ranking(glob, local, i, depth), labels, i, ks, r_includes_query)
                     for i in range(len(labels)) if (labels == labels[i]).sum() > 1]
        for name in per_query[0]:
            expected = 100 * float(np.mean([q[name] for q in per_query]))
            assert ours[f"diml@{depth}"][name] == pytest.approx(expected, abs=1e-9), (depth, name)
    assert ours["diml@37"]["R@1"] != ours["global"]["R@1"], "the stage-2 score must change the rankings"


def test_rankings_equal_brute_force_and_hold_no_duplicates():
    glob, labels, local = _data(seed=1, n=150)
    length = 60
    chunks = list(iter_rankings(glob, local, length=length, depths=DEPTHS, similarity=_cell_dot, query_chunk=32))
    assert sum(len(q) for q, _ in chunks) == len(labels)
    for query_index, rankings in chunks:
        global_ranking = rankings["global"]
        for depth in DEPTHS:
            ranking = rankings[f"diml@{depth}"]
            for row, i in enumerate(query_index.tolist()):
                expected, key = _brute_force(glob, local, i, depth)
                got = ranking[row].tolist()
                # same order up to float32 near-ties (|score difference| < 1e-6); exact membership of the head
                assert set(got[:depth]) == set(expected[:depth]), (i, depth)
                np.testing.assert_allclose([key[j] for j in got], [key[j] for j in expected[:length]], atol=1e-6)
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
    for name in one:
        assert one[name] == pytest.approx(many[name], abs=1e-9)
