"""The per-anchor triplet samplers: valid tuples, draw frequencies against hand-computed probabilities, and a
reproducible random state (the DDP assumption: equal seeds draw equal triplets)."""

import math

import pytest
import torch

from diml.losses import build_loss
from diml.losses.miners import MINERS

LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])
# Points on a great circle: Euclidean distance between angles t1, t2 is 2 sin(|t1 - t2| / 2).
ANGLES = [0.0, 0.5, 1.4, 0.3, 0.9, 1.2, 2.0, 2.9, 0.7]
DRAWS = 800
SAMPLERS = ["random", "semihard", "softhard", "distance"]


def points():
    t = torch.tensor(ANGLES, dtype=torch.float64)
    return torch.stack([torch.cos(t), torch.sin(t), torch.zeros_like(t)], dim=1)


def dist(i, j):
    return 2 * math.sin(abs(ANGLES[i] - ANGLES[j]) / 2)


def make(name, **params):
    entry = MINERS.get(name)
    defaults = {k: p.default for k, p in entry.params.items()}
    return entry.factory(**(defaults | params))


def frequencies(name, anchor=0, **params):
    miner, x = make(name, **params), points()
    pos, neg = {}, {}
    for _ in range(DRAWS):
        a, p, n = miner(x, LABELS)
        k = a.tolist().index(anchor)
        pos[p[k].item()] = pos.get(p[k].item(), 0) + 1 / DRAWS
        neg[n[k].item()] = neg.get(n[k].item(), 0) + 1 / DRAWS
    return pos, neg


def assert_close(observed, expected):
    for key in set(observed) | set(expected):
        assert observed.get(key, 0.0) == pytest.approx(expected.get(key, 0.0), abs=0.06), key


def uniform(indices):
    return {i: 1 / len(indices) for i in indices}


POSITIVES, NEGATIVES = [1, 2], [3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("name", SAMPLERS)
def test_samplers_give_one_valid_triplet_per_anchor_with_a_positive(name):
    a, p, n = make(name)(torch.randn(9, 5), LABELS)
    assert a.tolist() == list(range(8))  # sample 8 is alone in its class
    assert (LABELS[a] == LABELS[p]).all() and (a != p).all() and (LABELS[a] != LABELS[n]).all()


def test_random_sampler_is_uniform():
    pos, neg = frequencies("random")
    assert_close(pos, uniform(POSITIVES))
    assert_close(neg, uniform(NEGATIVES))


def test_semihard_sampler_picks_negatives_in_the_band_given_the_positive():
    margin = 0.3
    expected = {}
    for p in POSITIVES:  # hand loop: uniform positive, then the semi-hard band of that positive
        band = [n for n in NEGATIVES if dist(0, p) < dist(0, n) < dist(0, p) + margin]
        for n, prob in uniform(band or NEGATIVES).items():
            expected[n] = expected.get(n, 0) + prob / len(POSITIVES)
    assert expected[8] > 0.5  # positive 1 has a one-negative band; positive 2 has none and falls back
    _, neg = frequencies("semihard", margin=margin)
    assert_close(neg, expected)


def test_softhard_sampler_prefers_violating_tuples():
    closest_neg = min(dist(0, n) for n in NEGATIVES)
    farthest_pos = max(dist(0, p) for p in POSITIVES)
    hard_pos = [p for p in POSITIVES if dist(0, p) > closest_neg]
    hard_neg = [n for n in NEGATIVES if dist(0, n) < farthest_pos]
    assert hard_pos == [1, 2] and hard_neg == [3, 4, 5, 8]
    pos, neg = frequencies("softhard")
    assert_close(pos, uniform(hard_pos))
    assert_close(neg, uniform(hard_neg))


def test_distance_sampler_follows_the_inverse_sphere_density():
    dim, cutoff = 3, 0.5

    def inverse_density(d):  # Wu et al. 2017 (q(d)^-1), for unit vectors in `dim` dimensions
        d = max(d, cutoff)
        return d ** (2 - dim) * (1 - d * d / 4) ** (-(dim - 3) / 2)

    weights = {n: inverse_density(dist(0, n)) for n in NEGATIVES}
    total = sum(weights.values())
    _, neg = frequencies("distance")
    assert_close(neg, {n: w / total for n, w in weights.items()})
    upper = 1.0
    kept = {n: w for n, w in weights.items() if dist(0, n) <= upper}
    _, neg = frequencies("distance", upper_cutoff=upper)
    assert_close(neg, {n: w / sum(kept.values()) for n, w in kept.items()})


@pytest.mark.parametrize("name", SAMPLERS)
def test_equal_seeds_draw_equal_triplets_and_the_state_round_trips(name):
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(0))
    first, second = make(name, seed=3), make(name, seed=3)
    assert all(torch.equal(u, v) for u, v in zip(first(x, LABELS), second(x, LABELS)))
    state = first.state_dict()
    drawn = first(x, LABELS)
    first.load_state_dict(state)
    assert all(torch.equal(u, v) for u, v in zip(drawn, first(x, LABELS)))
    assert not all(torch.equal(u, v) for u, v in zip(drawn, make(name, seed=4)(x, LABELS)) if len(u) == len(v))


def test_miner_state_is_part_of_the_loss_state_dict():
    loss = build_loss("margin", None, num_classes=4, embed_dim=5, miner="random")
    assert "miner._extra_state" in loss.state_dict()
