"""Keypoint transfer scored by PCK (diml.evaluation.correspondence, .keypoint_transfer) against hand-computed values,
a hand loop over pairs, and a per-pair Python loop with POT's float64 log-domain Sinkhorn as the plan."""

import itertools
import math
import re

import numpy as np
import ot as pot
import pytest
import torch

from diml.evaluation import (
    cell_centres,
    cell_index,
    correspondence_metrics,
    sample_pairs,
    transfer_keypoints,
    transfer_scores,
)
from diml.ot import OTOptions

S, GRID = 224.0, 4  # cells of 56 px; centres 28, 84, 140, 196


def _kp(rows):
    """``(B, P, 3)`` float64 keypoints from nested lists of ``(x, y)`` or None (invisible)."""
    return torch.tensor([[[x, y, 1.0] if (x, y) != (None, None) else [0.0, 0.0, 0.0] for x, y in pair]
                         for pair in rows], dtype=torch.float64)


NONE = (None, None)


# ------------------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("grid, size, point, cell", [
    (4, 224, (0, 0), 0), (4, 224, (55.999, 0), 0), (4, 224, (56, 0), 1), (4, 224, (0, 56), 4),
    (4, 224, (112, 112), 10), (4, 224, (224, 224), 15), (4, 224, (223.9, 111.9), 7), (4, 224, (224, 0), 3),
    (7, 224, (32, 64), 15), (7, 224, (31.99, 63.99), 7), (3, 90, (60, 30), 5),
])
def test_a_point_on_a_cell_border_belongs_to_the_cell_right_of_or_below_it(grid, size, point, cell):
    assert int(cell_index(torch.tensor(point, dtype=torch.float64), grid=grid, image_size=size)) == cell


def test_cell_centres_are_row_major():
    centres = cell_centres(4, 224)
    assert centres.shape == (16, 2)
    assert centres[0].tolist() == [28, 28] and centres[1].tolist() == [84, 28] and centres[4].tolist() == [28, 84]
    assert centres[15].tolist() == [196, 196]


# ------------------------------------------------------------------------------------------------ scoring
def test_a_uniform_plan_scores_the_hand_computed_values():
    """Uniform plan: argmax -> cell 0 (first of ties, centre (28, 28)), mean -> the image centre (112, 112), which
    lies on a border and so in cell 10.  Distances by hand, thresholds 11.2 / 22.4 / 44.8 px (L = 224) and 5 / 10 / 20
    px (box side 100)."""
    query = _kp([[(112, 112), (0, 0), (224, 224), (150, 150), (50, 50)]])
    ref = _kp([[(112, 112), (120, 100), (10, 40), (140, 150), NONE]])  # the last part is not scored
    plans = torch.full((1, 16, 16), 1.0 / 256)
    out = transfer_scores(plans, query, ref, grid=GRID, image_size=S, ref_boxes=torch.tensor([[0.0, 0, 100, 50]]),
                          part_names=["a", "b", "c", "d", "e"])
    # mean (112, 112): distances 0, 14.42, 124.8, 47.2; cells 10, 6, 0, 10 against 10
    assert [out[f"mean/PCK@{a}"] for a in (0.05, 0.1, 0.2)] == [25.0, 50.0, 50.0]
    assert [out[f"mean/PCK_bbox@{a}"] for a in (0.05, 0.1, 0.2)] == [25.0, 25.0, 50.0]
    assert out["mean/cell_acc"] == 50.0
    # argmax (28, 28): distances 118.8, 116.8, 21.63, 164.3; cells against 0: only part c
    assert [out[f"argmax/PCK@{a}"] for a in (0.05, 0.1, 0.2)] == [0.0, 25.0, 25.0]
    assert [out[f"argmax/PCK_bbox@{a}"] for a in (0.05, 0.1, 0.2)] == [0.0, 0.0, 0.0]
    assert out["argmax/cell_acc"] == 25.0
    assert out["argmax/untransferred"] == out["mean/untransferred"] == 0.0
    # identity: (112, 112) and (150, 150) land within 10 px; (224, 224) is cell 15
    assert [out[f"identity/PCK@{a}"] for a in (0.05, 0.1, 0.2)] == [50.0, 50.0, 50.0]
    assert out["identity/cell_acc"] == 50.0
    # ceiling: the centres (140, 140), (140, 84), (28, 28), (140, 140): 39.6, 25.6, 21.6, 10 px
    assert [out[f"grid_ceiling/PCK@{a}"] for a in (0.05, 0.1, 0.2)] == [25.0, 50.0, 100.0]
    assert out["grid_ceiling/cell_acc"] == 100.0
    assert out["mean/part/a/PCK@0.1"] == 100.0 and out["mean/part/b/PCK@0.1"] == 100.0
    assert out["argmax/part/c/cell_acc"] == 100.0 and out["argmax/part/a/cell_acc"] == 0.0
    assert math.isnan(out["mean/part/e/cell_acc"]) and out["part/e/num_keypoints"] == 0.0
    assert out["num_keypoints"] == 4.0 and out["num_directed_pairs"] == 1.0
    assert out["image_size"] == 224.0 and out["grid"] == 4.0


