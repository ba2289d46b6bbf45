"""The multi-process runner of the gloo tests (tests/ddp_support.py): a rank's own error reaches the failure at once;
a rank killed by a signal is run again; a rank that hangs is stopped at the deadline."""

import os
import time
import warnings
from pathlib import Path

import pytest

from ddp_support import KILLED, launch, run_ranks


def rank_that_fails(rank, store, folder):
    raise ValueError(f"rank {rank} refuses to start")


def rank_that_aborts_once(rank, store, folder):
    if rank == 0 and not Path(folder, "aborted").exists():
        Path(folder, "aborted").touch()
        os.abort()
    Path(folder, f"rank{rank}.done").touch()


def rank_that_hangs(rank, store, folder):
    if rank == 1:
        time.sleep(600)


def test_a_python_error_fails_at_once_with_the_ranks_own_message(tmp_path):
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match=r"^rank ([01]) exited 1: ValueError: rank \1 "):
        warnings.simplefilter("error")  # a second attempt would warn first
        run_ranks(rank_that_fails, tmp_path)


def test_a_rank_killed_by_a_signal_is_run_again(tmp_path):
    with pytest.warns(UserWarning, match=r"attempt 1 of rank_that_aborts_once .*rank 0 exited -6"):
        run_ranks(rank_that_aborts_once, tmp_path)
    assert (tmp_path / "rank0.done").exists() and (tmp_path / "rank1.done").exists()


def test_a_hanging_rank_is_stopped_at_the_deadline(tmp_path):
    start = time.monotonic()
    (code0, _), (code1, _) = launch(rank_that_hangs, tmp_path, timeout=5)
    assert (code0, code1) == (0, KILLED)
    assert time.monotonic() - start < 60
