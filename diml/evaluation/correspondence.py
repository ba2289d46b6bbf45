r"""Interpretability measured: keypoint transfer through DIML's matching plan on image pairs, scored by PCK as in
semantic correspondence (issue 25).

DIML claims that its transport plan aligns the parts of two images.  We measure it as semantic correspondence
measures a dense matcher: a keypoint annotated in the query image is carried through the plan to the reference image
and compared with the annotation of the same part there.  The transfer rules (argmax cell, barycentre), PCK, the cell
accuracy and the grid's ceiling are defined in :mod:`diml.evaluation.keypoint_transfer`.

**Protocol** (:func:`correspondence_metrics`).  The semantic-correspondence protocols differ in their pairs and L:
SPair-71k (Min et al., 2019) has fixed pairs, one direction, L = the longer side of the target's box; CUB in the
CSM / A-CSM protocol (Kulkarni et al., 2019, ``csm/benchmark/cub/pck_eval.py``) 10,000 random test pairs, not
restricted to a class, both directions, L = the 256 px crop; ASIC (Gupta et al., 2023) all ordered pairs within a
class, L = the image side.  Ours: same-class pairs (DIML compares images of one class, and part ``p`` of image A
corresponds to part ``p`` of image B) with at least one part visible in both, at most ``max_pairs`` unordered pairs
drawn with a seed (all when fewer; :func:`sample_pairs`), each scored in both directions over the keypoints visible
in both images; alpha in {0.05, 0.1, 0.2}; L = S always (``PCK@``) and the target's box side when boxes are given
(``PCK_bbox@``).  Standard PCK: a left eye sent to the right eye is wrong (no mirror-aware permutation).

**Methods**, all on the same pairs and keypoints: ``ot`` (the model's plan with the given
:class:`~diml.ot.OTOptions`, cross-attention marginals by default, in the orientation of :mod:`diml.ot.matching`:
rows are the query's cells with :math:`a_i \propto \mathrm{relu}(\hat g_{ref} \cdot \hat q_i)`), ``uniform_ot`` (the
same with uniform marginals: transport without cross-attention), each by both rules (``ot_argmax``, ``ot_mean``,
...); ``nearest_cosine`` (the reference cell most cosine-similar to the query cell: matching without transport);
``identity`` (the same position: no matching); ``grid_ceiling`` (the true keypoint snapped to its cell's centre).

**Cost.**  One OT solve per unordered pair and plan: swapping the two images transposes the cost and swaps the
marginals, so the plan of ``(B, A)`` is the transpose of the plan of ``(A, B)``.  The gallery is L2-normalised once
(cell-major, the layout the solver's products read); the pairs go through
:func:`diml.ot.matching.pair_terms_candidates` and :func:`~diml.ot.matching.solve_pairs` (what
:func:`diml.ot.match_candidates` runs) in blocks of at most ``chunk`` pairs; on a CPU with ``T > 1`` threads,
blocks of ``chunk / T`` pairs run whole (products, solves, scoring) in the caller and ``T - 1`` pool threads with
one intra-op thread each, as the similarity forms do (:mod:`diml.ot._threads`).  Only the keypoints visible in both
images are gathered, and the hit counts stay on the device until the end: no host sync beyond the solver's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from diml import names
from diml.evaluation._correspondence_inputs import (
    check_alphas,
    check_boxes,
    check_embeddings,
    check_grid,
    check_image_size,
    check_keypoints,
    check_part_names,
    check_sampling,
)
from diml.evaluation._inputs import as_tensor, chunk_option
from diml.evaluation.evaluate import auto_pair_chunk
from diml.evaluation.keypoint_transfer import ALPHAS, Prediction, Tally, Targets, cell_rows
from diml.ot import _threads  # the blocks-per-thread machinery of the similarity forms (one pool per process)
from diml.ot.matching import pair_terms_candidates, solve_pairs
from diml.options import OTOptions, as_options

MAX_PAIRS = 10_000
"""Unordered pairs sampled by default (CSM's 10,000 test pairs)."""


# ------------------------------------------------------------------------------------------------ pairs
class PairSample(NamedTuple):
    """Unordered image pairs: ``first (M,)``, ``second (M,)`` int64 CPU indices with ``first < second``, in
    lexicographic order; ``num_eligible``: how many pairs were eligible before sampling."""

    first: torch.Tensor
    second: torch.Tensor
    num_eligible: int


def sample_pairs(labels, keypoints, *, max_pairs: int = MAX_PAIRS, seed: int = 0) -> PairSample:
    """Same-class image pairs with at least one part visible in both, at most ``max_pairs`` of them.

    The eligible unordered pairs ``(i, j)``, ``i < j``, are listed in lexicographic order; when there are more than
    ``max_pairs``, the first ``max_pairs`` entries of ``torch.randperm(M)`` on a CPU generator seeded with ``seed``
    pick them (returned in lexicographic order again), else all are kept.  Memory: ``O(sum_c n_c^2)`` for the
    classes' sizes ``n_c`` (about 170,000 pairs on CUB's test split: 100 classes of ~59).

    Args:
        labels: ``(N,)`` integer labels; keypoints: ``(N, P, 3)`` ``(x, y, visible)`` (only the flags are read).
        max_pairs: most pairs kept (>= 1); seed: the sampling seed.

    Returns:
        :class:`PairSample`.  Raises ``ValueError`` when no pair is eligible.
    """
    labels = as_tensor(labels, "labels").cpu()
    keypoints = as_tensor(keypoints, "keypoints").cpu()
    check_sampling(labels, keypoints, max_pairs, seed)
    visible = keypoints[..., 2] > 0
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    _, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    end = torch.repeat_interleave(torch.cumsum(counts, 0), counts)  # (N,) one past the last of each one's class
    partners = end - torch.arange(labels.shape[0]) - 1  # later images of the same class, in sorted order
    offsets = torch.cumsum(partners, 0) - partners
    first = torch.repeat_interleave(torch.arange(labels.shape[0]), partners)
    second = first + 1 + torch.arange(int(partners.sum())) - offsets[first]
    first, second = order[first], order[second]
    first, second = torch.minimum(first, second), torch.maximum(first, second)
    keep = (visible[first] & visible[second]).any(1)
    key = torch.sort(first[keep] * labels.shape[0] + second[keep]).values
    if key.numel() == 0:
        raise ValueError("keypoints: no two images of one class share a visible part, so no pair can be scored; pass "
                         "labels with several images per class and keypoints flagged visible (1) where annotated")
    num_eligible = int(key.numel())
    if num_eligible > max_pairs:
        pick = torch.randperm(num_eligible, generator=torch.Generator().manual_seed(seed))[:max_pairs]
        key = key[torch.sort(pick).values]
    return PairSample(key // labels.shape[0], key % labels.shape[0], num_eligible)


# ------------------------------------------------------------------------------------------------ protocol
def correspondence_metrics(
    local_emb,
    global_emb,
    labels,
    keypoints,
    *,
    grid: int,
    image_size: float,
    part_names: Sequence[str],
    boxes=None,
    ot: OTOptions = OTOptions(),
    max_pairs: int = MAX_PAIRS,
    seed: int = 0,
    alphas: Sequence[float] = ALPHAS,
    part_alpha: float = 0.1,
    device: str | torch.device | None = None,
    chunk: int | None = None,
) -> dict[str, float]:
    """Keypoint transfer through the model's matching on sampled same-class pairs, scored by PCK (module docstring).

    Args:
        local_emb: ``(N, D, R)`` cell embeddings (``R = grid * grid``, row-major); global_emb: ``(N, D)``; neither
            need be normalised.  Torch tensors or numpy arrays (computed in float32).
        labels: ``(N,)`` integer class labels.
        keypoints: ``(N, P, 3)`` ``(x, y, visible)`` per image, pixels of the ``S x S`` crop, visible in {0, 1}
            (invisible parts: any finite x, y, e.g. 0).
        grid: cells per side; image_size: the crop side S (L of ``PCK@alpha``).
        part_names: ``P`` part names (per-part results; see :func:`diml.names.check_part_name`).
        boxes: ``(N, 4)`` ``(x0, y0, x1, y1)`` per image in crop pixels, or None; given: also ``PCK_bbox@alpha``.
        ot: :class:`~diml.ot.OTOptions` of the method ``ot`` (``uniform_ot`` uses them with
            ``marginals="uniform"``; a trial evaluates with :data:`diml.ot.TRIAL_EVALUATION_OT`).
        max_pairs: unordered pairs sampled at most (:func:`sample_pairs`); seed: the sampling seed.
        alphas: PCK thresholds; part_alpha: the alpha (one of ``alphas``) of the per-part PCK.
        device: where to solve (default: ``local_emb``'s device); chunk: pairs per solver call (default
            :func:`~diml.evaluation.auto_pair_chunk`).  Memory: a normalised copy of ``local_emb`` and one chunk.

    Returns:
        A flat dict of floats, percentages unless a count.  For each method ``ot_argmax``, ``ot_mean``,
        ``uniform_ot_argmax``, ``uniform_ot_mean``, ``nearest_cosine``, ``identity`` and ``grid_ceiling``:
        ``"<method>/PCK@a"`` (L = S) for each alpha, ``"<method>/PCK_bbox@a"`` (with ``boxes``) and
        ``"<method>/cell_acc"``; ``"<method>/untransferred"`` for the four plan methods (share of keypoints whose
        query cell has no mass, all counted wrong); per part, for ``ot_argmax``, ``ot_mean`` and ``grid_ceiling``,
        ``"<method>/part/<name>/cell_acc"`` and ``"<method>/part/<name>/PCK@<part_alpha>"`` (NaN for a part never
        visible in both images of a pair), and ``"part/<name>/num_keypoints"``; ``"num_pairs"`` (unordered, each
        scored both ways), ``"num_eligible_pairs"``, ``"num_directed_pairs"``, ``"num_keypoints"`` (transfers
        scored), ``"seed"``, ``"image_size"``, ``"grid"``.  :func:`diml.names.interp_key` gives the tracked names.
    """
    ot = as_options(ot)
    local, glob, labels = check_embeddings(local_emb, global_emb, labels, device)
    dev, (n, _, cells) = local.device, local.shape
    grid, image_size = check_grid(grid, cells), check_image_size(image_size)
    chunk_option("chunk", chunk)
    alphas = check_alphas(alphas, part_alpha)
    with _threads.caller_alone(local):  # small operations: no OpenMP team left spinning on the blocks' cores
        keypoints = check_keypoints(keypoints, "keypoints", n=n, image_size=image_size, device=dev)
        part_names = check_part_names(part_names, keypoints.shape[1])
        boxes = None if boxes is None else check_boxes(boxes, "boxes", n=n, device=dev)
        pairs = sample_pairs(labels, keypoints, max_pairs=max_pairs, seed=seed)
        work = _prepare_work(local, glob, keypoints, boxes, pairs, ot)
    threads = _threads.block_threads(len(pairs.first), local)
    limit = max(1, (chunk or auto_pair_chunk((local.shape[1], cells), dev)) // threads)
    blocks = -(-len(pairs.first) // limit)
    bounds = [(len(pairs.first) * k // blocks, len(pairs.first) * (k + 1) // blocks) for k in range(blocks)]
    tally = Tally(grid=grid, image_size=image_size, alphas=alphas, bbox=boxes is not None,
                  num_parts=keypoints.shape[1], device=dev)
    with torch.no_grad():
        for block_tally in _threads.map_blocks(lambda block: _count_block(work, *block, tally.fresh()), bounds,
                                               threads):
            tally.merge(block_tally)
    plan_methods = tuple(names.transfer_method(p, r) for p in names.PLAN_METHODS for r in (names.ARGMAX, names.MEAN))
    out = tally.result(part_names=part_names, part_alpha=part_alpha,
                       part_methods=plan_methods[:2] + (names.GRID_CEILING,), plan_methods=plan_methods,
                       directed_pairs=2 * len(pairs.first))
    out.update({names.NUM_PAIRS: float(pairs.first.numel()), names.NUM_ELIGIBLE_PAIRS: float(pairs.num_eligible),
                names.SEED: float(seed)})
    return out


class _Work(NamedTuple):
    """What every block of pairs reads, on the compute device: ``unit_cells (N, R, D)`` (cell-major unit vectors),
    ``unit_global (N, D)``, ``keypoints (N * P, 3)`` (flat), ``boxes (N, 4)`` or None, the pairs ``first, second
    (M,)``, the ``(pair, part)`` transfers to score ``pair_of, part_of (K,)`` (grouped by pair), ``starts`` (host
    ints: where each pair's transfers start, ``M + 1`` of them) and ``ot``."""

    unit_cells: torch.Tensor
    unit_global: torch.Tensor
    keypoints: torch.Tensor
    boxes: torch.Tensor | None
    first: torch.Tensor
    second: torch.Tensor
    pair_of: torch.Tensor
    part_of: torch.Tensor
    starts: list[int]
    ot: OTOptions


def _prepare_work(local, glob, keypoints, boxes, pairs: PairSample, ot: OTOptions) -> _Work:
    """The gallery as unit vectors once (cells cell-major, the layout the solver's products read without a copy)
    and the transfers to score (visible in both images), listed once and moved to the device once, so that the
    blocks copy nothing from the host (a copy from pageable memory would wait for the device)."""
    dev = local.device
    unit_cells = local.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    unit_cells /= torch.linalg.vector_norm(unit_cells, dim=2, keepdim=True).clamp_min(1e-12)
    visible = keypoints[..., 2].cpu() > 0
    pair_of, part_of = (visible[pairs.first] & visible[pairs.second]).nonzero(as_tuple=True)
    starts = torch.cat([torch.zeros(1, dtype=torch.int64),
                        torch.bincount(pair_of, minlength=len(pairs.first)).cumsum(0)]).tolist()
    return _Work(unit_cells, F.normalize(glob, dim=1), keypoints.reshape(-1, 3), boxes, pairs.first.to(dev),
                 pairs.second.to(dev), pair_of.to(dev), part_of.to(dev), starts, ot)


def _count_block(work: _Work, lo: int, hi: int, tally: Tally) -> Tally:
    """Solve the pairs ``lo:hi`` and count every method on their transfers, both directions, into ``tally``."""
    plans, cell_sim = _pair_plans(work.unit_cells, work.unit_global, work.first[lo:hi], work.second[lo:hi], work.ot)
    keys = slice(work.starts[lo], work.starts[hi])
    pair, part = work.pair_of[keys], work.part_of[keys]
    image_a, image_b = work.first[pair], work.second[pair]
    parts = len(tally.totals)
    kp_a = work.keypoints.index_select(0, image_a * parts + part)  # (K, 3)
    kp_b = work.keypoints.index_select(0, image_b * parts + part)
    for query_kp, ref_kp, ref, transpose in ((kp_a, kp_b, image_b, False), (kp_b, kp_a, image_a, True)):
        target = tally.targets(query_kp, ref_kp, None if work.boxes is None else work.boxes.index_select(0, ref), part)
        _score(tally, target, pair - lo, plans, cell_sim, transpose)
    return tally


def _pair_plans(unit_cells, unit_global, first, second, ot: OTOptions):
    """``({"ot": (B, R, R), "uniform_ot": (B, R, R)}, cell_sim (B, R, R))`` of the pairs ``(first[k], second[k])``,
    rows: ``first``'s cells; ``unit_cells (N, R, D)`` and ``unit_global (N, D)`` are unit vectors."""
    query = unit_cells.index_select(0, first).transpose(1, 2)  # (B, D, R) views of cell-major rows
    cand = unit_cells.index_select(0, second).transpose(1, 2).unsqueeze(1)  # (B, 1, D, R)
    cell_sim, a, b = pair_terms_candidates(query, unit_global.index_select(0, first), cand,
                                           unit_global.index_select(0, second).unsqueeze(1), ot.marginals,
                                           normalized=True)
    plans = {names.OT: solve_pairs(cell_sim, a, b, ot).plan[:, 0]}
    if ot.marginals == "uniform":
        plans[names.UNIFORM_OT] = plans[names.OT]
    else:
        even = torch.full_like(a, 1.0 / a.shape[-1])
        plans[names.UNIFORM_OT] = solve_pairs(cell_sim, even, even.clone(), ot.replace(marginals="uniform")).plan[:, 0]
    return plans, cell_sim[:, 0]


def _score(tally: Tally, target: Targets, pair, plans: dict[str, torch.Tensor], cell_sim, transpose: bool) -> None:
    """Count every method on ``target``'s ``K`` keypoint transfers through the matrices ``[pair] (R, R)`` of
    ``plans {name: (B, R, R)}`` and ``cell_sim (B, R, R)`` (rows: the first image's cells; ``transpose``: the
    keypoints go from the second image to the first)."""
    predictions = {}
    for name, plan in plans.items():
        predictions.update(tally.plan_predictions(
            (names.transfer_method(name, names.ARGMAX), names.transfer_method(name, names.MEAN)), plan, target, pair,
            transpose))
    nearest = cell_rows(cell_sim, pair, target.query_cell, transpose=transpose).argmax(-1)
    predictions[names.NEAREST_COSINE] = Prediction(tally.centres[nearest], nearest)
    tally.add(target, predictions | tally.reference_predictions(target))
