"""margin-DIML and MS-DIML against a transcription of the authors' code (wl-zhao/DIML, read, not copied).

The transcription below follows ``criteria/margin_diml.py`` and ``criteria/multisimilarity_diml.py``: the global
vector is the mean of the cell embeddings, cells and globals are L2-normalised, the cross-attention marginals are
``relu(global . cells) / (sum + 1e-5)``, the plan is the Sinkhorn scaling of ``K = exp(-(1 - S) / 0.05)`` under
``no_grad`` (run here to convergence, in float64: the authors stop when the mean change of the row scaling is below
0.1), the margin distance is ``(sum T sqrt(|x_i - y_j|^2 + 1e-6) + sqrt(|x_g - y_g|^2 + 1e-6)) / 2`` and the MS
similarity ``sum T (S + s_g) / 2``. ``transposed=True`` is the authors' marginal orientation in training (the
weights of the reference cells placed on the query cells' axis); ``False`` is their evaluation orientation, ours.
The figures of the transposed comparison are the ones docs/FIDELITY.md states.
"""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diml.losses import build_loss
from diml.ot import OTOptions

B, D, R, NUM_CLASSES = 12, 16, 16, 6
EXACT = 1e-5


def _batch(seed=0):
    """Cells ``(B, D, R)`` with a class component (so positives are closer) and labels ``(B,)``: 6 classes x 2."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(2)
    centres = torch.randn(NUM_CLASSES, D, R, generator=gen)
    cells = centres[labels] + 0.9 * torch.randn(B, D, R, generator=gen)
    return cells, labels


# ---- the transcription ------------------------------------------------------------------------------------------

def _sinkhorn(K, u, v, iters=3000):
    r, c = torch.ones_like(u), torch.ones_like(v)
    for _ in range(iters):
        r = u / (K @ c.unsqueeze(-1)).squeeze(-1)
        c = v / (K.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1)
    return r.unsqueeze(-1) * K * c.unsqueeze(-2)


def _terms(x, y, transposed):
    """``x (P, D, R)`` queries, ``y (P, D, R)`` references -> normalised cells, globals, cell cosines, plan."""
    x_mean, y_mean = x.mean(2), y.mean(2)
    x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    x_mean, y_mean = F.normalize(x_mean, dim=1), F.normalize(y_mean, dim=1)
    sim = torch.einsum("bcs,bcm->bsm", x, y)
    att_y = F.relu(torch.einsum("nc,ncr->nr", x_mean, y))  # query's global on the reference cells
    att_x = F.relu(torch.einsum("nc,ncr->nr", y_mean, x))  # reference's global on the query cells
    w_y = att_y / (att_y.sum(dim=1, keepdim=True) + 1e-5)
    w_x = att_x / (att_x.sum(dim=1, keepdim=True) + 1e-5)
    u, v = (w_y, w_x) if transposed else (w_x, w_y)  # u: rows (query cells), v: columns (reference cells)
    with torch.no_grad():
        plan = _sinkhorn(torch.exp(-(1.0 - sim) / 0.05), u, v)
    return x, y, x_mean, y_mean, sim, plan


def authors_margin_distance(x, y, transposed=False):
    x, y, x_mean, y_mean, _, plan = _terms(x, y, transposed)
    d_cells = torch.sqrt(((x.unsqueeze(3) - y.unsqueeze(2)) ** 2).sum(1) + 1e-6)  # (P, R, R)
    d_global = torch.sqrt(((x_mean - y_mean) ** 2).sum(1) + 1e-6)
    return ((plan * d_cells).sum(dim=(1, 2)) + d_global) / 2


def authors_margin_loss(cells, labels, beta, triplets, transposed=False, margin=0.2, count="triplets"):
    a, p, n = (torch.tensor(t) for t in zip(*triplets))
    d_ap = authors_margin_distance(cells[a], cells[p], transposed)
    d_an = authors_margin_distance(cells[a], cells[n], transposed)
    b = beta[labels[a]]
    pos, neg = F.relu(d_ap - b + margin), F.relu(b - d_an + margin)
    # The authors: torch.sum((pos > 0.) + (neg > 0.)), a logical or of bool tensors; Wu et al./PML count terms.
    active = (pos > 0) | (neg > 0) if count == "triplets" else torch.cat([pos > 0, neg > 0])
    return (pos + neg).sum() / active.sum()


def authors_ms_loss(cells, labels, transposed=False, alpha=2.0, beta=40.0, thresh=0.5, margin=0.1):
    b = len(cells)
    x, y = cells.repeat_interleave(b, dim=0), cells.repeat(b, 1, 1)
    _, _, x_mean, y_mean, sim1, plan = _terms(x, y, transposed)
    sim2 = (x_mean * y_mean).sum(1).reshape(-1, 1, 1)
    similarity = (plan * (sim1 + sim2) / 2).sum(dim=(1, 2)).view(b, b)
    losses = []
    for i in range(b):
        pos_idx = labels == labels[i]
        pos_idx[i] = False
        pos_sim, neg_sim = similarity[i][pos_idx], similarity[i][labels != labels[i]]
        keep_neg, keep_pos = neg_sim + margin > pos_sim.min(), pos_sim - margin < neg_sim.max()
        if not keep_neg.any() or not keep_pos.any():
            continue
        pos_term = torch.log(1 + torch.exp(-alpha * (pos_sim[keep_pos] - thresh)).sum()) / alpha
        neg_term = torch.log(1 + torch.exp(beta * (neg_sim[keep_neg] - thresh)).sum()) / beta
        losses.append(pos_term + neg_term)
    return torch.stack(losses).mean()


# ---- the comparison -------------------------------------------------------------------------------------------------

class FixedMiner(nn.Module):
    """Returns the same sampled triplets every call (the authors' distance-weighted sampling is random)."""

    def __init__(self, triplets):
        super().__init__()
        self.triplets = tuple(torch.tensor(t) for t in zip(*triplets))

    def forward(self, embeddings, labels):
        return self.triplets


TRIPLETS = [(0, 1, 2), (1, 0, 5), (2, 3, 9), (3, 2, 0), (4, 5, 11), (5, 4, 7), (6, 7, 1), (7, 6, 10),
            (8, 9, 4), (9, 8, 3), (10, 11, 6), (11, 10, 8)]


@functools.cache  # each is computed once and only read
def _ours_margin(count):
    cells, labels = _batch()
    loss = build_loss("margin", {"beta": 1.2, "count": count}, similarity="diml", num_classes=NUM_CLASSES,
                      embed_dim=D, miner="distance", ot=OTOptions(tol=1e-9))
    loss.miner = FixedMiner(TRIPLETS)
    cells = cells.clone().requires_grad_(True)
    value = loss(cells.mean(2), cells, labels)  # the authors' global vector: the mean of the cells
    value.backward()
    return value.detach(), cells.grad, loss.loss.beta.grad


@functools.cache  # each is computed once and only read
def _authors_margin(transposed, count="triplets"):
    cells, labels = _batch()
    cells = cells.double().requires_grad_(True)
    beta = torch.full((NUM_CLASSES,), 1.2, dtype=torch.float64, requires_grad=True)
    value = authors_margin_loss(cells, labels, beta, TRIPLETS, transposed, count=count)
    value.backward()
    return value.detach(), cells.grad, beta.grad


@pytest.mark.parametrize("count", ["triplets", "terms"])
def test_margin_diml_and_its_gradients_equal_the_authors_formula(count):
    value, grad, beta_grad = _ours_margin(count)
    ref_value, ref_grad, ref_beta_grad = _authors_margin(transposed=False, count=count)
    assert 0.05 < ref_value.item() < 1.0  # a batch with active and inactive hinges
    assert abs(value.item() - ref_value.item()) < EXACT
    torch.testing.assert_close(grad.double(), ref_grad, atol=EXACT, rtol=0)
    torch.testing.assert_close(beta_grad.double(), ref_beta_grad, atol=EXACT, rtol=0)


def test_margin_count_is_the_authors_or_of_active_hinges():
    """The two divisors differ on this batch (some triplets have both hinges active)."""
    by_triplets, by_terms = _authors_margin(False, "triplets")[0], _authors_margin(False, "terms")[0]
    assert by_triplets.item() > by_terms.item() * 1.05


def test_margin_diml_with_the_authors_transposed_marginals_differs_by_the_stated_amount():
    """docs/FIDELITY.md: on this batch the transposed marginals move the margin-DIML loss from 0.2951 to 0.3298
    (3.5e-2) and change its gradient with respect to the cells by 33 % of the gradient's norm."""
    value, grad, _ = _ours_margin("triplets")
    t_value, t_grad, _ = _authors_margin(transposed=True)
    grad_diff = ((grad.double() - t_grad).norm() / t_grad.norm()).item()
    assert value.item() == pytest.approx(0.2951, abs=1e-4) and t_value.item() == pytest.approx(0.3298, abs=1e-4)
    assert grad_diff == pytest.approx(0.33, abs=0.01)


@functools.cache  # each is computed once and only read
def _ours_ms():
    cells, labels = _batch()
    loss = build_loss("multisimilarity", None, similarity="diml", num_classes=NUM_CLASSES, embed_dim=D,
                      ot=OTOptions(tol=1e-9))
    cells = cells.clone().requires_grad_(True)
    value = loss(cells.mean(2), cells, labels)
    value.backward()
    return value.detach(), cells.grad


@functools.cache  # each is computed once and only read
def _authors_ms(transposed):
    cells, labels = _batch()
    cells = cells.double().requires_grad_(True)
    value = authors_ms_loss(cells, labels, transposed)
    value.backward()
    return value.detach(), cells.grad


def test_ms_diml_and_its_gradients_equal_the_authors_formula():
    value, grad = _ours_ms()
    ref_value, ref_grad = _authors_ms(transposed=False)
    assert ref_value.item() > 0.1
    assert abs(value.item() - ref_value.item()) < EXACT
    torch.testing.assert_close(grad.double(), ref_grad, atol=EXACT, rtol=0)


def test_ms_diml_with_the_authors_transposed_marginals_differs_by_the_stated_amount():
    """docs/FIDELITY.md: on this batch the transposed marginals move the MS-DIML loss from 0.4965 to 0.5144
    (1.8e-2) and change its gradient with respect to the cells by 35 % of the gradient's norm."""
    value, grad = _ours_ms()
    t_value, t_grad = _authors_ms(transposed=True)
    grad_diff = ((grad.double() - t_grad).norm() / t_grad.norm()).item()
    assert value.item() == pytest.approx(0.4965, abs=1e-4) and t_value.item() == pytest.approx(0.5144, abs=1e-4)
    assert grad_diff == pytest.approx(0.35, abs=0.01)
