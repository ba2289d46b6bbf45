"""Structural (DIML) mode: the PML distances against POT float64 run on each pair separately, every pair loss
against its hand loop on those per-pair values, the paper's margin-DIML and multi-similarity-DIML, gradients
(plan constant, gradient through the cell cosines), degenerate batches."""

import pytest
import torch

import loss_references as ref
from diml.losses import StructuralDistance, StructuralSimilarity, build_loss, pack_embeddings
from diml.losses.catalog import LOSSES
from diml.ot import OTOptions

LABELS = [0, 0, 0, 1, 1, 2, 2, 3]
NUM_CLASSES, DIM, CELLS = 5, 6, 4
PAIR_LOSSES = [n for n in LOSSES.names() if LOSSES.get(n).info["metric"] is not None]
MINED_LOSSES = [n for n in PAIR_LOSSES if LOSSES.get(n).info["miner"]]
PARAMS = {"margin": {"beta": 0.875, "margin": 0.25}, "triplet": {"margin": 0.5}, "histogram": {"n_bins": 10},
          "contrastive": {"neg_margin": 0.75}, "snr": {"neg_margin": 1.25}}
TOL = 2e-6  # diml.ot against POT in float64, and PML's float32 histogram binning
# PML's HistogramLoss indexes with a list of index lists (a torch deprecation warning that is PML's to fix).
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence for multidimensional indexing")


def batch(n=len(LABELS), seed=0, labels=LABELS):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, DIM, generator=gen, dtype=torch.float64) + 0.5
    local = torch.randn(n, DIM, CELLS, generator=gen, dtype=torch.float64) + 0.5
    return g, local, torch.tensor(labels[:n], dtype=torch.int64)


@pytest.fixture(scope="module")
def data():
    g, local, labels = batch()
    return g, local, labels, ref.StructuralPairs(g.numpy(), local.numpy())


def resolved(name):
    return {k: p.default for k, p in LOSSES.get(name).params.items()} | PARAMS.get(name, {})


def off_diagonal(x):
    return x[~torch.eye(len(x), dtype=torch.bool)]


def matrix(fn, n):
    """Off-diagonal values (an image against itself is a slow exact-duplicate problem for POT and never a loss
    pair; the duplicate case is covered by test_structural_backward_is_finite_on_near_duplicates)."""
    return off_diagonal(torch.tensor([[fn(i, j) if i != j else 0.0 for j in range(n)] for i in range(n)],
                                     dtype=torch.float64))


