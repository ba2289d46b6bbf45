"""The trial level of a spec: :class:`RunSpec`, everything one trial needs (a grid, override or search may vary
any of it). What only the launch as a whole decides is :mod:`pipeline.specs.launch`.

A RunSpec crosses the Ray boundary as ``spec.model_dump(mode="json")`` and is re-validated on the other side.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from diml import names
from diml.options import MARGINAL_MODES, TRIAL_EVALUATION_OT, TRIAL_TRAINING_OT
from pipeline.specs.common import NAME_PATTERN, Strict, expand_env

DATASETS = ("synthetic", "cub200", "cars196", "sop", "folder")
# Validation context key: False skips the checks that look at this machine's files (data.root), for a dry run
# that plans a launch on another machine (``RunSpec.model_validate(raw, context={CHECK_PATHS: False})``).
CHECK_PATHS = "check_paths"


class SyntheticSpec(Strict):
    """The built-in synthetic part-based dataset (no download); classes split disjointly into train/test."""

    num_classes: int = Field(48, ge=4, description="total classes, split half train / half test")
    images_per_class: int = Field(24, ge=2)


class AugmentationSpec(Strict):
    """Training augmentation and eval geometry (:class:`diml.data.transforms.Augmentation`); defaults: the authors'.

    Data where a mirror image or a corner crop is another class (text, digits, documents) wants ``flip: false`` and
    ``crop_scale: [0.8, 1.0]``.
    """

    crop_scale: tuple[float, float] | None = Field(
        None, description="RandomResizedCrop area range; null: the authors' [0.08, 1] ([0.5, 1] for synthetic)")
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop aspect-ratio range")
    flip: bool = Field(True, description="random horizontal flip in training")
    random_crop: bool = Field(True, description="false: training uses the eval resize + centre crop")
    eval_resize_ratio: float = Field(256 / 224, ge=1.0, le=4.0,
                                     description="eval: resize the short side to image_size * ratio, centre-crop")

    @model_validator(mode="after")
    def _valid(self) -> "AugmentationSpec":
        from diml.data.transforms import Augmentation

        Augmentation(**self.model_dump())  # its ValueError names the field and the rule
        return self


class DataSpec(Strict):
    dataset: Literal["synthetic", "cub200", "cars196", "sop", "folder"] = "synthetic"
    root: str | None = Field(None, description="dataset folder; required for every dataset but synthetic")
    image_size: int = Field(224, ge=16, le=1024)
    val_fraction: float = Field(
        0.0, ge=0.0, lt=0.9, description="fraction of TRAIN classes held out for model selection (0: none)"
    )
    test_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="folder layout without train/test: test classes")
    skip_bad_images: bool = False
    loader_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes per Train worker")
    input: Literal["uint8", "float"] = Field(
        "uint8", description="uint8: loader workers decode and crop, the device flips and normalises batches "
        "(diml.data.device_input); float: the per-image float transforms in the workers (the same augmentation)")
    decoded_cache_gb: float = Field(
        0.0, ge=0.0, le=4096.0, description="decode the training images once into a cache (memory the forked loader "
        "workers share, not /dev/shm) of at most this many GB per Train worker (full resolution: CUB-200's 5,864 "
        "training images take 3.3 GB); 0: off. Needs input: uint8")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec)
    augmentation: AugmentationSpec = Field(default_factory=AugmentationSpec)

    @field_validator("root", mode="before")
    @classmethod
    def _expand_root(cls, value: Any) -> Any:
        return expand_env(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _cache_needs_uint8(self) -> "DataSpec":
        if self.decoded_cache_gb > 0 and self.input != "uint8":
            raise ValueError("data.decoded_cache_gb needs data.input: uint8 (the cache holds decoded uint8 images): "
                             "set input to uint8 or decoded_cache_gb to 0")
        return self

    @model_validator(mode="after")
    def _root_exists(self, info: ValidationInfo) -> "DataSpec":
        if self.dataset == "synthetic":
            return self
        if not self.root:
            raise ValueError(
                f"data.root is required for dataset {self.dataset!r}: set it to the dataset folder "
                "(see docs/DATASETS.md for where to obtain it)"
            )
        if not os.path.isdir(self.root) and (info.context or {}).get(CHECK_PATHS, True):
            raise ValueError(
                f"data.root {self.root!r} does not exist or is not a folder: point it at the {self.dataset} "
                "dataset (see docs/DATASETS.md)"
            )
        return self


class ModelSpec(Strict):
    backbone: str = "resnet50"
    pretrained: bool | str = Field(
        False, description="torchvision ImageNet weights by enum name (IMAGENET1K_V1: the authors' resnet50; "
        "IMAGENET1K_V2; DEFAULT), true = DEFAULT, false = none (needs them cached/online)")
    weights: str | None = Field(None, description="path of a local state dict for the backbone")
    embed_dim: int = Field(128, ge=1, le=8192)
    grid: int = Field(4, ge=1, le=32, description="cells per side of the structural grid (R = grid^2)")
    frozen_bn: bool = True
    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile the backbone")
    amp: bool = Field(False, description="bf16 autocast for the backbone on GPU (OT stays float32)")
    align_corners: bool = Field(True, description="grid pooling's bilinear up-sampling (the authors: true)")
    global_vector: Literal["auto", "map_mean", "cell_mean"] = Field(
        "auto", description="map_mean: head(mean of the map); cell_mean: mean of the cell embeddings; auto (the "
        "authors): cell_mean when loss.similarity is diml, else map_mean")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        from diml.models import list_backbones

        known = list_backbones()
        if value not in known:
            raise ValueError(f"unknown backbone {value!r}; allowed: {', '.join(known)}")
        return value

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isfile(os.path.expanduser(value)):
            raise ValueError(f"model.weights {value!r} is not a file: give the path of a saved state dict")
        return value

    @field_validator("pretrained")
    @classmethod
    def _known_weights(cls, value: bool | str, info: ValidationInfo) -> bool | str:
        from diml.models import weights_name

        if isinstance(value, bool) or "backbone" not in info.data:
            return value
        return weights_name(info.data["backbone"], value) or False  # canonical name, e.g. DEFAULT -> IMAGENET1K_V2

    @model_validator(mode="after")
    def _one_weight_source(self) -> "ModelSpec":
        if self.pretrained and self.weights:
            raise ValueError("model.pretrained and model.weights are exclusive: set only one of them")
        return self


class OTSpec(Strict):
    """Entropic optimal transport of the structural similarity (:class:`diml.ot.OTOptions`, whose ``grad`` stays
    ``plan_constant``).  Defaults: :data:`diml.ot.TRIAL_EVALUATION_OT` (the paper's eps and cross-attention
    marginals); a loss's ``ot`` defaults to :data:`diml.ot.TRIAL_TRAINING_OT`."""

    eps: float = Field(TRIAL_EVALUATION_OT.eps, gt=0.0, le=10.0)
    marginals: Literal[MARGINAL_MODES] = TRIAL_EVALUATION_OT.marginals
    max_iter: int = Field(TRIAL_EVALUATION_OT.max_iter, ge=1, le=100000,
                          description="Sinkhorn iterations before the Newton polish")
    tol: float = Field(TRIAL_EVALUATION_OT.tol, gt=0.0, lt=1.0, description="marginal-error tolerance")
    check_every: int = Field(TRIAL_EVALUATION_OT.check_every, ge=1, le=1000,
                             description="Sinkhorn iterations between convergence checks")
    newton_steps: int = Field(TRIAL_EVALUATION_OT.newton_steps, ge=0, le=1000,
                              description="most Newton steps for slowly converging problems")

    @classmethod
    def of(cls, options) -> "OTSpec":
        """The spec section holding :class:`diml.ot.OTOptions` ``options`` (all but ``grad``)."""
        return cls(**{k: v for k, v in options.as_dict().items() if k in cls.model_fields})


