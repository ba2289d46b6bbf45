"""Per-thread blocks (diml.ot._threads): the whole solve of each block in the caller or a pool thread, same
similarities."""

import threading
import time

import pytest
import torch
from ot_testkit import near_duplicates, random_images

from diml.ot import OTOptions, _cpu, _threads, similarity, structural_similarity, structural_similarity_candidates

TOL4 = OTOptions(tol=1e-4)
# Threads against one thread on the same path: each problem is solved on its own (one vector lane), from cell
# similarities that a block's GEMM gives row by row, so they agree to float32 rounding (1e-6 for values ~1).
# Two paths (the tensor pipeline and the compiled solve, or the candidates' and all pairs' cell similarities) differ
# in the last bits, so a problem whose error sits at the threshold leaves one check (5 iterations) earlier on one of
# them: they agree only to about the solver's tol.
SAME_PATH = 1e-6


@pytest.fixture
def two_threads(monkeypatch):
    """Two intra-op threads, blocks from 16 pairs on, and a record of where every block's solve ran."""
    monkeypatch.setattr(_threads, "MIN_BLOCK_PAIRS", 16)
    saved = torch.get_num_threads()
    calls = []
    solve_block = similarity._similarities

    def recording(*args, **kwargs):
        calls.append((threading.current_thread().name, torch.get_num_threads(), args[0].shape[:2]))
        return solve_block(*args, **kwargs)

    monkeypatch.setattr(similarity, "_similarities", recording)
    yield calls
    torch.set_num_threads(saved)


def _images():
    """20 float32 images, every second one a near-duplicate of the one before (some pairs need the polish)."""
    base = random_images(10, channels=32, cells=16, seed=40)
    dup = near_duplicates(base, 0.05, seed=41)
    local = torch.stack([base[0], dup[0]], 1).reshape(20, 32, 16).float()
    glob = torch.stack([base[1], dup[1]], 1).reshape(20, 32).float()
    return local, glob


def _each_block_on_one_thread(calls):
    """Every block on one intra-op thread, in the caller or a pool thread."""
    pool = {t.name for t in threading.enumerate() if t.name.startswith("diml-ot")}
    assert all(inner == 1 and name in pool | {threading.current_thread().name} for name, inner, _ in calls)


def _at(threads, fn):
    torch.set_num_threads(threads)
    return fn()


def test_all_pairs_threaded_equal_one_thread(two_threads):
    local, glob = _images()
    run = lambda: structural_similarity(local, glob, local, glob, ot=TOL4, chunk_size=160)  # noqa: E731
    one = _at(1, run)
    assert all(name == threading.current_thread().name for name, _, _ in two_threads)  # one thread: in the caller
    two_threads.clear()
    two = _at(2, run)
    # chunk_size 160 on 2 threads, fused: blocks of at most min(160, 4 x 160 / 2) pairs = 8 queries x 20
    # references, 3 blocks rounded to 4
    assert sorted(tuple(shape) for _, _, shape in two_threads) == [(5, 20)] * 4
    _each_block_on_one_thread(two_threads)
    assert torch.get_num_threads() == 2  # the caller's count is restored
    assert two.shape == (20, 20) and float((two - one).abs().max()) <= SAME_PATH
    assert float((two - two.T).abs().max()) <= 1e-4  # the transposed problem is the same problem


def test_all_pairs_blocks_of_the_pipeline_keep_chunk_size_in_flight(two_threads, monkeypatch):
    monkeypatch.setattr(_cpu, "ENABLED", False)  # the tensor pipeline: chunk_size / 2 pairs per thread
    local, glob = _images()
    two = _at(2, lambda: structural_similarity(local, glob, local, glob, ot=TOL4, chunk_size=160))
    # blocks of at most 80 pairs = 4 queries x 20 references, 5 blocks rounded to 6
    assert sorted(tuple(shape) for _, _, shape in two_threads) == [(3, 20)] * 4 + [(4, 20)] * 2
    monkeypatch.setattr(_cpu, "ENABLED", True)
    fused = _at(1, lambda: structural_similarity(local, glob, local, glob, ot=TOL4))
    assert float((two - fused).abs().max()) <= TOL4.tol  # two paths


def test_candidates_threaded_equal_one_thread(two_threads):
    local, glob = _images()
    pick = torch.stack([torch.randperm(20, generator=torch.Generator().manual_seed(q))[:6] for q in range(20)])
    args = (local, glob, local[pick], glob[pick])
    run = lambda: structural_similarity_candidates(*args, ot=TOL4, chunk_size=48)  # noqa: E731
    one = _at(1, run)
    two_threads.clear()
    two = _at(2, run)
    assert len(two_threads) == 6
    _each_block_on_one_thread(two_threads)
    assert float((two - one).abs().max()) <= SAME_PATH
    full = _at(1, lambda: structural_similarity(local, glob, local, glob, ot=TOL4))
    assert float((two - full.gather(1, pick)).abs().max()) <= TOL4.tol  # two paths to the cell similarities


