"""``pipeline.build``: a spec's ``data: {dataset, root}`` works for every dataset kind, and the spec maps onto the
model, loss, optimizer (separate lr for loss parameters), scheduler and DDP sampler it describes."""

import pytest
import torch
from PIL import Image

from pipeline.trial import build
from pipeline.launch.study import build_study

BASE = {"name": "b", "model": {"backbone": "resnet18", "embed_dim": 8, "grid": 2}, "batch": {"size": 4,
        "images_per_class": 2}, "resources": {"workers_per_trial": 1}}


def _img(path, shade):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10, 10), (shade, 40, 200)).save(path)


def _cub(root):
    for cid in (3, 50, 150, 160):
        for j in range(2):
            _img(root / "images" / f"{cid:03d}.Bird_{cid}" / f"{j}.jpg", cid)
    return {"train": 2, "test": 2}


def _cars(root):
    for k, name in enumerate(["Acura TL 2012", "BMW M3 2012", "Chevrolet Volt 2012", "Dodge Ram 2010"]):
        for j in range(2):
            _img(root / "images" / name / f"{j}.png", 10 * k)
    return {"train": 2, "test": 2}


def _sop(root):
    header, image_id = "image_id class_id super_class_id path", 0
    for fname, classes in (("Ebay_train.txt", (1, 2)), ("Ebay_test.txt", (3, 4, 5))):
        lines = [header]
        for class_id in classes:
            for j in range(2):
                image_id += 1
                rel = f"chair_final/{1000 + class_id}_{j}.JPG"
                _img(root / "Stanford_Online_Products" / rel, class_id)
                lines.append(f"{image_id} {class_id} 1 {rel}")
        (root / "Stanford_Online_Products" / fname).write_text("\n".join(lines) + "\n")
    return {"train": 2, "test": 3}


def _folder(root):
    for sub, names in (("train", ["ant", "bee"]), ("test", ["cat", "dog"])):
        for name in names:
            for j in range(2):
                _img(root / sub / name / f"{j}.png", len(name) * j)
    return {"train": 2, "test": 2}


@pytest.mark.parametrize("dataset,write", [("cub200", _cub), ("cars196", _cars), ("sop", _sop), ("folder", _folder)])
def test_every_dataset_through_a_spec(tmp_path, dataset, write):
    expected = write(tmp_path)
    for input_format in ("uint8", "float"):  # uint8 crops (the default) or normalised float images
        data = {"dataset": dataset, "root": str(tmp_path), "image_size": 32, "input": input_format}
        splits = build.build_splits(build_study({**BASE, "data": data}).trials[0].spec)
        assert (splits.train.num_classes, splits.test.num_classes) == (expected["train"], expected["test"])
        image, label = splits.test[0]
        shape = image.pixels.shape if input_format == "uint8" else image.shape
        assert shape == ((32, 32, 3) if input_format == "uint8" else (3, 32, 32)) and 0 <= label < expected["test"]


def test_synthetic_spec_options_reach_the_dataset():
    spec = build_study({**BASE, "data": {"dataset": "synthetic", "image_size": 32, "val_fraction": 0.25,
                                        "synthetic": {"num_classes": 16, "images_per_class": 3}}}).trials[0].spec
    splits = build.build_splits(spec)
    assert splits.train.num_classes + splits.val.num_classes == 8 and splits.val.num_classes == 2
    assert splits.test.num_classes == 8 and len(splits.test) == 24
    assert set(splits.val.class_names).isdisjoint(splits.train.class_names)


