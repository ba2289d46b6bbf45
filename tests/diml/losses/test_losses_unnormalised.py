"""The authors' unnormalised baselines (docs/FIDELITY.md row 6c): lifted and N-pair on raw embeddings with their L2
penalty, against hand transcriptions of Roth et al.'s ``criteria/lifted.py`` and the N-pair term of the authors'
``criteria/angular.py``, written here loop by loop; the angular loss with its N-pair and L2 terms."""

from __future__ import annotations

import math

import pytest
import torch

from diml.losses import build_loss

L2 = 0.005


def _batch(seed=0, n_classes=4, per_class=3, dim=8, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    emb = scale * torch.randn(n_classes * per_class, dim, generator=gen, dtype=torch.float64)
    return emb, torch.arange(n_classes).repeat_interleave(per_class)


def _mean_norm(emb):
    return sum(math.sqrt(sum(float(v) ** 2 for v in row)) for row in emb) / len(emb)


def _authors_lifted(emb, labels, margin=1.0):
    """criteria/lifted.py: per anchor, logsumexp of its positives' distances + logsumexp of margin - negatives'
    distances, relu, mean over anchors, + l2 * mean norm (the lifted batch miner: every other image of the class
    is a positive, every image of another class a negative)."""
    losses = []
    for i in range(len(emb)):
        dist = [math.dist(emb[i].tolist(), emb[j].tolist()) for j in range(len(emb))]
        pos = [dist[j] for j in range(len(emb)) if j != i and labels[j] == labels[i]]
        neg = [margin - dist[j] for j in range(len(emb)) if labels[j] != labels[i]]
        lse = lambda xs: math.log(sum(math.exp(x) for x in xs))  # noqa: E731
        losses.append(max(0.0, lse(pos) + lse(neg)))
    return sum(losses) / len(losses) + L2 * _mean_norm(emb)


def _authors_npair(emb, labels):
    """The N-pair term: one (anchor, positive) per class (the first two images of the class), negatives the other
    classes' positives: mean over anchors of log(1 + sum_n exp(a . n - a . p)) on raw embeddings, + l2 * mean norm."""
    classes = sorted(set(labels.tolist()))
    pairs = [tuple(int(i) for i in (labels == c).nonzero().squeeze(1)[:2]) for c in classes]
    total = 0.0
    for k, (a, p) in enumerate(pairs):
        ap = float(emb[a] @ emb[p])
        total += math.log(1.0 + sum(math.exp(float(emb[a] @ emb[q]) - ap) for j, (_, q) in enumerate(pairs) if j != k))
    return total / len(pairs) + L2 * _mean_norm(emb)


@pytest.mark.parametrize("seed", [0, 1])
def test_unnormalised_lifted_with_l2_is_the_authors_lifted(seed):
    emb, labels = _batch(seed)
    loss = build_loss("lifted", {"normalize": False, "l2_weight": L2}, num_classes=4, embed_dim=8)
    ours = float(loss(emb.float(), None, labels))
    assert ours == pytest.approx(_authors_lifted(emb, labels), rel=1e-4, abs=1e-4)
    normalised = float(build_loss("lifted", {}, num_classes=4, embed_dim=8)(emb.float(), None, labels))
    assert abs(normalised - ours) > 0.1  # the switch changes the loss (raw distances are ~3x larger here)


@pytest.mark.parametrize("seed", [0, 1])
def test_unnormalised_npair_with_l2_is_the_authors_npair(seed):
    emb, labels = _batch(seed, scale=0.5)
    loss = build_loss("npair", {"normalize": False, "l2_weight": L2}, num_classes=4, embed_dim=8)
    ours = float(loss(emb.float(), None, labels))
    assert ours == pytest.approx(_authors_npair(emb, labels), rel=1e-4, abs=1e-5)
    normalised = float(build_loss("npair", {}, num_classes=4, embed_dim=8)(emb.float(), None, labels))
    assert abs(normalised - ours) > 1e-3


def test_the_authors_angular_adds_the_raw_npair_term_and_the_l2_penalty():
    emb, labels = _batch(2, scale=0.5)
    plain = build_loss("angular", {}, num_classes=4, embed_dim=8)
    authors = build_loss("angular", {"angular_weight": 2.0, "npair_weight": 1.0, "l2_weight": L2}, num_classes=4,
                         embed_dim=8)
    angular = float(plain(emb.float(), None, labels))
    expected = 2.0 * angular + _authors_npair(emb, labels)  # _authors_npair includes the L2 term
    assert float(authors(emb.float(), None, labels)) == pytest.approx(expected, rel=1e-4)
    g = emb.float().clone().requires_grad_()
    authors(g, None, labels).backward()
    assert torch.isfinite(g.grad).all() and float(g.grad.abs().sum()) > 0


def test_the_unnormalised_switches_are_refused_with_the_structural_similarity():
    with pytest.raises(ValueError, match=r"params.normalize=False apply to the global similarity only"):
        build_loss("npair", {"normalize": False}, similarity="diml", num_classes=4, embed_dim=8)
    with pytest.raises(ValueError, match=r"params.l2_weight=0.005 apply to the global similarity only"):
        build_loss("lifted", {"l2_weight": 0.005}, similarity="diml", miner="distance", num_classes=4, embed_dim=8)
    with pytest.raises(ValueError, match="l2_weight"):
        build_loss("npair", {"l2_weight": -1.0}, num_classes=4, embed_dim=8)
