"""gather_embeddings with 2 gloo processes on CPU against one process on the concatenated batch: the same loss
value on every rank, and the same gradients for a DDP-wrapped model and the loss's own parameters."""

import datetime
import faulthandler
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from diml import distributed
from diml.losses import build_loss

N, DIM, CELLS, CLASSES = 8, 6, 4, 4
LABELS = [0, 0, 1, 1, 2, 2, 3, 0]
SLICES = [(0, 5), (5, 8)]  # unequal per-rank batches
CASES = {
    "margin, distance miner": dict(name="margin", params={"beta": 0.875}, miner="distance"),
    "multi-similarity": dict(name="multisimilarity", params=None),
    "margin-DIML, semihard miner": dict(name="margin", params={"beta": 0.875}, miner="semihard", similarity="diml"),
}


def full_batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, DIM, generator=gen, dtype=torch.float64)
    local = torch.randn(N, DIM, CELLS, generator=gen, dtype=torch.float64)
    return x, local, torch.tensor(LABELS)


def make_loss(case):
    case = dict(case)
    return build_loss(case.pop("name"), case.pop("params"), num_classes=CLASSES, embed_dim=DIM, **case).double()


def run_cases(lo, hi, gather):
    """Every case on rows lo:hi (gathered when ``gather``): loss values and gradients of the rows' inputs."""
    x, local, labels = full_batch()
    out = {}
    for key, case in CASES.items():
        g, l = x[lo:hi].clone().requires_grad_(True), local[lo:hi].clone().requires_grad_(True)
        g_all, l_all, y_all = distributed.gather_embeddings(g, l, labels[lo:hi]) if gather else (g, l, labels)
        value = make_loss(case)(g_all, l_all, y_all)
        value.backward()
        out[key] = (value.item(), g.grad, l.grad)
    module = EmbedAndLoss()
    if gather:
        module = torch.nn.parallel.DistributedDataParallel(module)
    module(x[lo:hi], labels[lo:hi], gather).backward()
    out["ddp parameters"] = {name: p.grad for name, p in module.named_parameters()}
    return out


class EmbedAndLoss(torch.nn.Module):
    """A linear "model" and a margin loss with a learnable per-class beta in one module (as diml.engine does)."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Linear(DIM, DIM).double()
        torch.nn.init.eye_(self.model.weight)
        torch.nn.init.zeros_(self.model.bias)
        self.loss = make_loss(CASES["margin, distance miner"])

    def forward(self, x, labels, gather):
        emb = self.model(x)
        g_all, _, y_all = distributed.gather_embeddings(emb, None, labels) if gather else (emb, None, labels)
        return self.loss(g_all, None, y_all)


def worker(rank, store, folder):
    """One rank (run in its own interpreter by :func:`two_ranks`): file-store rendezvous, no port to race for."""
    faulthandler.enable()  # a crash in gloo's C++ threads still leaves the Python stack in the rank's log
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        out = run_cases(*SLICES[rank], gather=True)
        out["roles"] = (distributed.rank(), distributed.world_size(), distributed.is_main_process())
        torch.save(out, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


RANK = "import sys; sys.path.insert(0, sys.argv[1]); import test_distributed as t; t.worker(int(sys.argv[2]), *sys.argv[3:])"
ATTEMPTS = 3  # only a rank killed by a signal is retried (a C++ abort in gloo's TCP transport, seen once in CI)
KILLED = 999


def launch_ranks(folder: Path) -> list[tuple[int, str]]:
    """Both ranks as child processes with their logs kept: ``[(exit code, log)]``; negative: killed by a signal,
    ``KILLED``: stopped here because the other rank had failed or the run outlived its deadline."""
    store = folder / "store"
    store.unlink(missing_ok=True)
    env = dict(os.environ)
    if Path("/sys/class/net/lo").exists():  # gloo's pairs on loopback, whatever the host name resolves to
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    logs = [open(folder / f"rank{r}.log", "w+") for r in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(Path(__file__).parent), str(r), str(store),
                               str(folder)], stdout=log, stderr=subprocess.STDOUT, env=env)
             for r, log in enumerate(logs)]
    deadline, stopped = time.monotonic() + 300, set()
    while any(p.poll() is None for p in procs):
        failed = any(p.returncode not in (None, 0) for p in procs)
        if failed or time.monotonic() > deadline:  # the other rank would wait for the collective's timeout
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                    stopped.add(p.pid)
        time.sleep(0.05)
    out = []
    for p, log in zip(procs, logs):
        log.seek(0)
        out.append((KILLED if p.pid in stopped else p.returncode, log.read()))
        log.close()
    return out


def run_two_ranks(folder: Path) -> list[dict]:
    """Each rank's saved results; a crash by a signal is retried (with a warning that holds both logs)."""
    for attempt in range(1, ATTEMPTS + 1):
        results = launch_ranks(folder)
        if all(code == 0 for code, _ in results):
            return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]
        report = "; ".join(f"rank {r} {'was stopped' if code == KILLED else f'exited {code}'}: "
                           f"{(log.strip().splitlines() or ['(no output)'])[-1]}"
                           for r, (code, log) in enumerate(results) if code != 0)
        logs = "\n".join(f"--- rank {r} (exit {code}) ---\n{log}" for r, (code, log) in enumerate(results))
        if attempt == ATTEMPTS or not any(code < 0 for code, _ in results):  # KILLED: not a crash of its own
            raise RuntimeError(f"{report}\n{logs}")
        warnings.warn(f"attempt {attempt} of the 2-rank run crashed, retrying: {report}\n{logs}")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return run_two_ranks(tmp_path_factory.mktemp("ddp"))