@pytest.mark.parametrize("marginals, eps", [("cross_attention", 0.05), ("uniform", 0.1)])
def test_distances_match_pot_on_each_pair(marginals, eps):
    """(Uniform marginals at eps 0.05 make POT need ~1e5 iterations on some pairs of this batch: eps 0.1 there.)"""
    g, local, _ = batch(seed=2)
    pairs = ref.StructuralPairs(g.numpy(), local.numpy(), marginals=marginals, eps=eps)
    packed, n, ot = pack_embeddings(g, local), len(g), OTOptions(marginals=marginals, eps=eps)
    cases = [
        (StructuralSimilarity(ot=ot), pairs.sim),
        (StructuralSimilarity(ot=ot, include_global=False), lambda i, j: pairs.sim(i, j, False)),
        (StructuralDistance(ot=ot), pairs.euclid),
        (StructuralDistance(ot=ot, include_global=False), lambda i, j: pairs.euclid(i, j, False)),
        (StructuralDistance(ot=ot, cell_distance="snr"), pairs.snr),
    ]
    for distance, expected in cases:
        got = distance(packed)
        torch.testing.assert_close(off_diagonal(got), matrix(expected, n), rtol=0, atol=TOL)
        torch.testing.assert_close(distance(packed[:3], packed), got[:3], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_structural_pair_loss_matches_hand_loop(name, data):
    g, local, labels, pairs = data
    # float64 plans solved to 1e-10 (the default 1e-6 is amplified by circle's scale factor gamma = 80)
    loss = build_loss(name, PARAMS.get(name), similarity="diml", num_classes=NUM_CLASSES, embed_dim=DIM,
                      ot=OTOptions(tol=1e-10)).double()
    expected = ref.pair_loss(name, resolved(name), pairs, LABELS, num_classes=NUM_CLASSES)
    assert expected > 0
    assert loss(g, local, labels).item() == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("name", MINED_LOSSES)
def test_structural_pair_loss_on_mined_triplets_matches_hand_loop(name, data):
    g, local, labels, pairs = data
    kwargs = dict(similarity="diml", num_classes=NUM_CLASSES, embed_dim=DIM, miner="distance")
    loss = build_loss(name, PARAMS.get(name), **kwargs).double()
    triplets = list(zip(*[t.tolist() for t in build_loss(name, PARAMS.get(name), **kwargs).miner(g, labels)]))
    expected = ref.pair_loss(name, resolved(name), pairs, LABELS, triplets=triplets, num_classes=NUM_CLASSES)
    assert loss(g, local, labels).item() == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("beta", [0.6, 1.2])
def test_margin_diml_is_the_papers_formula(beta, data):
    """margin-DIML: d = (sum_ij T_ij ||q_i - r_j|| + ||q_g - r_g||) / 2 in Wu et al.'s margin loss (margin 0.2)."""
    g, local, labels, pairs = data
    loss = build_loss("margin", {"beta": beta}, similarity="diml", num_classes=NUM_CLASSES, embed_dim=DIM,
                      miner="distance")
    triplets = list(zip(*[t.tolist() for t in build_loss("margin", None, num_classes=NUM_CLASSES, embed_dim=DIM,
                                                          miner="distance").miner(g, labels)]))
    beta32 = torch.tensor(beta, dtype=torch.float32).item()  # PML keeps beta as a float32 parameter
    terms = []
    for a, p, n in triplets:
        terms += [ref.relu(pairs.euclid(a, p) - beta32 + 0.2), ref.relu(beta32 - pairs.euclid(a, n) + 0.2)]
    expected = sum(terms) / sum(t > 0 for t in terms)
    assert loss.double()(g, local, labels).item() == pytest.approx(expected, abs=TOL)


def test_multisimilarity_diml_is_the_papers_formula(data):
    """MS-DIML: s = sum_ij T_ij (S_ij + s_g) / 2 in the multi-similarity loss (alpha 2, beta 40, base 0.5, margin
    0.1) with its mining, averaged over anchors with mined pairs."""
    g, local, labels, pairs = data
    loss = build_loss("multisimilarity", None, similarity="diml", num_classes=NUM_CLASSES, embed_dim=DIM)
    expected = ref.multisimilarity(pairs.sim, LABELS, 2.0, 40.0, 0.5, 0.1)
    assert expected > 0
    assert loss(g, local, labels).item() == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("kind", [StructuralSimilarity, StructuralDistance])
def test_gradient_flows_through_the_cell_cosines_with_the_plan_constant(kind, data):
    g, local, _, pairs = data
    distance = kind()
    g, local = g.clone().requires_grad_(True), local.clone().requires_grad_(True)
    weights = torch.randn(len(g), len(g), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    weights.fill_diagonal_(0.0)
    (weights * distance(pack_embeddings(g, local))).sum().backward()
    # Hand loop in torch: POT's plans as constants, the per-pair formula differentiated by autograd.
    g2, local2 = g.detach().clone().requires_grad_(True), local.detach().clone().requires_grad_(True)
    gn, cells = torch.nn.functional.normalize(g2, dim=1), torch.nn.functional.normalize(local2, dim=1)
    total = 0.0
    for i in range(len(g)):
        for j in set(range(len(g))) - {i}:
            plan = torch.from_numpy(pairs.plan(i, j)[0])
            s = cells[i].T @ cells[j]
            s_g = gn[i] @ gn[j]
            if distance.is_inverted:
                value = (plan * (s + s_g) / 2).sum()
            else:
                value = 0.5 * ((plan * torch.sqrt(2 - 2 * s)).sum() + torch.sqrt(2 - 2 * s_g))
            total = total + weights[i, j] * value
    total.backward()
    torch.testing.assert_close(g.grad, g2.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(local.grad, local2.grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_structural_no_valid_pairs_gives_zero(name):
    g, local, y = batch(n=4, labels=[0, 1, 2, 3])
    local.requires_grad_(True)
    miner = "random" if name in MINED_LOSSES else None
    value = build_loss(name, None, similarity="diml", num_classes=NUM_CLASSES, embed_dim=DIM, miner=miner)(
        g, local, y
    )
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(local.grad).all()


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_structural_backward_is_finite_on_near_duplicates(name):
    g, local, labels = batch()
    local = local.clone()
    local[1] = local[0] + 1e-7  # near-duplicate positives: the Euclidean cell distances are ~0
    g[1] = g[0]
    g, local = g.float().requires_grad_(True), local.float().requires_grad_(True)
    loss = build_loss(name, PARAMS.get(name), similarity="diml", num_classes=NUM_CLASSES, embed_dim=DIM)
    value = loss(g, local, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(g.grad).all() and torch.isfinite(local.grad).all()
    assert local.grad.abs().sum() > 0


def test_packed_shapes_are_checked():
    g, local, _ = batch(n=3)
    with pytest.raises(ValueError, match=r"local_emb must have shape \(N, D, R\) matching global_emb"):
        pack_embeddings(g, local[:, :4])
    with pytest.raises(ValueError, match=r"query_emb must be packed embeddings \(N, D, R \+ 1\)"):
        StructuralSimilarity()(g)
    with pytest.raises(ValueError, match="ref_emb .* must match query_emb in D and R"):
        StructuralSimilarity()(pack_embeddings(g, local), pack_embeddings(g, local[:, :, :2]))
    with pytest.raises(ValueError, match="cell_distance must be one of"):
        StructuralDistance(cell_distance="cosine")


@pytest.mark.parametrize("name", ["margin", "triplet", "contrastive", "snr"])
def test_mined_structural_losses_match_only_the_mined_pairs(name, monkeypatch):
    """With a miner these losses read only mined entries: the restricted matching gives the same value and
    gradients as the full matrix, and solves at most 2 problems per anchor."""
    g, local, labels = batch(seed=3)
    kwargs = dict(similarity="diml", num_classes=NUM_CLASSES, embed_dim=DIM, miner="semihard")
    restricted, full = (build_loss(name, PARAMS.get(name), **kwargs).double() for _ in range(2))
    assert restricted.mined_pairs_only
    full.mined_pairs_only = False
    grads = []
    for loss in (full, restricted):
        gg, ll = g.clone().requires_grad_(True), local.clone().requires_grad_(True)
        value = loss(gg, ll, labels)
        value.backward()
        grads.append((value, gg.grad, ll.grad))
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-9)

    import diml.ot

    solved = []
    real = diml.ot.match_candidates

    def counting(*args, **kw):
        solved.append(args[0].shape[0])
        return real(*args, **kw)

    loss = build_loss(name, PARAMS.get(name), **kwargs)
    monkeypatch.setattr(diml.ot, "match", lambda *a, **k: pytest.fail("the full matrix was matched"))
    monkeypatch.setattr(diml.ot, "match_candidates", counting)
    loss(g, local, labels)
    assert 0 < solved[0] <= 2 * len(labels)


def test_triplet_swap_reads_outside_the_mined_pairs_so_it_matches_them_all():
    loss = build_loss("triplet", {"swap": True}, similarity="diml", num_classes=NUM_CLASSES, embed_dim=DIM,
                      miner="random")
    assert not loss.mined_pairs_only
