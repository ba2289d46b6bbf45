"""rank_query: the global ranking and the DIML re-ranking against a hand-written reference."""

import numpy as np
import pytest

from diml.explain import explain_pair, rank_query


def _reference(glob, local, query, top, depth):
    """Cosine order (query excluded), then the first ``depth`` re-ordered by structural + global (stable)."""
    g = glob.double() / glob.double().norm(dim=1, keepdim=True)
    cos = (g @ g[query]).numpy()
    cos[query] = -np.inf
    order = [int(i) for i in np.argsort(-cos, kind="stable")]
    head = order[:depth]
    final = {i: explain_pair(local[query], glob[query], local[i], glob[i], grid=2).similarity + cos[i] for i in head}
    reranked = sorted(head, key=lambda i: -final[i]) + order[depth:]
    return order, reranked[:top], cos


@pytest.mark.parametrize(("top", "depth"), [(3, 6), (5, 3), (4, 9)])
def test_rankings_match_a_hand_reference(embedding_set, top, depth):
    glob, local, _ = embedding_set
    for query in (0, 7):
        ranking = rank_query(glob, local, query, grid=2, top=top, depth=depth)
        order, after, cos = _reference(glob, local, query, top, depth)
        before = order[:top]
        assert [i.index for i in ranking.before] == before
        assert [i.index for i in ranking.after] == after
        assert ranking.depth == depth and query not in before + after
        for item in ranking.before + ranking.after:
            assert item.global_score == pytest.approx(cos[item.index], abs=1e-9)
            assert item.structural_score == item.explanation.similarity
            assert item.final_score == item.structural_score + item.global_score
            assert order[item.global_rank - 1] == item.index


def test_top_and_depth_are_capped_and_ids_reach_the_explanations(embedding_set):
    glob, local, _ = embedding_set
    ids = [f"img{i}.png" for i in range(10)]
    ranking = rank_query(glob, local, 4, grid=2, top=50, depth=50, ids=ids, pairs=2, exact=True)
    assert len(ranking.before) == len(ranking.after) == 9 and ranking.depth == 9
    assert sorted(i.index for i in ranking.after) == sorted(i.index for i in ranking.before)
    item = ranking.after[0]
    assert item.explanation.query_id == "img4.png" and item.explanation.ref_id == ids[item.index]
    assert len(item.explanation.top_pairs) == 2 and item.explanation.exact_plan is not None


def test_bad_arguments_are_rejected(embedding_set):
    glob, local, _ = embedding_set
    with pytest.raises(ValueError, match="query_index"):
        rank_query(glob, local, 10, grid=2)
    with pytest.raises(ValueError, match="top"):
        rank_query(glob, local, 0, grid=2, top=0)
    with pytest.raises(ValueError, match="local_emb"):
        rank_query(glob, local[:5], 0, grid=2)
    with pytest.raises(ValueError, match="ids"):
        rank_query(glob, local, 0, grid=2, ids=["a"])
    with pytest.raises(ValueError, match="N >= 2"):
        rank_query(glob[:1], local[:1], 0, grid=2)
    with pytest.raises(ValueError, match="grid"):
        rank_query(glob, local, 0, grid=3)