def test_model_loss_optimizer_scheduler_and_sampler_follow_the_spec():
    raw = {**BASE, "loss": {"name": "margin", "params": {"beta": 0.6}, "miner": "distance"},
           "optimizer": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01, "loss_lr": 5e-3},
           "schedule": {"name": "multistep", "milestones": [2, 4], "gamma": 0.5}, "epochs": 6,
           "batch": {"size": 8, "images_per_class": 2}, "resources": {"workers_per_trial": 2}}
    spec = build_study(raw).trials[0].spec
    model = build.build_model(spec)
    emb = model(torch.randn(2, 3, 32, 32))
    assert emb.global_emb.shape == (2, 8) and emb.local_emb.shape == (2, 8, 4)
    loss = build.build_loss(spec, num_classes=5)
    beta = next(loss.parameters())
    assert beta.shape == (5,) and torch.allclose(beta, torch.full((5,), 0.6))
    opt = build.build_optimizer(spec, model, loss)
    assert isinstance(opt, torch.optim.AdamW)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [("model", 1e-4, 0.01),
                                                                                ("loss", 5e-3, 0.0)]
    sched = build.build_scheduler(spec, opt)
    assert isinstance(sched, torch.optim.lr_scheduler.MultiStepLR) and sorted(sched.milestones) == [2, 4]
    labels = torch.arange(6).repeat_interleave(4).numpy()
    batches = [list(build.build_sampler(spec, labels, rank=r, world_size=2)) for r in (0, 1)]
    assert all(len(b) == 4 for rank in batches for b in rank)  # 8 over 2 workers
    assert not set(sum(batches[0], [])) & set(sum(batches[1], []))
    options = build.evaluation_options(spec)
    assert options["depths"] == (100,) and options["ot"].tol == 1e-6
    assert build.model_config(spec, model) == {"backbone": "resnet18", "embed_dim": 8, "grid": 2, "frozen_bn": True,
                                               "image_size": 224, "align_corners": True,
                                               "global_vector": "map_mean", "eval_resize_ratio": 256 / 224}
    wide = spec.model_copy(update={"data": spec.data.model_copy(update={
        "augmentation": spec.data.augmentation.model_copy(update={"eval_resize_ratio": 1.0})})})
    assert build.model_config(wide, model)["eval_resize_ratio"] == 1.0

    authors = build_study({**raw, "batch": {"size": 8, "images_per_class": 2, "sampling": "with_replacement"}})
    labels = torch.arange(3).repeat_interleave(20).numpy()  # 3 classes, 4 per worker's batch: repeats needed
    drawn = [list(build.build_sampler(authors.trials[0].spec, labels, rank=r, world_size=2)) for r in (0, 1)]
    assert [len(rank) for rank in drawn] == [60 // 8] * 2 and all(len(b) == 4 for rank in drawn for b in rank)
    with pytest.raises(ValueError, match="sampling"):
        build_study({**raw, "batch": {"size": 8, "images_per_class": 2, "sampling": "random"}})


def test_training_ot_defaults_are_what_the_training_benchmark_measures():
    import importlib.util
    import pathlib

    from diml.ot import TRIAL_TRAINING_OT, OTOptions
    from pipeline.specs import LossSpec

    path = pathlib.Path(__file__).resolve().parents[3] / "benchmarks" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train_for_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.TRIAL_TRAINING_OT == TRIAL_TRAINING_OT == build.ot_options(LossSpec().ot)
    ot = LossSpec().ot
    assert (ot.tol, ot.check_every, ot.newton_steps) == (1e-4, 5, 30)
    spec_eval = build_study(BASE).trials[0].spec
    assert build.evaluation_options(spec_eval)["ot"] == OTOptions(eps=0.05, marginals="cross_attention", max_iter=200,
                                                                  tol=1e-6, check_every=5, newton_steps=30)


def test_decoded_cache_and_device_augment_follow_the_spec():
    data = {"dataset": "synthetic", "image_size": 32, "decoded_cache_gb": 0.001,  # 1 MB of 3,072-byte images
            "synthetic": {"num_classes": 8, "images_per_class": 100}}
    spec = build_study({**BASE, "data": data, "model": {**BASE.get("model", {}), "channels_last": True}}).trials[0].spec
    splits = build.build_splits(spec)
    cache = splits.train.pixel_cache
    assert len(cache) == 1_000_000 // (32 * 32 * 3) < len(splits.train) == 400  # the budget holds; the rest decoded
    assert splits.test.__dict__.get("pixel_cache") is None  # only the training split is cached
    augment = build.device_augment(spec)
    assert augment.channels_last
    float_spec = build_study({**BASE, "data": {**data, "input": "float", "decoded_cache_gb": 0}}).trials[0].spec
    assert build.device_augment(float_spec) is None