def test_a_plan_sending_each_part_cell_to_the_same_parts_cell_scores_the_ceiling():
    gen = torch.Generator().manual_seed(3)
    b, p = 6, 5
    query = torch.zeros(b, p, 3, dtype=torch.float64)
    ref = torch.zeros(b, p, 3, dtype=torch.float64)
    plans = torch.rand(b, 16, 16, generator=gen) * 0.01  # mass on every other cell too
    for k in range(b):
        cells = torch.randperm(16, generator=gen)[:p]  # distinct query cells, so one row per part
        query[k, :, 0] = (cells % 4).double() * 56 + torch.rand(p, generator=gen).double() * 56
        query[k, :, 1] = (cells // 4).double() * 56 + torch.rand(p, generator=gen).double() * 56
        ref[k, :, :2] = torch.rand(p, 2, generator=gen).double() * 224
        query[k, :, 2] = (torch.rand(p, generator=gen) < 0.8).double()
        ref[k, :, 2] = (torch.rand(p, generator=gen) < 0.8).double()
        for part in range(p):
            row = int(cell_index(query[k, part, :2], grid=4, image_size=224))
            plans[k, row] = 0.0
            plans[k, row, int(cell_index(ref[k, part, :2], grid=4, image_size=224))] = 0.3
    boxes = torch.tensor([[10.0, 10, 150, 90]]).expand(b, 4)
    out = transfer_scores(plans, query, ref, grid=4, image_size=224, ref_boxes=boxes, part_names=list("abcde"))
    assert out["argmax/cell_acc"] == out["mean/cell_acc"] == 100.0
    for rule, alpha, bbox in itertools.product(("argmax", "mean"), (0.05, 0.1, 0.2), ("", "_bbox")):
        assert out[f"{rule}/PCK{bbox}@{alpha}"] == out[f"grid_ceiling/PCK{bbox}@{alpha}"]
    for part in "abcde":
        assert out[f"mean/part/{part}/PCK@0.1"] == out[f"grid_ceiling/part/{part}/PCK@0.1"]
    scored = (query[..., 2] * ref[..., 2]).sum()
    assert out["num_keypoints"] == float(scored) and 0 < scored < b * p


def test_invisible_parts_and_pairs_without_a_common_part_are_not_scored():
    query = _kp([[(10, 10), NONE, (100, 100)], [(10, 10), NONE, NONE], [(5, 5), (6, 6), (7, 7)]])
    ref = _kp([[(10, 10), (50, 50), NONE], [NONE, (20, 20), (30, 30)], [(5, 5), (6, 6), NONE]])
    out = transfer_scores(torch.eye(16).expand(3, 16, 16) / 16, query, ref, grid=4, image_size=224)
    assert out["num_keypoints"] == 3.0  # pair 0: part 0; pair 1: none; pair 2: parts 0 and 1
    assert out["num_directed_pairs"] == 2.0
    assert out["identity/PCK@0.05"] == 100.0 and out["argmax/cell_acc"] == 100.0


def test_an_empty_box_is_accepted_and_gives_a_zero_threshold():
    """A box clipped out of the crop is empty (diml.data clips boxes to the crop): L = 0, only exact hits count."""
    kp = _kp([[(100, 100)]])
    out = transfer_scores(torch.eye(16)[None] / 16, kp, kp.clone(), grid=4, image_size=S,
                          ref_boxes=torch.tensor([[224.0, 50.0, 224.0, 50.0]]))
    assert out["identity/PCK_bbox@0.05"] == 100.0 and out["grid_ceiling/PCK_bbox@0.2"] == 0.0
    # its cell's centre (84, 84) is 16 * 2 ** 0.5 = 22.6 px away: past 0.1 * 224 = 22.4, within 44.8
    assert [out[f"grid_ceiling/PCK@{a}"] for a in (0.05, 0.1, 0.2)] == [0.0, 0.0, 100.0]


def test_a_keypoint_whose_cell_carries_no_mass_is_untransferred_and_wrong():
    plans = torch.eye(16).expand(1, 16, 16).clone() / 16
    plans[0, 5] = 0.0  # query cell 5 (row 1, column 1) has no mass
    query = _kp([[(60, 60), (10, 10)]])
    out = transfer_scores(plans, query, query.clone(), grid=4, image_size=224)
    assert out["argmax/untransferred"] == out["mean/untransferred"] == 50.0
    assert out["argmax/cell_acc"] == out["mean/cell_acc"] == 50.0
    assert out["mean/PCK@0.2"] == 50.0 and out["grid_ceiling/PCK@0.2"] == 100.0
    moved = transfer_keypoints(plans, query, grid=4, image_size=224)
    assert moved.mass[0].tolist() == [0.0, 1 / 16] and moved.argmax_cell[0, 1] == 0
    assert moved.mean_point[0, 1].tolist() == [28.0, 28.0]


# ------------------------------------------------------------------------------------------------ pairs
def _pairs_by_hand(labels, keypoints):
    visible = keypoints[..., 2] > 0
    return [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels))
            if labels[i] == labels[j] and bool((visible[i] & visible[j]).any())]


