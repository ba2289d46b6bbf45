"""The epoch loop: it trains, counts images, and stops with the epoch number on a non-finite loss."""

import pytest
import torch
from torch import nn

from diml.engine import NonFiniteLossError, TrainModule, train_epoch
from diml.models import Embeddings


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 8)

    def forward(self, images):
        local = self.proj(images.flatten(2).transpose(1, 2)).transpose(1, 2)  # (B, 8, R=4)
        return Embeddings(global_emb=local.mean(-1), local_emb=local)


class PullTogether(nn.Module):
    """Mean squared distance between same-label global embeddings minus the mean distance of different labels."""

    def forward(self, g, local, labels):
        d = torch.cdist(g, g)
        same = labels[:, None] == labels[None, :]
        return d[same].mean() - d[~same].clamp(max=2.0).mean()


def _batches(n=6, scale=1.0):
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        yield torch.randn(8, 3, 2, 2, generator=gen) * scale, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def test_train_epoch_reduces_the_loss_and_counts_images():
    torch.manual_seed(0)
    module = TrainModule(TinyModel(), PullTogether())
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    first = train_epoch(module, _batches(), opt, epoch=0, device=torch.device("cpu"))
    for epoch in range(1, 5):
        last = train_epoch(module, _batches(), opt, epoch=epoch, device=torch.device("cpu"))
    assert first.batches == 6 and first.images == 48 and first.lr == 0.05
    assert last.loss < first.loss
    assert first.images_per_second > 0


def test_non_finite_loss_names_the_epoch():
    module = TrainModule(TinyModel(), PullTogether())
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    with pytest.raises(NonFiniteLossError, match="in epoch 3"):
        train_epoch(module, _batches(scale=float("nan")), opt, epoch=3, device=torch.device("cpu"))


def test_unreadable_images_are_dropped_from_their_batch_and_listed():
    from diml.data import skipped_label

    seen = []

    class Recording(PullTogether):
        def forward(self, g, local, labels):
            seen.append(labels.tolist())
            return super().forward(g, local, labels)

    images = torch.randn(8, 3, 2, 2)
    labels = torch.tensor([0, 0, 1, skipped_label(17), 2, 2, 3, 3])
    module = TrainModule(TinyModel(), Recording())
    stats = train_epoch(module, [(images, labels)], torch.optim.SGD(module.parameters(), lr=0.05), epoch=0,
                        device=torch.device("cpu"))
    assert seen == [[0, 0, 1, 2, 2, 3, 3]] and stats.images == 7 and stats.skipped == (17,)
    with pytest.raises(ValueError, match=r"every image of a training batch was unreadable \(dataset indices \[3, 4\]"):
        train_epoch(module, [(images[:2], torch.tensor([skipped_label(3), skipped_label(4)]))],
                    torch.optim.SGD(module.parameters(), lr=0.05), epoch=1, device=torch.device("cpu"))
