"""Blocks of OT problems solved side by side, one whole pipeline per thread (CPU, no autograd).

Spreading only the compiled scaling phase over threads leaves the rest of a solve (cell products and marginals,
the kernel ``exp``, the checks, the Newton polish's set-up, the final reductions and the similarity) to torch's
intra-op threads: dozens of small operations per chunk, each a fork/join of its own, several of them too small to
be split at all.  Here the pairs are cut into blocks and every block runs the whole pipeline, products to
similarity, in the caller or one thread of a persistent pool, each with one intra-op thread: torch's operators and
the numba kernels release the GIL, so the blocks overlap from start to end with no serial phase but the split and
the concatenation.

``torch.set_num_threads`` is per thread for OpenMP and MKL, but it also stores the count that threads started
later inherit; :func:`map_blocks` sets 1 in its threads and restores each one's count afterwards.  Call the
public functions from one thread at a time per process if they should use this path (concurrent callers each
restore their own count, which is the same unless they changed it in between).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

MIN_BLOCK_PAIRS = 1024  # below this many pairs per thread the solve keeps torch's intra-op threads instead

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_PID = 0  # a forked child inherits the pool object but not its threads: it makes its own
_POOL_LOCK = threading.Lock()
_IN_WORKER = threading.local()


def _pool(threads: int) -> ThreadPoolExecutor:
    """The process's block pool, grown to ``threads`` workers on demand (threads start lazily)."""
    global _POOL, _POOL_SIZE, _POOL_PID
    with _POOL_LOCK:
        if _POOL_PID != os.getpid():
            _POOL, _POOL_SIZE, _POOL_PID = None, 0, os.getpid()
        if _POOL is None or _POOL_SIZE < threads:
            old, _POOL, _POOL_SIZE = _POOL, ThreadPoolExecutor(threads, thread_name_prefix="diml-ot"), threads
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def in_worker() -> bool:
    """Whether the calling thread is one of the pool's workers (which never submit to the pool themselves)."""
    return getattr(_IN_WORKER, "active", False)


def block_threads(pairs: int, *tensors: torch.Tensor) -> int:
    """Threads for :func:`map_blocks` over ``pairs`` pairs of ``tensors``' problems: torch's intra-op threads if
    every tensor is on the CPU, nothing needs a gradient and each thread gets at least ``MIN_BLOCK_PAIRS`` pairs;
    else 1 (the blocks run in the caller, whose operators use the intra-op threads)."""
    if not _blocks_may_thread(tensors):
        return 1
    return max(1, min(torch.get_num_threads(), pairs // MIN_BLOCK_PAIRS))


def _blocks_may_thread(tensors) -> bool:
    """Outside a pool worker, every input a CPU tensor and none needing a gradient (the blocks run without
    autograd)."""
    return (not in_worker() and all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


@contextlib.contextmanager
def caller_alone(*tensors):
    """Run the caller's set-up before :func:`map_blocks` on one intra-op thread when the blocks will take threads.

    After a parallel region, OpenMP's idle team threads spin for a while (libgomp's default wait policy) on the
    cores the block threads are about to need: one normalisation of the inputs on two threads delayed the second
    block thread by 3-5 ms, a tenth of a 112-batch solve.  Yields nothing; a no-op unless more than one intra-op
    thread is set and every tensor is on the CPU with no gradient needed (as :func:`block_threads`)."""
    threads = torch.get_num_threads()
    if threads <= 1 or not _blocks_may_thread(tensors):
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def map_blocks(fn: Callable[[T], R], blocks: Sequence[T], threads: int) -> list[R]:
    """``[fn(block) for block in blocks]``, over the caller and ``threads - 1`` pool threads, with one intra-op
    thread each, when ``threads > 1``: every thread takes the next block as it frees up, so the caller works
    instead of sleeping on one future per block (each wake-up of a third thread took a vCPU from a block thread on
    this 2-core machine).  ``fn`` runs under the caller's inference mode and without autograd
    (:func:`block_threads` returns 1 when a gradient is needed).  The first error stops the taking of blocks and
    is raised once every thread has finished its current block."""
    if threads <= 1 or len(blocks) <= 1:
        return [fn(block) for block in blocks]
    inference = torch.is_inference_mode_enabled()
    results: list = [None] * len(blocks)
    taken, lock, failed = [0], threading.Lock(), threading.Event()

    def take() -> int:
        with lock:
            index = taken[0] if not failed.is_set() else len(blocks)
            taken[0] = index + 1
            return index

    def drain() -> None:
        with _one_intra_op_thread(), torch.inference_mode(inference), torch.no_grad():
            try:
                while (index := take()) < len(blocks):
                    results[index] = fn(blocks[index])
            except BaseException:
                failed.set()
                raise

    _run_with_caller(drain, [drain] * (threads - 1))
    return results


@contextlib.contextmanager
def _one_intra_op_thread():
    """One intra-op thread and the pool-worker mark for the calling thread (the caller's or a worker's), restored
    afterwards."""
    saved, was_worker = torch.get_num_threads(), in_worker()
    torch.set_num_threads(1)
    _IN_WORKER.active = True
    try:
        yield
    finally:
        _IN_WORKER.active = was_worker
        torch.set_num_threads(saved)


def _run_with_caller(mine: Callable[[], None], others: Sequence[Callable[[], None]]) -> None:
    """``others`` in pool threads while the caller runs ``mine``; returns when all have ended, raising the
    caller's error first, else the first worker's."""
    futures = [_pool(len(others)).submit(task) for task in others]
    try:
        mine()
    finally:
        wait(futures)
    for future in futures:
        future.result()


def over_ranges(run: Callable[[int, int], None], total: int, min_per_thread: int) -> None:
    """``run(lo, hi)`` on contiguous slices of ``range(total)``, over the caller and torch's other intra-op
    threads when each gets at least ``min_per_thread`` items (for kernels that release the GIL and write disjoint
    slices), else in the caller.  Blocks of :func:`map_blocks` run with one thread, so this splits only a solve
    outside them."""
    threads = 1 if in_worker() else min(torch.get_num_threads(), total // max(min_per_thread, 1))
    if threads <= 1:
        run(0, total)
        return
    bounds = [total * t // threads for t in range(threads + 1)]
    slices = [functools.partial(run, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    _run_with_caller(slices[0], slices[1:])