def _random_keypoints(n, p, gen, visible=0.6, size=S):
    kp = torch.rand(n, p, 3, generator=gen, dtype=torch.float64) * size
    kp[..., 2] = (torch.rand(n, p, generator=gen) < visible).double()
    kp[..., :2] *= kp[..., 2:]
    return kp


def test_pairs_are_all_eligible_same_class_pairs_when_fewer_than_max_pairs():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (40,), generator=gen)
    keypoints = _random_keypoints(40, 3, gen, visible=0.3)
    expected = _pairs_by_hand(labels.tolist(), keypoints)
    assert 0 < len(expected) < sum(int(c) * (int(c) - 1) // 2 for c in torch.bincount(labels))  # some left out
    pairs = sample_pairs(labels, keypoints, max_pairs=10_000, seed=0)
    assert list(zip(pairs.first.tolist(), pairs.second.tolist())) == expected
    assert pairs.num_eligible == len(expected)


def test_pairs_are_a_seeded_sample_of_max_pairs_of_them():
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (60,), generator=gen).numpy()
    keypoints = _random_keypoints(60, 4, gen).numpy()
    expected = _pairs_by_hand(labels.tolist(), torch.from_numpy(keypoints))
    pick = torch.randperm(len(expected), generator=torch.Generator().manual_seed(7))[:50]
    pairs = sample_pairs(labels, keypoints, max_pairs=50, seed=7)
    assert list(zip(pairs.first.tolist(), pairs.second.tolist())) == [expected[k] for k in sorted(pick.tolist())]
    assert pairs.num_eligible == len(expected)
    again, other = sample_pairs(labels, keypoints, max_pairs=50, seed=7), sample_pairs(labels, keypoints,
                                                                                       max_pairs=50, seed=8)
    assert torch.equal(again.first, pairs.first) and torch.equal(again.second, pairs.second)
    assert not (torch.equal(other.first, pairs.first) and torch.equal(other.second, pairs.second))


