"""Hand-written references for the loss tests: per-pair similarities and per-element loss loops, in float64.

Nothing here is batched or imported from diml: pair functions are computed one pair at a time (POT ``ot.sinkhorn``
for the structural ones) and every loss follows its paper's formula with explicit Python loops.
"""

from __future__ import annotations

import math

import numpy as np
import ot as pot


def unit(v):
    return v / np.linalg.norm(v)


def snr(x, y):
    return np.var(x - y) / np.var(x)


class GlobalPairs:
    """Pair functions of the global embeddings ``g (N, D)`` (normalised per row)."""

    def __init__(self, g):
        self.g = np.array([unit(row) for row in np.asarray(g, dtype=np.float64)])

    def sim(self, i, j):
        return float(self.g[i] @ self.g[j])

    def euclid(self, i, j):
        return float(np.linalg.norm(self.g[i] - self.g[j]))

    def snr(self, i, j):
        return float(snr(self.g[i], self.g[j]))


def attention(global_vec, cells):
    """``relu(g . cell_k) / sum``, uniform when every weight is zero: ``(C,)``, ``(R, C)`` -> ``(R,)``."""
    w = np.maximum(cells @ global_vec, 0.0)
    return w / w.sum() if w.sum() > 0 else np.full(len(cells), 1.0 / len(cells))


class StructuralPairs:
    """DIML pair functions: POT float64 Sinkhorn on each (query, reference) pair separately.

    ``g (N, D)``, ``local (N, D, R)``.  Paper definition: ``S_kl = cos(q_k, r_l)``, cost ``1 - S``, row marginal
    ``relu(r_g . q_k)``, column marginal ``relu(q_g . r_l)`` (normalised; or uniform).
    """

    def __init__(self, g, local, *, eps=0.05, marginals="cross_attention"):
        g, local = np.asarray(g, dtype=np.float64), np.asarray(local, dtype=np.float64)
        self.g = np.array([unit(row) for row in g])
        self.cells = np.array([[unit(local[n, :, k]) for k in range(local.shape[2])] for n in range(len(g))])
        self.eps, self.marginals = eps, marginals
        self._plans = {}

    def plan(self, i, j):
        if (i, j) not in self._plans:
            q, r = self.cells[i], self.cells[j]
            s = q @ r.T
            if self.marginals == "uniform":
                a = np.full(len(q), 1.0 / len(q))
                b = np.full(len(r), 1.0 / len(r))
            else:
                a, b = attention(self.g[j], q), attention(self.g[i], r)
            with np.errstate(divide="ignore"):  # log of a zero attention weight is -inf, as intended
                t = pot.sinkhorn(a, b, 1.0 - s, self.eps, method="sinkhorn_log", numItermax=20_000, stopThr=1e-11,
                                 warn=False)
            error = np.abs(t.sum(1) - a).sum() + np.abs(t.sum(0) - b).sum()
            if error > 1e-9:
                raise RuntimeError(f"POT reference did not converge on pair {(i, j)} (marginal error {error:.1e})")
            self._plans[(i, j)] = (t, s)
        return self._plans[(i, j)]

    def sim(self, i, j, include_global=True):
        t, s = self.plan(i, j)
        if not include_global:
            return float((t * s).sum())
        s_g = self.g[i] @ self.g[j]
        return float((t * (s + s_g) / 2).sum())

    def euclid(self, i, j, include_global=True):
        t, _ = self.plan(i, j)
        q, r = self.cells[i], self.cells[j]
        d = np.array([[np.linalg.norm(q[k] - r[m]) for m in range(len(r))] for k in range(len(q))])
        structural = float((t * d).sum())
        if not include_global:
            return structural
        return 0.5 * (structural + float(np.linalg.norm(self.g[i] - self.g[j])))

    def snr(self, i, j):
        t, _ = self.plan(i, j)
        q, r = self.cells[i], self.cells[j]
        d = np.array([[snr(q[k], r[m]) for m in range(len(r))] for k in range(len(q))])
        return 0.5 * (float((t * d).sum()) + float(snr(self.g[i], self.g[j])))


