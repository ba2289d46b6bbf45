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


def test_step_and_wait_split_the_epoch_on_the_host_clock():
    import time

    def slow_batches():
        for images, labels in _batches(3):
            time.sleep(0.05)  # a slow loader
            yield images, labels

    module = TrainModule(TinyModel(), PullTogether())
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    stats = train_epoch(module, slow_batches(), opt, epoch=0, device=torch.device("cpu"))
    assert stats.wait_seconds >= 0.15 and stats.step_seconds > 0
    assert stats.step_seconds + stats.wait_seconds <= stats.seconds


def test_step_clock_on_cuda_records_events_and_never_syncs_per_step(monkeypatch):
    """The CUDA branch with fake events (this machine has no GPU): two events per step on the current stream,
    no torch.cuda.synchronize and no event query until read()."""
    import time

    from diml.engine import StepClock

    calls = []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.at = None

        def record(self):
            self.at = time.perf_counter()
            calls.append("record")

        def elapsed_time(self, other):
            calls.append("elapsed")
            return (other.at - self.at) * 1000.0

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("sync"))
    clock = StepClock(torch.device("cuda"))
    for _ in range(3):
        time.sleep(0.01)
        clock.step_started()
        time.sleep(0.02)
        clock.step_ended()
    assert calls == ["record"] * 7
    step, wait = clock.read()
    assert 0.06 <= step < 0.5 and 0.03 <= wait < 0.5