# ------------------------------------------------------------------------------------------------ protocol
def _gallery(labels, d, cells, gen, shift=0.6):
    """``(local (N, d, cells), global (N, d))``: the cells of a class share a direction, so a global vector attends
    to most cells of its class (some still get zero)."""
    base = torch.randn(int(labels.max()) + 1, d, 1, generator=gen)[labels]
    local = shift * base + torch.randn(len(labels), d, cells, generator=gen)
    return local, base[..., 0] + 0.5 * torch.randn(len(labels), d, generator=gen)


def test_identical_images_transfer_every_keypoint_to_its_own_cell():
    gen = torch.Generator().manual_seed(2)
    labels = torch.arange(12) // 3
    local, glob = _gallery(torch.arange(4), 32, 16, gen, shift=1.0)
    keypoints = _random_keypoints(4, 6, gen, visible=0.8)
    out = correspondence_metrics(local[labels], glob[labels], labels, keypoints[labels], grid=4, image_size=S,
                                 part_names=[f"p{k}" for k in range(6)])
    assert out["ot_argmax/untransferred"] == 0.0
    assert out["ot_argmax/cell_acc"] == out["nearest_cosine/cell_acc"] == out["identity/cell_acc"] == 100.0
    for alpha in (0.05, 0.1, 0.2):
        assert out[f"ot_argmax/PCK@{alpha}"] == out[f"grid_ceiling/PCK@{alpha}"]
        assert out[f"identity/PCK@{alpha}"] == 100.0
    assert out["num_pairs"] == 12.0 and out["num_keypoints"] == 2 * float(
        sum((keypoints[c, :, 2] > 0).sum() for c in range(4)) * 3)


def test_both_directions_are_counted_and_the_result_does_not_depend_on_the_chunks():
    gen = torch.Generator().manual_seed(4)
    labels = torch.arange(20) % 4
    local, glob = _gallery(labels, 16, 9, gen)
    keypoints = _random_keypoints(20, 5, gen, size=90)
    part_names = list("abcde")
    out = correspondence_metrics(local, glob, labels, keypoints, grid=3, image_size=90, part_names=part_names)
    pairs = _pairs_by_hand(labels.tolist(), keypoints)
    common = sum(int(((keypoints[i, :, 2] > 0) & (keypoints[j, :, 2] > 0)).sum()) for i, j in pairs)
    assert out["num_pairs"] == out["num_eligible_pairs"] == len(pairs)
    assert out["num_keypoints"] == 2 * common and out["num_directed_pairs"] == 2 * len(pairs)
    assert sum(out[f"part/{p}/num_keypoints"] for p in part_names) == 2 * common
    assert correspondence_metrics(local, glob, labels, keypoints, grid=3, image_size=90, part_names=part_names,
                                  chunk=7) == out
    sampled = correspondence_metrics(local, glob, labels, keypoints, grid=3, image_size=90, part_names=part_names,
                                     max_pairs=10, seed=3)
    assert sampled["num_pairs"] == 10 and sampled["num_eligible_pairs"] == len(pairs) and sampled["seed"] == 3