# ----------------------------------------------------------------------------------------------------- tuples
def all_triplets(labels):
    n = len(labels)
    return [(a, p, m) for a in range(n) for p in range(n) for m in range(n)
            if p != a and labels[p] == labels[a] and labels[m] != labels[a]]


def all_pairs(labels):
    n = len(labels)
    pos = [(i, j) for i in range(n) for j in range(n) if i != j and labels[i] == labels[j]]
    neg = [(i, j) for i in range(n) for j in range(n) if labels[i] != labels[j]]
    return pos, neg


def relu(x):
    return max(x, 0.0)


def mean(values):
    return sum(values) / len(values) if values else 0.0


def mean_nonzero(values):
    return mean([v for v in values if v > 0])


# ----------------------------------------------------------------------------------------------- pair losses
def margin(d, labels, triplets, beta, margin_):
    """Wu et al. 2017: sum of [d_ap - b + m]_+ + [b - d_an + m]_+ over the number of non-zero terms."""
    terms = []
    for a, p, n in triplets:
        b = beta[labels[a]]
        terms += [relu(d(a, p) - b + margin_), relu(b - d(a, n) + margin_)]
    active = sum(t > 0 for t in terms)
    return sum(terms) / active if active else 0.0


def triplet(d, triplets, margin_):
    return mean([relu(d(a, p) - d(a, n) + margin_) for a, p, n in triplets])


def contrastive(d, pos_pairs, neg_pairs, pos_margin, neg_margin, reduce=mean):
    return reduce([relu(d(i, j) - pos_margin) for i, j in pos_pairs]) + reduce(
        [relu(neg_margin - d(i, j)) for i, j in neg_pairs]
    )