def test_gradients_and_small_inputs_stay_in_the_caller(two_threads):
    local, glob = _images()
    torch.set_num_threads(2)
    leaf = local.clone().requires_grad_(True)
    sim = structural_similarity(leaf, glob, local, glob, chunk_size=160)
    sim.sum().backward()
    assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
    assert two_threads and all(name == threading.current_thread().name for name, _, _ in two_threads)
    two_threads.clear()
    _threads.MIN_BLOCK_PAIRS = 1000  # 400 pairs: too few for two threads (monkeypatch restores it)
    structural_similarity(local, glob, local, glob)
    assert [name for name, _, _ in two_threads] == [threading.current_thread().name]


def test_the_set_up_runs_on_one_thread_when_blocks_take_the_threads(two_threads, monkeypatch):
    # OpenMP's idle team spins after a parallel region: the set-up must not leave one on the blocks' cores
    local, glob = _images()
    prepare, seen = similarity._prepare, []

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return prepare(*args, **kwargs)

    monkeypatch.setattr(similarity, "_prepare", recording)
    torch.set_num_threads(2)
    structural_similarity(local, glob, local, glob, ot=TOL4, chunk_size=160)
    structural_similarity_candidates(local, glob, local[:, None].expand(-1, 4, -1, -1), glob[:, None].expand(-1, 4, -1),
                                     ot=TOL4)
    assert seen == [1, 1] and torch.get_num_threads() == 2
    leaf = local.clone().requires_grad_(True)  # autograd and other callers keep their threads
    structural_similarity(leaf, glob, local, glob)
    assert seen == [1, 1, 2]
    with _threads.caller_alone(local, "not a tensor"):
        assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    with _threads.caller_alone(local):
        assert torch.get_num_threads() == 1


def test_map_blocks_runs_the_caller_and_a_pool_thread_side_by_side():
    torch.set_num_threads(3)
    meet = threading.Barrier(2, timeout=30)  # neither block can end before the other has started

    def block(i):
        meet.wait()
        return i, threading.current_thread().name, torch.get_num_threads(), _threads.in_worker()

    out = _threads.map_blocks(block, [0, 1], 2)
    assert [i for i, _, _, _ in out] == [0, 1] and all(inner == 1 and flagged for _, _, inner, flagged in out)
    names = {name for _, name, _, _ in out}
    assert len(names) == 2 and threading.current_thread().name in names
    assert torch.get_num_threads() == 3 and not _threads.in_worker()  # the caller's state is restored


def test_map_blocks_stops_taking_blocks_after_an_error():
    torch.set_num_threads(2)
    done = []

    def block(i):
        if i == 0:
            raise ValueError("block 0 failed")
        time.sleep(0.002)  # 200 blocks would take 0.4 s
        done.append(i)
        return i

    with pytest.raises(ValueError, match="block 0 failed"):
        _threads.map_blocks(block, list(range(200)), 2)
    assert len(done) < 199  # the other thread stopped early
    assert torch.get_num_threads() == 2 and not _threads.in_worker()
    assert _threads.map_blocks(lambda i: i * i, list(range(5)), 2) == [0, 1, 4, 9, 16]  # the pool still works


def test_even_blocks():
    assert similarity._all_pairs_blocks(112, 112, 4096, 2) == [(q, q + 28, 0, 112) for q in range(0, 112, 28)]
    assert similarity._all_pairs_blocks(3, 10, 4, 1) == [(q, q + 1, r0, r1) for q in range(3)
                                                        for r0, r1 in ((0, 3), (3, 6), (6, 10))]
    ranges = similarity._even_ranges(1000, 81, 2)  # 13 blocks of 81 -> 14 of 71-72
    assert len(ranges) == 14 and ranges[0] == (0, 71) and ranges[-1][1] == 1000
    assert all(hi == lo for (_, hi), (lo, _) in zip(ranges, ranges[1:])) and max(h - lo for lo, h in ranges) == 72


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_pool():
    import os

    _threads._pool(2).submit(int).result()  # the parent's pool has a live thread
    pid = os.fork()
    if pid == 0:  # the child: the inherited pool has no threads; a new one must run the task
        code = 1
        try:
            code = 0 if _threads._pool(2).submit(int, "7").result(timeout=30) == 7 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
