"""The one place that maps a validated :class:`~pipeline.specs.RunSpec` to :mod:`diml` objects.

Nothing else in :mod:`pipeline` constructs models, losses, data, optimizers or schedulers from spec fields.
"""

from __future__ import annotations

from typing import Any

import torch

from diml.options import OTOptions
from pipeline.specs import OTSpec, RunSpec


def build_splits(spec: RunSpec):
    """Train / val / test splits of ``spec.data`` (val is None without ``data.val_fraction``): uint8 crops or float
    images (``data.input``); with ``data.decoded_cache_gb`` the training images are decoded once into a cache."""
    from diml.data import build_splits as _build

    data = spec.data
    options: dict[str, Any] = {}
    if data.dataset == "synthetic":
        options = {"num_classes": data.synthetic.num_classes, "images_per_class": data.synthetic.images_per_class}
    elif data.dataset == "folder":
        options = {"test_fraction": data.test_fraction}
    splits = _build(data.dataset, root=data.root, image_size=data.image_size, seed=spec.seed,
                    val_fraction=data.val_fraction, skip_bad_images=data.skip_bad_images,
                    augmentation=augmentation(spec), input_format=data.input, **options)
    if data.decoded_cache_gb > 0:
        from diml.data.pixel_cache import cache_pixels

        cache_pixels(splits.train, data.decoded_cache_gb * 1e9, threads=max(1, int(spec.resources.cpus_per_worker)))
    return splits


def device_augment(spec: RunSpec):
    """The :class:`diml.data.device_input.DeviceAugment` of ``data.input: uint8`` (ImageNet normalisation, in the
    model's memory format), or None for ``float`` input."""
    if spec.data.input != "uint8":
        return None
    from diml.data.device_input import DeviceAugment

    return DeviceAugment(channels_last=spec.model.channels_last)


def augmentation(spec: RunSpec):
    """The :class:`diml.data.Augmentation` of ``data.augmentation`` (a null crop_scale: the dataset's default)."""
    from diml.data import Augmentation

    values = spec.data.augmentation.model_dump()
    return Augmentation(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def build_model(spec: RunSpec) -> torch.nn.Module:
    from diml.models import build_model as _build

    m = spec.model
    return _build(m.backbone, pretrained=m.pretrained, weights=m.weights, embed_dim=m.embed_dim, grid=m.grid,
                  frozen_bn=m.frozen_bn, align_corners=m.align_corners, global_vector=global_vector(spec))


def global_vector(spec: RunSpec) -> str:
    """``model.global_vector`` with ``auto`` resolved as the authors do: the mean of the cell embeddings for a
    DIML-trained model (``loss.similarity: diml``), the head applied to the map's mean otherwise."""
    if spec.model.global_vector != "auto":
        return spec.model.global_vector
    return "cell_mean" if spec.loss.similarity == "diml" else "map_mean"


def model_config(spec: RunSpec, model: torch.nn.Module) -> dict[str, Any]:
    """What a checkpoint needs to rebuild ``model`` (built from ``spec``, possibly DDP-wrapped) without the spec
    (:func:`diml.models.model_config`, read by ``python -m diml.explain``)."""
    from diml.distributed import unwrap_model
    from diml.models import model_config as _config

    return _config(unwrap_model(model), backbone=spec.model.backbone, image_size=spec.data.image_size,
                   eval_resize_ratio=spec.data.augmentation.eval_resize_ratio)


def ot_options(ot: OTSpec) -> OTOptions:
    """The :class:`diml.ot.OTOptions` of an OT spec section."""
    return OTOptions(**ot.model_dump())


def build_loss(spec: RunSpec, num_classes: int) -> torch.nn.Module:
    from diml.losses import build_loss as _build

    loss = spec.loss
    return _build(loss.name, dict(loss.params), similarity=loss.similarity, num_classes=num_classes,
                  embed_dim=spec.model.embed_dim, miner=loss.miner, miner_params=dict(loss.miner_params),
                  ot=ot_options(loss.ot))


def build_optimizer(spec: RunSpec, model: torch.nn.Module, loss: torch.nn.Module) -> torch.optim.Optimizer:
    """Model parameters at ``optimizer.lr`` with ``optimizer.weight_decay``; the loss's own parameters (margin beta,
    proxies) in their own group at ``optimizer.loss_lr`` (null: the authors' rate for the loss) with
    ``optimizer.loss_weight_decay`` (the authors: 0), see :func:`diml.losses.loss_param_groups`."""
    from diml.losses import loss_param_groups

    o = spec.optimizer
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": o.lr, "name": "model"}]
    groups += loss_param_groups(loss, model_lr=o.lr, lr=o.loss_lr, weight_decay=o.loss_weight_decay,
                                name=spec.loss.name)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)


def build_scheduler(spec: RunSpec, optimizer: torch.optim.Optimizer):
    """An epoch-level LR scheduler, or None for ``schedule.name: none``."""
    s = spec.schedule
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    if s.name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=s.milestones, gamma=s.gamma)
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs)
    return None


def build_sampler(spec: RunSpec, labels, *, rank: int, world_size: int):
    """Class-balanced P x M batches of ``batch.size / world_size`` images, distinct per rank (``batch.sampling``:
    distinct classes and images, or the authors' draws with replacement)."""
    from diml.data import ClassBalancedBatchSampler

    return ClassBalancedBatchSampler(labels, spec.batch.size // world_size, spec.batch.images_per_class,
                                     num_replicas=world_size, rank=rank, seed=spec.seed,
                                     replacement=spec.batch.sampling == "with_replacement")


def evaluation_options(spec: RunSpec) -> dict[str, Any]:
    """Keyword arguments of :func:`diml.evaluation.evaluate` (depths, Recall@k, R convention, OT)."""
    e = spec.evaluation
    return {"depths": tuple(e.depths), "ks": tuple(e.ks), "r_includes_query": e.r_includes_query,
            "ot": ot_options(e.ot), "seed": spec.seed}


def interpretability_options(spec: RunSpec) -> dict[str, Any]:
    """Keyword arguments of :func:`diml.evaluation.correspondence_metrics` besides the data: the grid, the crop side
    (L of PCK), the evaluation's OT options (the plan the re-ranking uses), the pairs sampled and their seed."""
    return {"grid": spec.model.grid, "image_size": spec.data.image_size, "ot": ot_options(spec.evaluation.ot),
            "max_pairs": spec.evaluation.interpretability.max_pairs, "seed": spec.seed}
