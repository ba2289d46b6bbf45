"""Memory-bounded structural similarity matrices (all pairs, or per-query candidates for re-ranking).

Both functions compute exactly what :func:`diml.ot.match` / :func:`diml.ot.match_candidates` compute (same
equations, see :mod:`diml.ot.matching`), but only keep the ``(Nq, Nr)`` / ``(Nq, K)`` similarities and process at most
``chunk_size`` pairs at a time.  Working memory beyond the inputs and the output is about
``chunk_size * (C * R + 12 * R^2) * 4`` bytes in float32 (the candidates' cells are transposed one chunk at a time;
the solver holds a dozen ``(pairs, R, R)`` tensors), e.g. 170 MB for the default 8,192 pairs with C = 128 on a 4x4
grid, whatever the number of pairs: ``10^5 x 10^2`` candidate pairs need their inputs plus a few hundred MB.
Within a chunk the cell similarities of all pairs come from one large matrix product.  Measured on this 2-core
CPU, chunks of 4,096-8,192 pairs were faster than 65,536 (cache), and 1,000 x 100 candidate pairs grew the peak
resident memory by 0 / 120 / 570 MB with chunks of 4,096 / 16,384 / 65,536.  On a GPU pass larger chunks.

On a CPU without autograd, with ``T = torch.get_num_threads() > 1`` and at least 1,024 pairs per thread, the pairs
are cut into (a multiple of) ``T`` near-equal blocks of at most ``chunk_size / T`` pairs, and ``T`` threads solve
one block each at a time, the whole pipeline per block (:mod:`diml.ot._threads`): the memory bound stays
``chunk_size`` pairs in flight, and the similarities are those of one thread (each problem is solved on its own).
All pairs with the fused solve below take blocks of up to ``min(chunk_size, 4 chunk_size / T)`` pairs: they hold
at most a quarter of the memory per pair (``FUSED_MEMORY_SHARE``), so the bound is the same, and on 2 threads
the blocks are those of 1 thread (fewer, larger products; 2-thread medians 1-5 % lower on a 112-batch).

On a CPU without autograd a block's solve is :func:`diml.ot._cpu.similarities`: the compiled scaling phase fused
with the kernel and the similarity, so no plan is ever stored (the same algorithm as :func:`diml.ot.match`, whose
similarities it reproduces to 1e-6); elsewhere it is ``solve_pairs(...).similarity``.
"""

from __future__ import annotations

import torch

from diml.ot import _cpu, _options, _threads, newton
from diml.ot._scaling import ABSORB_LOG, MIN_ITERS, SWITCH_ITERS
from diml.options import OTOptions, as_options
from diml.ot.matching import _prepare, pair_terms_all, pair_terms_candidates, solve_pairs

DEFAULT_CHUNK_SIZE = 8192
# All pairs, CPU, fused solve: a pair's terms (products, marginals) hold at most a quarter of the pipeline's
# memory per pair.  Peak resident growth for 448 x 448 pairs, one thread: 36 MB fused vs 218 MB pipeline at
# chunks of 8,192, 80 vs 333 MB at 32,768 (benchmarks/README.md).  Candidates hold about half (93 vs 171 MB).
FUSED_MEMORY_SHARE = 4