class LossSpec(Strict):
    name: str = "margin"
    similarity: Literal["global", "diml"] = Field(
        "global", description="global: cosine of pooled embeddings; diml: structural similarity (OT)"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="hyperparameters of the loss")
    miner: str | None = None
    miner_params: dict[str, Any] = Field(default_factory=dict)
    ot: OTSpec = Field(default_factory=lambda: OTSpec.of(TRIAL_TRAINING_OT),
                       description="OT inside the loss (defaults: diml.ot.TRIAL_TRAINING_OT)")

    @field_validator("name")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        from diml.losses import list_losses

        known = list_losses()
        if value not in known:
            raise ValueError(f"unknown loss {value!r}; allowed: {', '.join(known)}")
        return value

    @field_validator("miner")
    @classmethod
    def _known_miner(cls, value: str | None) -> str | None:
        from diml.losses import list_miners

        known = list_miners()
        if value is not None and value not in known:
            raise ValueError(f"unknown miner {value!r}; allowed: {', '.join(known)} (or null)")
        return value


class OptimizerSpec(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-5, gt=0.0, le=10.0)
    weight_decay: float = Field(4e-4, ge=0.0, le=1.0)
    loss_lr: float | None = Field(None, gt=0.0, le=10.0, description="lr of the loss's own parameters (margin "
                                  "beta, proxies); null: the authors' per-loss rate (diml.losses.AUTHORS_LOSS_RATES)")
    loss_weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="weight decay of the loss's own parameters "
                                     "(the authors: 0)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")


