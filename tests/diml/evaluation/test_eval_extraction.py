"""Embedding extraction: single process, and sharded over 2 gloo processes (gathered on rank 0)."""

from typing import NamedTuple

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from diml.evaluation import extract_embeddings


class _Embeddings(NamedTuple):
    global_emb: torch.Tensor
    local_emb: torch.Tensor


class _TinyModel(torch.nn.Module):
    """(B, 3, 8, 8) -> global (B, 5), local (B, 5, 4): a 2 x 2 grid of cells, like diml.models."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 5, kernel_size=3, padding=1)
        self.norm = torch.nn.BatchNorm2d(5)  # batch-dependent in training mode: extraction must use eval mode
        self.pool = torch.nn.AdaptiveAvgPool2d(2)

    def forward(self, images):
        local = self.pool(self.norm(self.conv(images))).flatten(2)
        return _Embeddings(local.mean(dim=2), local)


def _dataset(n=11):
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=gen), torch.arange(n) % 3 + 100)


def _rank_main(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_TinyModel())  # unwrapped by extract_embeddings
        result = extract_embeddings(model, _dataset(), batch_size=2, device="cpu")
        torch.save(None if result is None else result._asdict(), f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


def test_single_process_matches_direct_forward_and_restores_training_mode():
    model, data = _TinyModel(), _dataset()
    model.train()
    result = extract_embeddings(model, data, batch_size=4, device="cpu")
    assert model.training
    model.eval()
    with torch.no_grad():
        expected = model(data.tensors[0])
    torch.testing.assert_close(result.global_emb, expected.global_emb)
    torch.testing.assert_close(result.local_emb, expected.local_emb)
    assert torch.equal(result.labels, data.tensors[1]) and result.labels.dtype == torch.int64
    assert result.metadata == {}


def test_two_gloo_ranks_equal_single_process(tmp_path):
    mp.start_processes(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    single = extract_embeddings(_TinyModel(), _dataset(), batch_size=3, device="cpu")
    gathered = torch.load(tmp_path / "rank0.pt")
    assert torch.load(tmp_path / "rank1.pt") is None  # only rank 0 returns the set
    torch.testing.assert_close(gathered["global_emb"], single.global_emb)
    torch.testing.assert_close(gathered["local_emb"], single.local_emb)
    assert torch.equal(gathered["labels"], single.labels)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size must be"):
        extract_embeddings(_TinyModel(), _dataset(), batch_size=0, device="cpu")
    with pytest.raises(ValueError, match="model must return"):
        extract_embeddings(torch.nn.Flatten(), _dataset(), batch_size=2, device="cpu")
    with pytest.raises(ValueError, match="dataset has 0 images"):
        extract_embeddings(_TinyModel(), _dataset(0), batch_size=2, device="cpu")


def test_rows_of_unreadable_images_are_dropped_with_the_indices_of_the_kept_ones():
    from diml.data import skipped_label
    from diml.evaluation import drop_unreadable

    images, labels = _dataset(6).tensors
    labels = labels.clone()
    labels[[1, 4]] = torch.tensor([skipped_label(1), skipped_label(4)])  # what a skip_bad_images split yields
    result = extract_embeddings(_TinyModel(), TensorDataset(images, labels), batch_size=4, device="cpu")
    kept, skipped = drop_unreadable(result)
    assert skipped == [1, 4] and kept.metadata["indices"] == [0, 2, 3, 5]
    torch.testing.assert_close(kept.global_emb, result.global_emb[[0, 2, 3, 5]])
    torch.testing.assert_close(kept.local_emb, result.local_emb[[0, 2, 3, 5]])
    assert kept.labels.tolist() == [100, 102, 100, 102]
    assert drop_unreadable(kept) == (kept, [])