def structural_similarity(q_local, q_global, r_local, r_global, *, ot: OTOptions = OTOptions(),
                          chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """DIML similarity of every query with every reference.

    Args:
        q_local: ``(Nq, C, R)``; q_global: ``(Nq, C)``; r_local: ``(Nr, C, R)``; r_global: ``(Nr, C)`` (unnormalised).
        ot: :class:`~diml.ot.OTOptions` (see :func:`diml.ot.match`).
        chunk_size: maximal number of pairs solved at once (memory bound; the fused CPU solve on ``T`` threads
            holds up to ``min(chunk_size, 4 chunk_size / T)`` per thread, in a quarter of the memory per pair).

    Returns: ``(Nq, Nr)`` similarities in the working dtype (float32, or float64 for float64 inputs).
    """
    ot = as_options(ot)
    _options.check_chunk_size(chunk_size)
    with _threads.caller_alone(q_local, r_local):
        qn, qg, rn, rg = _prepare(q_local, q_global, r_local, r_global, candidates=False)
    nq, nr = qn.shape[0], rn.shape[0]
    if nq * nr == 0:
        return qn.new_zeros((nq, nr))
    threads = _threads.block_threads(nq * nr, qn, qg, rn, rg)
    limit = chunk_size // threads or 1
    if threads > 1 and _cpu.applies_similarity(qn, qg, rn, rg, eps=ot.eps):
        limit = min(chunk_size, FUSED_MEMORY_SHARE * chunk_size // threads)
    blocks = _all_pairs_blocks(nq, nr, limit, threads)

    def solve_block(block):
        q, r = slice(*block[:2]), slice(*block[2:])
        return _similarities(*pair_terms_all(qn[q], qg[q], rn[r], rg[r], ot.marginals), ot)

    out = qn.new_zeros((nq, nr))
    for (q0, q1, r0, r1), sim in zip(blocks, _threads.map_blocks(solve_block, blocks, threads)):
        out[q0:q1, r0:r1] = sim
    return out


def _similarities(cell_sim, a, b, ot: OTOptions) -> torch.Tensor:
    """``solve_pairs(cell_sim, a, b, ot).similarity``; on a CPU without autograd, the compiled solve that keeps only
    the similarities (:func:`diml.ot._cpu.similarities`: the same algorithm, fused into one pass)."""
    if _cpu.applies_similarity(cell_sim, a, b, eps=ot.eps):
        return _cpu.similarities(cell_sim, a, b, eps=float(ot.eps), max_iter=ot.max_iter, tol=float(ot.tol),
                                 check_every=ot.check_every, min_iters=MIN_ITERS, switch_iters=SWITCH_ITERS,
                                 newton_steps=ot.newton_steps, absorb_log=ABSORB_LOG, trust=newton.MAX_LOG_SHIFT,
                                 armijo=newton.ARMIJO, halvings=newton.HALVINGS)
    return solve_pairs(cell_sim, a, b, ot).similarity


def _even_ranges(total: int, most: int, multiple: int) -> list[tuple[int, int]]:
    """``range(total)`` cut into a multiple of ``multiple`` near-equal ``(lo, hi)`` parts of at most ``most``."""
    parts = -(-total // max(most, 1))
    parts = min(total, -(-parts // multiple) * multiple)
    return [(total * i // parts, total * (i + 1) // parts) for i in range(parts)]


def _all_pairs_blocks(nq: int, nr: int, limit: int, threads: int) -> list[tuple[int, int, int, int]]:
    """``(q0, q1, r0, r1)`` blocks of at most ``limit`` pairs: whole reference rows for as many queries as fit
    (a multiple of ``threads`` near-equal blocks), else one query per block with its references cut evenly."""
    if nr <= limit:
        return [(q0, q1, 0, nr) for q0, q1 in _even_ranges(nq, limit // nr, threads)]
    return [(q, q + 1, r0, r1) for q in range(nq) for r0, r1 in _even_ranges(nr, limit, 1)]


def structural_similarity_candidates(q_local, q_global, c_local, c_global, *, ot: OTOptions = OTOptions(),
                                     chunk_size: int = DEFAULT_CHUNK_SIZE, normalized: bool = False) -> torch.Tensor:
    """DIML similarity of each query with its own ``K`` candidates (the re-ranking form).

    Args:
        q_local: ``(Nq, C, R)``; q_global: ``(Nq, C)``; c_local: ``(Nq, K, C, R)``; c_global: ``(Nq, K, C)``.
        ot: :class:`~diml.ot.OTOptions` (see :func:`diml.ot.match`).
        chunk_size: maximal number of pairs solved at once (rounded to whole queries, at least one query).
        normalized: every cell and global vector is already L2-normalised along ``C`` (e.g. a gallery normalised
            once before re-ranking): skip the normalisation, which is a large part of the time for one candidate
            per query.  Unnormalised inputs with ``normalized=True`` raise a ValueError when a cell cosine
            leaves [-1, 1] (one reduction over the cell similarities, not over the inputs).

    Returns: ``(Nq, K)`` similarities.
    """
    ot = as_options(ot)
    _options.check_chunk_size(chunk_size)
    if not isinstance(normalized, bool):
        raise ValueError(f"normalized must be True or False (got {normalized!r})")
    with _threads.caller_alone(q_local, c_local):
        qn, qg, cn, cg = _prepare(q_local, q_global, c_local, c_global, candidates=True, normalized=normalized)
    nq, k = cn.shape[:2]
    if nq * k == 0:
        return qn.new_zeros((nq, k))
    threads = _threads.block_threads(nq * k, qn, qg, cn, cg)
    blocks = _even_ranges(nq, (chunk_size // threads or 1) // k, threads)

    def solve_block(block):
        q = slice(*block)
        terms = pair_terms_candidates(qn[q], qg[q], cn[q], cg[q], ot.marginals, normalized)
        return _similarities(*terms, ot)

    out = _threads.map_blocks(solve_block, blocks, threads)
    return torch.cat(out, 0) if out else qn.new_zeros((0, k))