class ScheduleSpec(Strict):
    name: Literal["none", "step", "multistep", "cosine"] = "none"
    step_size: int = Field(30, ge=1, description="epochs between decays (step)")
    milestones: list[int] = Field(default_factory=list, description="epochs of decay (multistep)")
    gamma: float = Field(0.1, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _milestones(self) -> "ScheduleSpec":
        if self.name == "multistep" and not self.milestones:
            raise ValueError("schedule.milestones must list at least one epoch when schedule.name is 'multistep'")
        return self


class BatchSpec(Strict):
    size: int = Field(112, ge=2, le=65536, description="global batch per step, over all workers of a trial")
    images_per_class: int = Field(2, ge=1, le=1024, description="M of a P x M class-balanced batch")
    batches_per_epoch: int | None = Field(None, ge=1, description="cap the batches of an epoch (default: all)")
    sampling: Literal["distinct", "with_replacement"] = Field(
        "distinct", description="distinct: P distinct classes x M distinct images, each image once per epoch; "
        "with_replacement: the authors' sampler (classes and images drawn with replacement, N // batch.size "
        "batches per epoch; docs/FIDELITY.md row 7a)")

    @model_validator(mode="after")
    def _divisible(self) -> "BatchSpec":
        if self.size % self.images_per_class:
            raise ValueError(
                f"batch.size {self.size} is not divisible by batch.images_per_class {self.images_per_class}: "
                "choose a multiple (e.g. 112 = 56 classes x 2 images)"
            )
        return self


class InterpretabilitySpec(Strict):
    """Keypoint transfer through the matching plan, scored by PCK (:func:`diml.evaluation.correspondence_metrics`):
    on the test split at the end of a trial (and for the untrained model with ``before_training``), where the
    dataset has part annotations (synthetic, cub200 with ``parts/``, folder with ``parts.csv``); otherwise skipped."""

    enabled: bool = Field(True, description="false: never measure the matching flow's part correspondence")
    max_pairs: int = Field(10_000, ge=1, le=1_000_000, description="same-class test pairs sampled (both directions)")


class EvaluationSpec(Strict):
    depths: list[int] = Field(default_factory=lambda: [100], description="test-time DIML re-ranking depths K")
    ks: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], description="Recall@k")
    r_includes_query: bool = Field(False, description="true: the DIML paper's R convention")
    every_n_epochs: int = Field(1, ge=1)
    selection_split: Literal["auto", "val", "test"] = Field(
        "auto", description="split that selects the best epoch; auto: val when data.val_fraction > 0, else test"
    )
    selection_metric: str = Field(names.selection_name(names.GLOBAL, names.recall_key(1)),
                                  description="ranking/metric used to pick the best epoch")
    batch_size: int = Field(128, ge=1)
    ot: OTSpec = Field(default_factory=OTSpec)
    save_embeddings: bool = Field(False, description="log the final test embeddings as Parquet")
    explanations: int = Field(8, ge=0, le=256, description="test queries explained with figures at the end")
    before_training: bool = Field(False, description="also score the untrained model on test (init/test/...)")
    interpretability: InterpretabilitySpec = Field(default_factory=InterpretabilitySpec)

    @field_validator("depths", "ks")
    @classmethod
    def _positive_unique(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError(f"values must be >= 1, got {value}")
        return sorted(set(value))

    @field_validator("selection_metric")
    @classmethod
    def _metric_shape(cls, value: str) -> str:
        return names.check_selection_metric(value)


BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


class ResourcesSpec(Strict):
    workers_per_trial: int = Field(2, ge=1, le=1024)
    use_gpu: bool = False
    gpus_per_worker: float = Field(0.0, ge=0.0, le=16.0)
    cpus_per_worker: float = Field(1.0, gt=0.0, le=256.0)
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each worker needs, e.g. {a100: 1} for nodes that "
                                          "declare them (ray start --resources)")
    max_failures: int = Field(1, ge=0, description="worker-group restarts of a trial from its last checkpoint")
    checkpoints_to_keep: int = Field(2, ge=1)

    @field_validator("worker_resources")
    @classmethod
    def _custom_resources(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in BUILTIN_RESOURCES or name.lower() in ("cpu", "gpu"):
                raise ValueError(f"resources.worker_resources.{name}: a built-in resource; use cpus_per_worker / "
                                 "gpus_per_worker (memory is not reserved per worker)")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]*", name):
                raise ValueError(f"resources.worker_resources: {name!r} is not a Ray resource name "
                                 "(letters, digits, _ . : -)")
            if not 0 < amount <= 1024:
                raise ValueError(f"resources.worker_resources.{name}: {amount} must be > 0 and <= 1024")
        return value

    def per_worker(self) -> dict[str, float]:
        """The Ray resources of one worker (Ray Train's ``resources_per_worker``): CPU, GPU when used, custom."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {}),
                **self.worker_resources}

    @model_validator(mode="after")
    def _gpu_consistency(self) -> "ResourcesSpec":
        if self.use_gpu and self.gpus_per_worker == 0:
            raise ValueError("resources.use_gpu is true but gpus_per_worker is 0: set gpus_per_worker (e.g. 1)")
        if not self.use_gpu and self.gpus_per_worker > 0:
            raise ValueError("resources.gpus_per_worker > 0 but use_gpu is false: set use_gpu: true or 0 GPUs")
        return self


class RunSpec(Strict):
    """Everything one trial needs. Defaults follow the paper's setup (resnet50, 128-d, 56 x 2, Adam 1e-5)."""

    name: str = Field(..., min_length=1, max_length=100, pattern=NAME_PATTERN)
    description: str = ""
    seed: int = Field(0, ge=0)
    epochs: int = Field(1, ge=1, le=10000)
    deterministic: bool = Field(
        False, description="deterministic GPU kernels (torch.use_deterministic_algorithms, cuDNN deterministic, no "
        "autotuning, fixed cuBLAS workspace): the same GPU, versions and seed give the same numbers, at the cost in "
        "docs/REPRODUCIBILITY.md; a CPU trial is deterministic either way")
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    batch: BatchSpec = Field(default_factory=BatchSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @model_validator(mode="after")
    def _cross_field(self) -> "RunSpec":
        per_worker, rest = divmod(self.batch.size, self.resources.workers_per_trial)
        if rest or per_worker % self.batch.images_per_class:
            raise ValueError(
                f"batch.size {self.batch.size} must split into resources.workers_per_trial "
                f"{self.resources.workers_per_trial} equal batches that are multiples of batch.images_per_class "
                f"{self.batch.images_per_class}: choose a multiple of "
                f"{self.resources.workers_per_trial * self.batch.images_per_class}"
            )
        _check_loss(self)
        _check_input_size(self)
        if self.evaluation.selection_split == "val" and self.data.val_fraction == 0:
            raise ValueError("evaluation.selection_split is 'val' but data.val_fraction is 0: set data.val_fraction")
        return self

    @property
    def selection_split(self) -> str:
        if self.evaluation.selection_split != "auto":
            return self.evaluation.selection_split
        return "val" if self.data.val_fraction > 0 else "test"


def _check_input_size(spec: "RunSpec") -> None:
    """The backbone's smallest input (a feature map of at least one cell), before a trial fails on it."""
    from diml.models.backbones import get_backbone_entry

    minimum = get_backbone_entry(spec.model.backbone).min_size
    if spec.data.image_size < minimum:
        raise ValueError(f"data.image_size {spec.data.image_size} is too small for model.backbone "
                         f"{spec.model.backbone} (its feature map would be empty): set data.image_size >= {minimum}")


def _check_loss(spec: "RunSpec") -> None:
    """The loss, its hyperparameters and miner against the registries (nothing is built, nothing solved)."""
    from diml.losses import check_loss

    loss = spec.loss
    try:
        check_loss(loss.name, dict(loss.params), similarity=loss.similarity, miner=loss.miner,
                   miner_params=dict(loss.miner_params))
    except ValueError as exc:
        raise ValueError(f"loss ({loss.name}, similarity {loss.similarity}): {exc}") from None