def test_blocks_on_two_threads_count_what_one_thread_counts():
    """Over 2,048 pairs the blocks run in the caller and a pool thread (diml.ot._threads); each pair is solved
    alone, so the counts are the same."""
    gen = torch.Generator().manual_seed(8)
    labels = torch.arange(160) % 2  # 2 x 3,160 pairs
    local, glob = _gallery(labels, 4, 4, gen)
    keypoints = _random_keypoints(160, 3, gen, visible=0.8, size=64)
    kwargs = dict(grid=2, image_size=64, part_names=["a", "b", "c"], max_pairs=5_000)
    one = correspondence_metrics(local, glob, labels, keypoints, **kwargs)
    torch.set_num_threads(2)  # the fixture restores the count
    assert correspondence_metrics(local, glob, labels, keypoints, **kwargs) == one
    assert one["num_pairs"] == 5_000 and torch.get_num_threads() == 2


# --------------------------------------------------------------- the POT reference: one pair, one direction at a time
EPS = 0.05
ALPHAS = (0.05, 0.1, 0.2)
# Our plans are float32 and stop at a marginal error of 1e-6 (L1); POT's float64 log-domain plans at 1e-12.  The
# kernel exp((S - 1) / eps) turns float32's ~1e-7 relative error in the cosines into ~2e-6 in its entries, so our
# plan entries are within ~1e-6 of POT's (1.1e-7 measured on this case; checked below at PLAN_TOL, 10x the
# estimate).  A row's normalised entries then move by at most ~1e-5 (row masses are ~1/R and more), its barycentre
# by at most R * 1e-5 * S < 0.1 px: the scored keypoints are kept where every decision clears these margins 10-100
# times.
PLAN_TOL = 1e-5
ARGMAX_GAP = 1e-3  # of the row's mass, between the largest entry and the next
DISTANCE_GAP = 0.1  # pixels between a distance and a PCK threshold, or a barycentre and a cell border


def _pot_plan(a, b, cost):
    """POT float64 log-domain Sinkhorn on the support of ``a`` and ``b``; zero rows and columns put back."""
    rows, cols = a > 0, b > 0
    plan = np.zeros_like(cost)
    plan[np.ix_(rows, cols)] = pot.sinkhorn(a[rows], b[cols], cost[np.ix_(rows, cols)], EPS, method="sinkhorn_log",
                                            numItermax=100_000, stopThr=1e-12)
    return plan


def _unit(x):
    return x / np.linalg.norm(x, axis=0, keepdims=True)