def multisimilarity(s, labels, alpha, beta, base, margin_):
    """Wang et al. 2019 with its mining, averaged over anchors with mined pairs (the DIML authors' loop)."""
    losses = []
    for i in range(len(labels)):
        pos = [s(i, j) for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        neg = [s(i, j) for j in range(len(labels)) if labels[j] != labels[i]]
        if not pos or not neg:
            continue
        kept_neg = [v for v in neg if v + margin_ > min(pos)]
        kept_pos = [v for v in pos if v - margin_ < max(neg)]
        if not kept_neg or not kept_pos:
            continue
        pos_term = math.log(1 + sum(math.exp(-alpha * (v - base)) for v in kept_pos)) / alpha
        neg_term = math.log(1 + sum(math.exp(beta * (v - base)) for v in kept_neg)) / beta
        losses.append(pos_term + neg_term)
    return mean(losses)


def _by_anchor(pairs):
    grouped = {}
    for i, j in sorted(set(pairs)):
        grouped.setdefault(i, []).append(j)
    return grouped


def lifted(d, pos_pairs, neg_pairs, neg_margin, pos_margin):
    """Hermans et al. 2017: per anchor [log sum_p e^(d_ap - m+) + log sum_n e^(m- - d_an)]_+ (pairs as sets)."""
    pos, neg = _by_anchor(pos_pairs), _by_anchor(neg_pairs)
    losses = []
    for i in sorted(set(pos) & set(neg)):
        value = math.log(sum(math.exp(d(i, j) - pos_margin) for j in pos[i])) + math.log(
            sum(math.exp(neg_margin - d(i, j)) for j in neg[i])
        )
        losses.append(relu(value))
    return mean(losses)


def npair(s, labels):
    """Sohn 2016 as PML: per class the first (anchor, positive) pair in row-major order, softmax over positives."""
    chosen = {}
    for a in range(len(labels)):
        for p in range(len(labels)):
            if p != a and labels[p] == labels[a] and labels[a] not in chosen:
                chosen[labels[a]] = (a, p)
    pairs = list(chosen.values())
    losses = []
    for k, (a, _) in enumerate(pairs):
        logits = [s(a, p) for _, p in pairs]
        losses.append(-logits[k] + math.log(sum(math.exp(v) for v in logits)))
    return mean(losses)


def histogram(s, triplets, n_bins):
    """Ustinova & Lempitsky 2016: sum_r p_neg(r) * sum_{q <= r} p_pos(q), triangular binning on [-1, 1]."""
    pos = {tuple(sorted((a, p))) for a, p, _ in triplets}
    neg = {tuple(sorted((a, n))) for a, _, n in triplets}
    if not triplets:
        return 0.0
    delta = 2.0 / n_bins
    nodes = [-1 + r * delta for r in range(n_bins + 1)]

    def density(pairs):
        return [mean([relu(1 - abs(s(i, j) - t) / delta) for i, j in pairs]) for t in nodes]

    p_pos, p_neg = density(pos), density(neg)
    return sum(p_neg[r] * sum(p_pos[: r + 1]) for r in range(len(nodes)))


def quadruplet(d, labels, triplets, margin_1, margin_2):
    if not triplets:
        return 0.0
    first = mean([relu(d(a, p) - d(a, n) + margin_1) for a, p, n in triplets])
    second = [relu(d(a, p) - d(n, m) + margin_2) for a, p, n in triplets for m in range(len(labels))
              if labels[m] != labels[a] and labels[m] != labels[n]]
    return first + mean(second)


def circle(s, pos_pairs, neg_pairs, m, gamma):
    """Sun et al. 2020: softplus(logsumexp_n gamma a_n (s_n - m) + logsumexp_p -gamma a_p (s_p - 1 + m)), mean of
    the non-zero anchor losses (pairs as sets)."""
    pos, neg = _by_anchor(pos_pairs), _by_anchor(neg_pairs)
    losses = []
    for i in sorted(set(pos) & set(neg)):
        lp = [-gamma * relu(1 + m - s(i, j)) * (s(i, j) - (1 - m)) for j in pos[i]]
        ln = [gamma * relu(s(i, j) + m) * (s(i, j) - m) for j in neg[i]]
        total = math.log(sum(math.exp(v) for v in lp)) + math.log(sum(math.exp(v) for v in ln))
        losses.append(math.log1p(math.exp(total)))
    return mean_nonzero(losses)


def pair_loss(name, p, pairs, labels, triplets=None, num_classes=None):
    """Reference value of pair loss ``name`` with hyperparameters ``p`` on a pair object (``sim``/``euclid``/``snr``).

    ``triplets`` are the miner's (anchor, positive, negative) tuples, ``None`` for "no miner" (all tuples).
    """
    mined = triplets is not None
    triplets = triplets if mined else all_triplets(labels)
    pos, neg = ([(a, q) for a, q, _ in triplets], [(a, n) for a, _, n in triplets]) if mined else all_pairs(labels)
    d, s = pairs.euclid, pairs.sim
    if name == "margin":
        return margin(d, labels, triplets, [p["beta"]] * num_classes, p["margin"])
    if name == "triplet":
        return triplet(d, triplets, p["margin"])
    if name == "contrastive":
        return contrastive(d, pos, neg, p["pos_margin"], p["neg_margin"])
    if name == "snr":
        return contrastive(pairs.snr, pos, neg, p["pos_margin"], p["neg_margin"], reduce=mean_nonzero)
    if name == "multisimilarity":
        return multisimilarity(s, labels, p["alpha"], p["beta"], p["base"], p["margin"])
    if name == "lifted":
        return lifted(d, pos, neg, p["neg_margin"], p["pos_margin"])
    if name == "npair":
        return npair(s, labels)
    if name == "histogram":
        return histogram(s, triplets, p["n_bins"])
    if name == "quadruplet":
        return quadruplet(d, labels, triplets, p["margin_1"], p["margin_2"])
    if name == "circle":
        return circle(s, pos, neg, p["m"], p["gamma"])
    raise KeyError(name)


# ------------------------------------------------------------------------------ global-only (proxies, geometry)
def softmax_ce(logits, target):
    top = max(logits)
    return -logits[target] + top + math.log(sum(math.exp(v - top) for v in logits))


def proxynca(x, proxies, labels, scale):
    xs, ps = [unit(v) for v in x], [unit(v) for v in proxies]
    losses = []
    for i, y in enumerate(labels):
        logits = [-scale * float(np.sum((xs[i] - p) ** 2)) for p in ps]
        losses.append(softmax_ce(logits, y))
    return mean(losses)


def proxyanchor(x, proxies, labels, margin_, alpha):
    xs, ps = [unit(v) for v in x], [unit(v) for v in proxies]
    present = sorted(set(labels))
    pos = sum(math.log(1 + sum(math.exp(-alpha * (xs[i] @ ps[c] - margin_)) for i in range(len(xs))
                               if labels[i] == c)) for c in present)
    neg = sum(math.log(1 + sum(math.exp(alpha * (xs[i] @ ps[c] + margin_)) for i in range(len(xs))
                               if labels[i] != c)) for c in range(len(ps)))
    return pos / len(present) + neg / len(ps)


def arcface(x, weights, labels, margin_deg, scale):
    m = math.radians(margin_deg)
    xs, ws = [unit(v) for v in x], [unit(w) for w in np.asarray(weights).T]
    losses = []
    for i, y in enumerate(labels):
        cos = [float(xs[i] @ w) for w in ws]
        theta = math.acos(max(-1.0, min(1.0, cos[y])))
        cos[y] = math.cos(theta + m) if theta <= math.pi - m else cos[y] - m * math.sin(m)
        losses.append(softmax_ce([scale * c for c in cos], y))
    return mean(losses)


def normalized_softmax(x, weights, labels, temperature):
    xs, ws = [unit(v) for v in x], [unit(w) for w in np.asarray(weights).T]
    return mean([softmax_ce([float(xs[i] @ w) / temperature for w in ws], y) for i, y in enumerate(labels)])


def softtriple(x, fc, labels, centers, la, gamma, margin_, reg_weight):
    """Qian et al. 2019 (SoftTriple) plus reg_weight x mean over same-class centre pairs of sqrt(2 - 2 cos)/2."""
    xs, ws = [unit(v) for v in x], [unit(w) for w in np.asarray(fc).T]
    n_classes = len(ws) // centers
    losses = []
    for i, y in enumerate(labels):
        logits = []
        for c in range(n_classes):
            sims = [float(xs[i] @ ws[c * centers + k]) for k in range(centers)]
            weights = np.exp(np.array(sims) / gamma)
            logits.append(float((weights / weights.sum()) @ np.array(sims)))
        logits[y] -= margin_
        losses.append(softmax_ce([la * v for v in logits], y))
    reg_terms = [math.sqrt(2.0 - 2.0 * float(ws[c * centers + k] @ ws[c * centers + kk]))
                 for c in range(n_classes) for k in range(centers) for kk in range(k + 1, centers)]
    reg = sum(reg_terms) / (2 * len(reg_terms)) if reg_terms and reg_weight > 0 else 0.0
    return mean(losses) + reg_weight * reg


def angular(x, labels, alpha_deg):
    """Wang et al. 2017 as PML: per positive pair log(1 + sum_n exp(4 tan^2 a (x_a + x_p).x_n - 2 (1 + tan^2 a)
    x_a.x_p)), averaged over positive pairs."""
    xs = [unit(v) for v in x]
    t2 = math.tan(math.radians(alpha_deg)) ** 2
    pos, _ = all_pairs(labels)
    losses = []
    for a, p in pos:
        negs = [n for n in range(len(xs)) if labels[n] != labels[a]]
        f = [4 * t2 * float((xs[a] + xs[p]) @ xs[n]) - 2 * (1 + t2) * float(xs[a] @ xs[p]) for n in negs]
        losses.append(math.log(1 + sum(math.exp(v) for v in f)))
    return mean(losses)
