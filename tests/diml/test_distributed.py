"""gather_embeddings with 2 gloo processes on CPU against one process on the concatenated batch: the same loss
value on every rank, and the same gradients for a DDP-wrapped model and the loss's own parameters."""

import pytest
import torch
import torch.distributed as dist

from ddp_support import init_gloo, run_ranks
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
    """One rank, in its own interpreter (``ddp_support``)."""
    init_gloo(rank, store, world_size=2)
    try:
        out = run_cases(*SLICES[rank], gather=True)
        out["roles"] = (distributed.rank(), distributed.world_size(), distributed.is_main_process())
        torch.save(out, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    run_ranks(worker, folder)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


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
