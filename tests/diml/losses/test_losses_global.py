"""Every registered loss on the global embedding against a hand-written loop (loss_references), plus the
degenerate batches ("no valid pairs" -> 0, no NaN) and backward."""

import math

import pytest
import torch

import loss_references as ref
from diml.losses import build_loss, list_losses
from diml.losses.catalog import LOSSES

LABELS = [0, 0, 0, 1, 1, 2, 2, 3]
NUM_CLASSES, DIM, CELLS = 5, 6, 4
# PML's HistogramLoss indexes with a list of index lists (a torch deprecation warning that is PML's to fix).
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence for multidimensional indexing")
PAIR_LOSSES = [n for n in list_losses() if LOSSES.get(n).info["metric"] is not None]
MINED_LOSSES = [n for n in PAIR_LOSSES if LOSSES.get(n).info["miner"]]
GLOBAL_ONLY = [n for n in list_losses() if LOSSES.get(n).info["metric"] is None]
# Hyperparameters away from the defaults where that makes more terms active on a tiny random batch (the margin
# beta is float32-exact: PML stores it as a float32 tensor).
PARAMS = {"margin": {"beta": 0.875, "margin": 0.25}, "triplet": {"margin": 0.5}, "histogram": {"n_bins": 10}}


def batch(n=len(LABELS), seed=0, labels=LABELS):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, DIM, generator=gen, dtype=torch.float64)
    local = torch.randn(n, DIM, CELLS, generator=gen, dtype=torch.float64)
    return g, local, torch.tensor(labels[:n], dtype=torch.int64)


def tolerance(name):
    """float64 everywhere, except that PML picks histogram bins in float32 (an off-by-one bin moves ~1e-7)."""
    return 1e-6 if name == "histogram" else 1e-9


def resolved(name, overrides):
    return {k: p.default for k, p in LOSSES.get(name).params.items()} | overrides


def proxy_reference(name, p, module, g, labels):
    x, y = g.numpy(), labels.tolist()
    inner = module.loss
    if name == "proxynca":
        return ref.proxynca(x, inner.proxies.detach().numpy(), y, p["softmax_scale"])
    if name == "proxyanchor":
        return ref.proxyanchor(x, inner.proxies.detach().numpy(), y, p["margin"], p["alpha"])
    if name == "arcface":
        return ref.arcface(x, inner.W.detach().numpy(), y, p["margin"], p["scale"])
    if name == "softmax":
        return ref.normalized_softmax(x, inner.W.detach().numpy(), y, p["temperature"])
    if name == "softtriple":
        return ref.softtriple(x, inner.fc.detach().numpy(), y, p["centers_per_class"], p["la"], p["gamma"],
                              p["margin"], p["reg_weight"])
    if name == "angular":
        return ref.angular(x, y, p["alpha"])
    raise KeyError(name)


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_pair_loss_matches_hand_loop(name):
    g, local, labels = batch()
    loss = build_loss(name, PARAMS.get(name), num_classes=NUM_CLASSES, embed_dim=DIM).double()
    expected = ref.pair_loss(name, resolved(name, PARAMS.get(name, {})), ref.GlobalPairs(g.numpy()),
                             labels.tolist(), num_classes=NUM_CLASSES)
    value = loss(g, local, labels)
    assert expected > 0
    assert value.item() == pytest.approx(expected, rel=tolerance(name))


@pytest.mark.parametrize("name", MINED_LOSSES)
@pytest.mark.parametrize("miner", ["semihard", "distance"])
def test_pair_loss_on_mined_triplets_matches_hand_loop(name, miner):
    g, local, labels = batch(seed=1)
    loss = build_loss(name, PARAMS.get(name), num_classes=NUM_CLASSES, embed_dim=DIM, miner=miner).double()
    twin = build_loss(name, PARAMS.get(name), num_classes=NUM_CLASSES, embed_dim=DIM, miner=miner)
    triplets = list(zip(*[t.tolist() for t in twin.miner(g, labels)]))
    assert len(triplets) == 7  # every sample with a positive is an anchor
    expected = ref.pair_loss(name, resolved(name, PARAMS.get(name, {})), ref.GlobalPairs(g.numpy()),
                             labels.tolist(), triplets=triplets, num_classes=NUM_CLASSES)
    assert loss(g, local, labels).item() == pytest.approx(expected, rel=tolerance(name))


@pytest.mark.parametrize("name", GLOBAL_ONLY)
def test_global_only_loss_matches_hand_loop(name):
    g, local, labels = batch()
    loss = build_loss(name, None, num_classes=NUM_CLASSES, embed_dim=DIM).double()
    expected = proxy_reference(name, resolved(name, {}), loss, g, labels)
    assert loss(g, None, labels).item() == pytest.approx(expected, rel=1e-9)


def test_learnable_margin_uses_the_anchor_class_beta():
    g, local, labels = batch()
    loss = build_loss("margin", {"margin": 0.3}, num_classes=NUM_CLASSES, embed_dim=DIM).double()
    beta = torch.tensor([0.7, 1.0, 1.3, 0.8, 1.1], dtype=torch.float64)
    with torch.no_grad():
        loss.loss.beta.copy_(beta)
    expected = ref.margin(ref.GlobalPairs(g.numpy()).euclid, labels.tolist(), ref.all_triplets(labels.tolist()),
                          beta.tolist(), 0.3)
    assert loss(g, local, labels).item() == pytest.approx(expected, rel=1e-9)
    assert [p.shape for p in loss.parameters()] == [torch.Size([NUM_CLASSES])]


DEGENERATE = {"distinct": list(range(5)), "one class": [2] * 5}


@pytest.mark.parametrize("labels", DEGENERATE.values(), ids=DEGENERATE.keys())
@pytest.mark.parametrize("name", PAIR_LOSSES + ["angular"])
def test_no_valid_pairs_gives_zero(name, labels):
    g, local, y = batch(n=5, labels=labels)
    g.requires_grad_(True)
    miner = "random" if name in MINED_LOSSES else None  # with a miner: no triplets at all
    value = build_loss(name, None, num_classes=NUM_CLASSES, embed_dim=DIM, miner=miner)(g, local, y)
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(g.grad).all()


@pytest.mark.parametrize("name", GLOBAL_ONLY)
def test_proxy_losses_stay_finite_on_distinct_labels(name):
    g, _, y = batch(n=5, labels=DEGENERATE["distinct"])
    value = build_loss(name, None, num_classes=NUM_CLASSES, embed_dim=DIM).double()(g, None, y)
    assert math.isfinite(value.item())


@pytest.mark.parametrize("name", list_losses())
def test_backward_gives_finite_gradients(name):
    g, local, labels = batch()
    g.requires_grad_(True)
    loss = build_loss(name, PARAMS.get(name), num_classes=NUM_CLASSES, embed_dim=DIM).double()
    value = loss(g, local, labels)
    value.backward()
    assert torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0
    for parameter in loss.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
