"""ClassBalancedBatchSampler invariants: P x M per batch, disjoint across ranks, reproducible per (seed, epoch)."""

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from diml.data import ClassBalancedBatchSampler

# 10 classes of uneven sizes: 3..12 images; class 9 has fewer images than M=4 only in the replacement test.
LABELS = np.repeat(np.arange(10), np.arange(3, 13))


def _check_pm(batch, labels, p, m):
    counts = Counter(labels[batch].tolist())
    assert len(counts) == p and set(counts.values()) == {m}
    # consecutive groups of M share a class
    for start in range(0, len(batch), m):
        assert len(set(labels[batch[start:start + m]].tolist())) == 1


def test_batches_are_p_classes_by_m_images_and_use_each_image_once():
    sampler = ClassBalancedBatchSampler(LABELS, 12, 3, seed=5)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 12
        _check_pm(batch, LABELS, 4, 3)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))  # no image twice in an epoch
    # all chunks of M are used except the leftovers that cannot fill 4 distinct classes
    chunks = sum(n // 3 for n in np.bincount(LABELS))
    assert chunks - 4 < len(batches) * 4 <= chunks


@pytest.mark.parametrize("num_replicas", [2, 3])
def test_ranks_draw_disjoint_batches_of_equal_count(num_replicas):
    samplers = [ClassBalancedBatchSampler(LABELS, 8, 2, num_replicas=num_replicas, rank=r, seed=1)
                for r in range(num_replicas)]
    for epoch in (0, 1):
        per_rank = []
        for s in samplers:
            s.set_epoch(epoch)
            per_rank.append([i for b in s for i in b])
        assert len({len(s) for s in samplers}) == 1 and len(samplers[0]) > 0
        flat = [i for images in per_rank for i in images]
        assert len(flat) == len(set(flat))  # no image on two ranks
        whole = ClassBalancedBatchSampler(LABELS, 8, 2, seed=1)
        assert len(flat) == 8 * (len(whole.epoch_batches(epoch)) // num_replicas) * num_replicas


def test_reproducible_per_seed_and_epoch_and_different_across_epochs():
    a = ClassBalancedBatchSampler(LABELS, 8, 2, seed=3)
    b = ClassBalancedBatchSampler(LABELS, 8, 2, seed=3)
    c = ClassBalancedBatchSampler(LABELS, 8, 2, seed=4)
    assert list(a) == list(b)
    assert list(a) != list(c)
    first = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) and list(a) != first
    a.set_epoch(0)
    assert list(a) == first


def test_classes_smaller_than_m_are_filled_with_replacement():
    labels = np.array([0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    sampler = ClassBalancedBatchSampler(labels, 8, 4, seed=0)
    seen = Counter()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        for batch in sampler:
            _check_pm(batch, labels, 2, 4)
            if 0 in labels[batch]:
                assert [i for i in batch if labels[i] == 0] == [0, 0, 0, 0]
            seen.update(labels[batch].tolist())
    assert seen[0] > 0  # the single-image class is drawn too


def test_drop_last_false_keeps_leftovers_and_pads_ranks():
    labels = np.repeat(np.arange(3), [4, 4, 2])  # chunks of 2: 2 + 2 + 1 = 5; P = 2
    full = ClassBalancedBatchSampler(labels, 4, 2, drop_last=False, seed=0)
    batches = list(full)
    assert sorted(i for b in batches for i in b) == list(range(10))  # every image used exactly once
    assert all(len(b) % 2 == 0 for b in batches) and any(len(b) < 4 for b in batches)
    ranks = [ClassBalancedBatchSampler(labels, 4, 2, drop_last=False, num_replicas=2, rank=r) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == -(-len(batches) // 2)
    dropped = ClassBalancedBatchSampler(labels, 4, 2, seed=0)
    assert all(len(b) == 4 for b in dropped)


def test_works_as_a_dataloader_batch_sampler():
    data = TensorDataset(torch.arange(len(LABELS)), torch.as_tensor(LABELS))
    sampler = ClassBalancedBatchSampler(LABELS, 6, 2, seed=0)
    loader = DataLoader(data, batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(sampler)
    for index, label in batches:
        assert torch.equal(label, torch.as_tensor(LABELS)[index])
        assert len(torch.unique(label)) == 3


def test_invalid_arguments_name_the_fix():
    with pytest.raises(ValueError, match=r"batch_size \(10\) must be a positive multiple of images_per_class \(4\)"):
        ClassBalancedBatchSampler(LABELS, 10, 4)
    with pytest.raises(ValueError, match="only 10 classes; lower batch_size"):
        ClassBalancedBatchSampler(LABELS, 22, 2)
    with pytest.raises(ValueError, match="rank must be in"):
        ClassBalancedBatchSampler(LABELS, 8, 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        ClassBalancedBatchSampler([], 8, 2)


def test_with_replacement_draws_as_the_authors_class_random_sampler():
    labels = np.repeat(np.arange(10), 7)  # 70 images, 10 classes
    sampler = ClassBalancedBatchSampler(labels, 12, 3, seed=2, replacement=True)
    batches = list(sampler)
    assert len(batches) == 70 // 12  # len(image_list) // bs, as the authors
    seen_repeats = {"class": False, "image": False}
    for batch in batches:
        assert len(batch) == 12
        groups = [batch[i:i + 3] for i in range(0, 12, 3)]
        group_classes = [set(labels[g]) for g in groups]
        assert all(len(c) == 1 for c in group_classes)  # M images of one class per draw
        classes = [c.pop() for c in group_classes]
        seen_repeats["class"] |= len(set(classes)) < len(classes)
        seen_repeats["image"] |= any(len(set(g)) < len(g) for g in groups)
    # over many epochs both kinds of repeat occur (a distinct sampler never yields either)
    for epoch in range(1, 40):
        sampler.set_epoch(epoch)
        for batch in sampler:
            groups = [batch[i:i + 3] for i in range(0, 12, 3)]
            seen_repeats["class"] |= len({int(labels[g[0]]) for g in groups}) < 4
            seen_repeats["image"] |= any(len(set(g)) < 3 for g in groups)
    assert seen_repeats == {"class": True, "image": True}
    distinct = ClassBalancedBatchSampler(labels, 12, 3, seed=2)
    for epoch in range(40):
        distinct.set_epoch(epoch)
        for batch in distinct:
            assert len(set(batch)) == 12 and len(set(labels[batch])) == 4


def test_with_replacement_deals_disjoint_equal_shares_to_ranks_and_allows_more_classes_than_exist():
    labels = np.repeat(np.arange(3), 20)  # 3 classes, but 4 classes per batch: the authors' sampler repeats them
    with pytest.raises(ValueError, match="lower batch_size"):
        ClassBalancedBatchSampler(labels, 8, 2)
    ranks = [ClassBalancedBatchSampler(labels, 8, 2, num_replicas=2, rank=r, seed=0, replacement=True)
             for r in range(2)]
    shares = [list(s) for s in ranks]
    assert len(shares[0]) == len(shares[1]) == 60 // 16
    whole = ClassBalancedBatchSampler(labels, 8, 2, num_replicas=2, seed=0, replacement=True).epoch_batches(0)
    assert shares[0] == whole[0::2] and shares[1] == whole[1::2]
    with pytest.raises(ValueError, match="replacement must be True or False"):
        ClassBalancedBatchSampler(labels, 8, 2, replacement="yes")