class _Reference:
    """Every number of correspondence_metrics by a loop over pairs, directions and parts (numpy float64)."""

    def __init__(self, local, glob, boxes, grid, size):
        self.cells = [_unit(x) for x in local.double().numpy()]  # (D, R) each
        self.glob = [x / np.linalg.norm(x) for x in glob.double().numpy()]
        self.boxes, self.grid, self.size = boxes.double().numpy(), grid, size
        side = size / grid
        self.centres = np.array([((r % grid + 0.5) * side, (r // grid + 0.5) * side) for r in range(grid * grid)])
        self.plans = {}

    def cell(self, x, y):
        side = self.size / self.grid
        return min(int(y // side), self.grid - 1) * self.grid + min(int(x // side), self.grid - 1)

    def plan(self, q, r, uniform):
        if (q, r, uniform) not in self.plans:
            sim = self.cells[q].T @ self.cells[r]
            if uniform:
                a = b = np.full(sim.shape[0], 1.0 / sim.shape[0])
            else:
                a = np.maximum(self.glob[r] @ self.cells[q], 0.0)
                b = np.maximum(self.glob[q] @ self.cells[r], 0.0)
                uniform_a, uniform_b = np.full_like(a, 1.0 / len(a)), np.full_like(b, 1.0 / len(b))
                a = a / a.sum() if a.sum() > 0 else uniform_a  # an all-zero attention falls back to uniform
                b = b / b.sum() if b.sum() > 0 else uniform_b
            self.plans[(q, r, uniform)] = (_pot_plan(a, b, 1.0 - sim), sim)
        return self.plans[(q, r, uniform)]

    def predictions(self, q, r, qx, qy):
        """``{method: (point, cell) or None (untransferred)}`` and the keypoint's decision margins."""
        i = self.cell(qx, qy)
        out, margins = {}, []
        for plan_name, uniform in (("ot", False), ("uniform_ot", True)):
            row = self.plan(q, r, uniform)[0][i]
            mass = row.sum()
            if mass == 0:
                out[f"{plan_name}_argmax"] = out[f"{plan_name}_mean"] = None
                continue
            order = np.argsort(-row)
            margins.append((row[order[0]] - row[order[1]]) / mass / ARGMAX_GAP)
            mean = (row[:, None] * self.centres).sum(0) / mass
            side = self.size / self.grid
            margins.append(min(np.abs(mean / side - np.round(mean / side)).min() * side, 1e9) / DISTANCE_GAP)
            out[f"{plan_name}_argmax"] = (self.centres[order[0]], order[0])
            out[f"{plan_name}_mean"] = (mean, self.cell(*mean))
        sim_row = self.plan(q, r, False)[1][i]
        top = np.sort(sim_row)[-2:]
        margins.append((top[1] - top[0]) / ARGMAX_GAP)
        nearest = int(np.argmax(sim_row))
        out["nearest_cosine"] = (self.centres[nearest], nearest)
        out["identity"] = (np.array([qx, qy]), i)
        return out, margins

    def score(self, keypoints, pairs, part_names):
        """``(results, ill)``: the result dict and the ``(image, part)`` query keypoints whose decisions come within
        the margins."""
        hits, totals, ill = {}, np.zeros(len(part_names)), set()
        for (i, j), (q, r) in itertools.product(pairs, ((0, 1), (1, 0))):
            q, r = (i, j)[q], (i, j)[r]
            for p in range(len(part_names)):
                (qx, qy, qv), (rx, ry, rv) = keypoints[q, p].tolist(), keypoints[r, p].tolist()
                if not (qv and rv):
                    continue
                totals[p] += 1
                target, target_cell = np.array([rx, ry]), self.cell(rx, ry)
                predicted, margins = self.predictions(q, r, qx, qy)
                predicted["grid_ceiling"] = (self.centres[target_cell], target_cell)
                x0, y0, x1, y1 = self.boxes[r]
                thresholds = [a * self.size for a in ALPHAS] + [a * max(x1 - x0, y1 - y0) for a in ALPHAS]
                for method, value in predicted.items():
                    row = hits.setdefault(method, np.zeros((len(part_names), 8)))
                    if value is None:
                        row[p, 7] += 1
                        continue
                    dist = float(np.hypot(*(value[0] - target)))
                    row[p, :6] += [dist <= t for t in thresholds]
                    row[p, 6] += value[1] == target_cell
                    if method != "grid_ceiling":
                        margins += [abs(dist - t) / DISTANCE_GAP for t in thresholds]
                if min(margins) < 1:
                    ill.add((q, p))
        metrics = [f"PCK@{a:g}" for a in ALPHAS] + [f"PCK_bbox@{a:g}" for a in ALPHAS] + ["cell_acc"]
        out = {}
        for method, row in hits.items():
            for k, metric in enumerate(metrics):
                out[f"{method}/{metric}"] = 100 * row[:, k].sum() / totals.sum()
            if method.startswith(("ot_", "uniform_ot_")):
                out[f"{method}/untransferred"] = 100 * row[:, 7].sum() / totals.sum()
            if method in ("ot_argmax", "ot_mean", "grid_ceiling"):
                for p, part in enumerate(part_names):
                    out[f"{method}/part/{part}/cell_acc"] = 100 * row[p, 6] / totals[p]
                    out[f"{method}/part/{part}/PCK@0.1"] = 100 * row[p, 1] / totals[p]
        out.update({f"part/{part}/num_keypoints": totals[p] for p, part in enumerate(part_names)})
        out.update(num_keypoints=totals.sum(), num_pairs=len(pairs), num_directed_pairs=2 * len(pairs))
        return out, ill


def test_ot_and_uniform_ot_match_a_per_pair_loop_with_pot_plans():
    gen = torch.Generator().manual_seed(5)
    n, d, grid, size, parts = 12, 16, 3, 90.0, 6
    labels = torch.arange(n) // 4  # 3 classes of 4: 18 pairs, 36 directions
    local, glob = _gallery(labels, d, grid * grid, gen, shift=0.3)
    boxes = torch.cat([torch.rand(n, 2, generator=gen) * 30, 50 + torch.rand(n, 2, generator=gen) * 40], dim=1)
    # keypoints inside their cells, at least 3 px from every border
    cells = torch.randint(0, grid * grid, (n, parts), generator=gen)
    offset = 3 + torch.rand(n, parts, 2, generator=gen) * 24
    keypoints = torch.stack([(cells % grid) * 30 + offset[..., 0], (cells // grid) * 30 + offset[..., 1],
                             (torch.rand(n, parts, generator=gen) < 0.85).double()], dim=-1).double()
    part_names = [f"part {k}" for k in range(parts)]
    reference = _Reference(local, glob, boxes, grid, size)
    pairs = _pairs_by_hand(labels.tolist(), keypoints)
    expected, ill = reference.score(keypoints.numpy(), pairs, part_names)
    for q, p in ill:  # keep the keypoints whose every decision clears the margins
        keypoints[q, p] = 0.0
    pairs = _pairs_by_hand(labels.tolist(), keypoints)
    expected, ill = reference.score(keypoints.numpy(), pairs, part_names)
    assert not ill and expected["num_keypoints"] >= 100 and 0 < expected["ot_argmax/untransferred"] < 50

    out = correspondence_metrics(local, glob, labels, keypoints, grid=grid, image_size=size, part_names=part_names,
                                 boxes=boxes, ot=OTOptions(eps=EPS))
    assert set(expected) | {"num_eligible_pairs", "seed", "image_size", "grid"} == set(out)
    # every decision (argmax cell, PCK radius) clears its margin (the ill-posed keypoints were dropped above), so
    # both count the same keypoints; the scores are then float64 ratios of equal counts: float64 rounding
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key

    # the plans themselves (float32, tol 1e-6) against POT's, both directions (ours solves one and transposes)
    from diml.ot import match

    for (i, j), uniform in itertools.product(pairs[:6], (False, True)):
        ours = match(local[[i]], glob[[i]], local[[j]], glob[[j]],
                     ot=OTOptions(eps=EPS, marginals="uniform" if uniform else "cross_attention")).plan[0, 0]
        assert np.abs(ours.double().numpy() - reference.plan(i, j, uniform)[0]).max() < PLAN_TOL
        assert np.abs(ours.double().numpy().T - reference.plan(j, i, uniform)[0]).max() < PLAN_TOL


# ------------------------------------------------------------------------------------------------ bad input
def _valid():
    gen = torch.Generator().manual_seed(6)
    labels = torch.arange(8) % 2
    local, glob = _gallery(labels, 8, 16, gen)
    return dict(local_emb=local, global_emb=glob, labels=labels, keypoints=_random_keypoints(8, 3, gen, visible=0.9),
                grid=4, image_size=S, part_names=["a", "b", "c"])


def _outside():
    kp = _valid()["keypoints"].clone()
    kp[2, 1] = torch.tensor([230.0, 5.0, 1.0])
    return kp


@pytest.mark.parametrize("change, message", [
    (dict(grid=3), r"grid must be the cells per side, an int >= 1 with grid \* grid = R = 16"),
    (dict(local_emb=torch.randn(8, 8)), r"local_emb must be floating \(N, D, R\) cell embeddings"),
    (dict(global_emb=torch.randn(8, 5)), r"global_emb must be floating \(N, D\) = \(8, 8\) to match local_emb"),
    (dict(labels=torch.zeros(8)), r"labels must be \(N,\) = \(8,\) integers"),
    (dict(local_emb=torch.full((8, 8, 16), float("nan"))), r"the local/global embeddings contain NaN or inf"),
    (dict(keypoints=torch.zeros(8, 3, 2)), r"keypoints must have shape \(N, P, 3\) = \(8, P, 3\)"),
    (dict(keypoints=torch.zeros(7, 3, 3)), r"keypoints must have shape \(N, P, 3\) = \(8, P, 3\)"),
    (dict(keypoints=_outside()), r"keypoints\[2, 1\] = \(230, 5\) is visible but outside \[0, 224\]: give"),
    (dict(keypoints=torch.full((8, 3, 3), 0.5)), r"keypoints\[..., 2\] \(visible\) must be 0 or 1"),
    (dict(part_names=["a", "b"]), r"part_names must be a list of P = 3 names"),
    (dict(part_names=["a", "b", "a"]), r"part_names must be distinct"),
    (dict(part_names=["a", "b", "c/d"]), r"part_names entry 'c/d' must be"),
    (dict(keypoints=torch.zeros(8, 3, 3)), r"keypoints: no two images of one class share a visible part"),
    (dict(labels=torch.arange(8)), r"keypoints: no two images of one class share a visible part"),
    (dict(boxes=torch.zeros(8, 3)), r"boxes must have shape \(N, 4\) = \(8, 4\)"),
    (dict(boxes=torch.tensor([[5.0, 5, 1, 9]]).expand(8, 4)), r"boxes must hold finite \(x0, y0, x1, y1\) boxes"),
    (dict(alphas=(0.05, 0.2)), r"part_alpha 0.1 must be one of alphas"),
    (dict(alphas=(0.1, -1)), r"alphas must be a non-empty sequence of numbers > 0"),
    (dict(image_size=0), r"image_size must be the side S > 0"),
    (dict(max_pairs=0), r"max_pairs must be an int >= 1"),
    (dict(chunk=0), r"chunk must be an integer >= 1"),
])
def test_bad_input_raises_one_line_naming_the_argument_and_the_fix(change, message):
    with pytest.raises(ValueError, match=message) as info:
        correspondence_metrics(**(_valid() | change))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("plans, message", [
    (torch.zeros(2, 9, 9), r"plans must have shape \(B, R, R\) with R = grid \* grid = 16"),
    (torch.zeros(2, 16), r"plans must be a floating torch.Tensor of shape \(B, R, R\)"),
    (-torch.ones(2, 16, 16), r"plans must be finite and non-negative"),
    (torch.zeros(3, 16, 16), r"query_kp must have shape \(N, P, 3\) = \(3, P, 3\)"),
])
def test_bad_plans_raise_naming_the_argument(plans, message):
    kp = _kp([[(1, 1)], [(2, 2)]])
    with pytest.raises(ValueError, match=message):
        transfer_scores(plans, kp, kp, grid=4, image_size=S)


def test_pairs_without_a_common_visible_part_raise_naming_the_fix():
    with pytest.raises(ValueError, match=r"ref_kp: no part is visible \(flag 1\) in both images of any pair"):
        transfer_scores(torch.zeros(1, 16, 16), _kp([[(1, 1), NONE]]), _kp([[NONE, (2, 2)]]), grid=4, image_size=S)


def test_mismatched_parts_between_query_and_reference_raise():
    with pytest.raises(ValueError, match=re.escape("ref_kp must have shape (N, P, 3) = (1, 1, 3)")):
        transfer_scores(torch.zeros(1, 16, 16), _kp([[(1, 1)]]), _kp([[(1, 1), (2, 2)]]), grid=4, image_size=S)
