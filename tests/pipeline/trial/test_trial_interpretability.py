"""The trial's part-correspondence step (issue 25): what it logs, and when it stays silent."""

from __future__ import annotations

import pytest
import torch

from diml import names
from diml.evaluation import EmbeddingSet, correspondence_metrics
from pipeline.launch.study import build_study
from pipeline.trial import build
from pipeline.trial.interpretability import part_correspondence
from pipeline.trial.worker import Context


@pytest.fixture(scope="module")
def trial():
    raw = {"name": "p", "data": {"dataset": "synthetic", "image_size": 32,
                                 "synthetic": {"num_classes": 8, "images_per_class": 4}},
           "model": {"backbone": "resnet18", "embed_dim": 8, "grid": 2}, "batch": {"size": 4, "images_per_class": 2},
           "evaluation": {"depths": [3], "interpretability": {"max_pairs": 5}}, "resources": {"workers_per_trial": 1}}
    spec = build_study(raw).trials[0].spec
    test = build.build_splits(spec).test
    generator = torch.Generator().manual_seed(0)
    local = torch.randn(len(test), 8, 4, generator=generator)
    embeddings = EmbeddingSet(local.mean(2), torch.as_tensor(test.labels), local, {})
    return spec, test, embeddings


class _Tags:
    def __init__(self):
        self.seen = {}

    def tags(self, tags):
        self.seen.update(tags)


def _ctx(spec, rank=0):
    return Context(spec=spec, rank=rank, world_size=1, device=torch.device("cpu"), run_id=None, tracking_uri=None)


def test_rank_zero_logs_the_metric_under_its_prefix_with_the_spec_settings(trial):
    spec, test, embeddings = trial
    got = part_correspondence(test, embeddings, _ctx(spec), "best/test")
    want = correspondence_metrics(embeddings.local_emb, embeddings.global_emb, embeddings.labels, test.keypoints(),
                                  grid=2, image_size=32, part_names=test.part_names, boxes=test.part_boxes(),
                                  ot=build.ot_options(spec.evaluation.ot), max_pairs=5, seed=spec.seed)
    assert got.pop("best/test/interp_seconds") > 0
    assert got == {names.interp_key("best/test", key): value for key, value in want.items()}
    assert got["best/test/interp/num_pairs"] == 5.0  # evaluation.interpretability.max_pairs


def test_silent_off_rank_zero_when_switched_off_or_without_parts(trial):
    spec, test, embeddings = trial
    assert part_correspondence(test, embeddings, _ctx(spec, rank=1), "best/test") == {}
    off = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(
        update={"interpretability": spec.evaluation.interpretability.model_copy(update={"enabled": False})})})
    assert part_correspondence(test, embeddings, _ctx(off), "best/test") == {}
    bare = test.subset(range(len(test)))
    bare.part_source = None  # a split without part annotations (e.g. cub200 without parts/)
    assert bare.part_names is None and part_correspondence(bare, embeddings, _ctx(spec), "best/test") == {}


def test_data_without_a_scorable_pair_is_a_tag_not_a_failure(trial):
    spec, test, embeddings = trial
    one_per_class = [i for i in range(len(test)) if i % 4 == 0]  # no two images of a class: no pair
    rows = torch.tensor(one_per_class)
    kept = EmbeddingSet(embeddings.global_emb[rows], embeddings.labels[rows], embeddings.local_emb[rows],
                        {"indices": one_per_class})
    logger = _Tags()
    assert part_correspondence(test, kept, _ctx(spec), "init/test", logger) == {}
    assert "no two images of one class share a visible part" in logger.seen["interpretability_skipped.init_test"]