def test_a_rank_error_fails_at_once_with_its_own_message(tmp_path, monkeypatch):
    """A Python error in a rank is not retried, and its own message (not only an exit code) reaches the test."""
    monkeypatch.setattr(sys.modules[__name__], "RANK", RANK.replace("t.worker(", "t.worker_that_fails("))
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match=r"^rank ([01]) exited 1: ValueError: rank \1 "):
        warnings.simplefilter("error")  # a retry would warn first
        run_two_ranks(tmp_path)


def test_a_rank_killed_by_a_signal_is_run_again(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "RANK", RANK.replace("t.worker(", "t.worker_that_aborts_once("))
    with pytest.warns(UserWarning, match=r"attempt 1 .* rank 0 exited -6"):
        assert run_two_ranks(tmp_path) == [{"rank": 0}, {"rank": 1}]
    assert (tmp_path / "aborted").exists()


def worker_that_fails(rank, store, folder):
    raise ValueError(f"rank {rank} refuses to start")


def worker_that_aborts_once(rank, store, folder):
    if rank == 0 and not Path(folder, "aborted").exists():
        Path(folder, "aborted").touch()
        os.abort()
    torch.save({"rank": rank}, f"{folder}/rank{rank}.pt")


def test_every_rank_sees_the_loss_of_the_concatenated_batch(two_ranks):
    single = run_cases(0, N, gather=False)
    for key in CASES:
        assert single[key][0] > 0
        for rank_out in two_ranks:
            assert rank_out[key][0] == pytest.approx(single[key][0], rel=1e-12), key


def test_each_rank_gets_the_summed_gradient_of_its_own_slice(two_ranks):
    """Both ranks compute the same loss; the backward all_reduce sums their gradients: 2 x the single one."""
    single = run_cases(0, N, gather=False)
    for key in CASES:
        for (lo, hi), rank_out in zip(SLICES, two_ranks):
            torch.testing.assert_close(rank_out[key][1], 2 * single[key][1][lo:hi], rtol=1e-10, atol=1e-12)
            if CASES[key].get("similarity") == "diml":
                torch.testing.assert_close(rank_out[key][2], 2 * single[key][2][lo:hi], rtol=1e-10, atol=1e-12)
            else:  # the global loss never touches the cells
                assert rank_out[key][2] is None and single[key][2] is None
        assert single[key][1].abs().sum() > 0


def test_ddp_model_and_loss_parameters_match_one_process(two_ranks):
    single = run_cases(0, N, gather=False)["ddp parameters"]
    assert set(single) == {"model.weight", "model.bias", "loss.loss.beta"}
    assert single["loss.loss.beta"].abs().sum() > 0
    for rank_out in two_ranks:
        got = {name.removeprefix("module."): grad for name, grad in rank_out["ddp parameters"].items()}
        assert set(got) == set(single)
        for name, expected in single.items():
            torch.testing.assert_close(got[name], expected, rtol=1e-10, atol=1e-12)
    assert [r["roles"] for r in two_ranks] == [(0, 2, True), (1, 2, False)]


def test_gather_is_a_no_op_without_a_process_group():
    g, local, labels = full_batch()
    assert all(a is b for a, b in zip(distributed.gather_embeddings(g, local, labels), (g, local, labels)))
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
