"""Global retrieval metrics against pytorch-metric-learning (default convention) and a per-query loop (paper's)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import FaissKMeans

from diml.evaluation import evaluate, ranking_metrics


# The metrics are means of per-query counts: two paths that rank alike give them to float64 rounding (abs=1e-9 below)
# whatever computed the cosines (float32 here, float64 in the loop, faiss in PML). They rank alike because these sets
# hold no near-tie between a positive and a negative closer than 1e-5 in cosine, far above float32 rounding (~1e-7).
def _random_set(seed=0, n=360, dim=12):
    """Random embeddings with class sizes from 1 (lone queries) to 12, in shuffled order."""
    gen = np.random.default_rng(seed)
    sizes = gen.integers(1, 13, size=60)
    labels = np.repeat(np.arange(60) * 7 + 3, sizes)[:n]  # non-contiguous label values
    labels = gen.permutation(labels)
    emb = gen.standard_normal((labels.size, dim)).astype(np.float32)
    return emb, labels


def _hand_metrics(emb, labels, ks, r_includes_query):
    """Per-query loop in the style of the DIML authors' ``get_metrics_rank``: full sort, query excluded."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = x.astype(np.float64) @ x.T.astype(np.float64)
    out = {f"R@{k}": [] for k in ks} | {"RP": [], "MAP@R": []}
    for i in range(len(labels)):
        order = [j for j in np.argsort(-sim[i], kind="stable") if j != i]
        same = labels[order] == labels[i]
        n_class = int((labels == labels[i]).sum())
        if n_class == 1:
            continue  # lone query: excluded
        r = n_class if r_includes_query else n_class - 1
        for k in ks:
            out[f"R@{k}"].append(float(same[:k].any()))
        head = same[:r].astype(np.float64)
        out["RP"].append(head.sum() / r)
        precision = np.cumsum(head) / np.arange(1, r + 1)
        out["MAP@R"].append((precision * head).sum() / r)
    return {name: 100.0 * float(np.mean(v)) for name, v in out.items()}


def test_global_metrics_equal_pytorch_metric_learning():
    emb, labels = _random_set()
    ours = evaluate(emb, labels, ks=(1,), seed=3)
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r", "NMI"),
        device=torch.device("cpu"),
        kmeans_func=FaissKMeans(niter=20, seed=3),
    )
    normalised = F.normalize(torch.from_numpy(emb), dim=1)  # faiss L2 on unit vectors ranks by cosine
    ref = calc.get_accuracy(normalised, torch.from_numpy(labels))
    assert ours["global"]["R@1"] == pytest.approx(100 * ref["precision_at_1"], abs=1e-9)
    assert ours["global"]["RP"] == pytest.approx(100 * ref["r_precision"], abs=1e-9)
    assert ours["global"]["MAP@R"] == pytest.approx(100 * ref["mean_average_precision_at_r"], abs=1e-9)
    assert ours["global"]["NMI"] == pytest.approx(100 * ref["NMI"], abs=1e-9)
    lone = int(sum((labels == c).sum() == 1 for c in np.unique(labels)))
    assert lone > 0, "the fixture must contain lone queries"
    assert ours["convention"] == {"r_includes_query": 0.0, "num_queries": float(len(labels) - lone),
                                  "num_lone_queries": float(lone)}


@pytest.mark.parametrize("r_includes_query", [False, True])
def test_global_metrics_equal_per_query_loop(r_includes_query):
    emb, labels = _random_set(seed=1)
    ks = (1, 2, 4, 8, 16)
    ours = evaluate(emb, labels, ks=ks, r_includes_query=r_includes_query, nmi=False, query_chunk=37)
    ref = _hand_metrics(emb, labels, ks, r_includes_query)
    assert ours["global"].keys() == ref.keys()
    for name, value in ref.items():
        assert ours["global"][name] == pytest.approx(value, abs=1e-9), name
    assert ours["convention"]["r_includes_query"] == float(r_includes_query)


def test_paper_convention_lowers_rp_exactly_by_the_class_size_ratio():
    # Two perfectly separated classes: every query retrieves all its n - 1 positives first.
    emb = np.concatenate([np.tile([1.0, 0.0], (4, 1)), np.tile([0.0, 1.0], (6, 1))]).astype(np.float32)
    emb += np.random.default_rng(0).normal(scale=1e-3, size=emb.shape).astype(np.float32)
    labels = np.array([0] * 4 + [1] * 6)
    pml = evaluate(emb, labels, nmi=False, ks=(1,))["global"]
    paper = evaluate(emb, labels, nmi=False, ks=(1,), r_includes_query=True)["global"]
    assert pml["RP"] == pytest.approx(100.0) and pml["MAP@R"] == pytest.approx(100.0)
    expected = 100 * (4 * 3 / 4 + 6 * 5 / 6) / 10  # R = n: (n - 1) hits out of n
    assert paper["RP"] == pytest.approx(expected) and paper["MAP@R"] == pytest.approx(expected)


def test_ranking_metrics_on_hand_computed_lists():
    match = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    cutoff = torch.tensor([2, 3, 1])
    got = ranking_metrics(match, cutoff, ks=(1, 2, 4))
    torch.testing.assert_close(got["R@1"], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(got["R@2"], torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(got["R@4"], torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(got["RP"], torch.tensor([1 / 2, 2 / 3, 0.0], dtype=torch.float64))
    torch.testing.assert_close(got["MAP@R"], torch.tensor([1 / 2, (1 / 2 + 2 / 3) / 3, 0.0], dtype=torch.float64))


def test_nmi_is_perfect_on_separated_clusters_and_inputs_may_be_numpy_or_torch():
    gen = np.random.default_rng(2)
    centres = gen.standard_normal((5, 8)) * 10
    labels = np.repeat(np.arange(5), 20)
    emb = (centres[labels] + gen.normal(scale=0.01, size=(100, 8))).astype(np.float32)
    from_numpy = evaluate(emb, labels, ks=(1, 2))
    from_torch = evaluate(torch.from_numpy(emb), torch.from_numpy(labels), ks=(1, 2))
    assert from_numpy == from_torch
    assert from_numpy["global"]["NMI"] == pytest.approx(100.0)
    assert from_numpy["global"]["R@1"] == 100.0
