"""A rough GPU-hours estimate of a study, per backbone, for the dry run (planning, not a promise: +-2x).

Per trial: ``epochs x train images / training rate`` + every evaluation of the selection split (forward at 3x the
training rate + the structural re-ranking of ``max(depths)`` candidates per query) + the final test evaluation,
times the trial's GPUs. The training rate is the slower of the GPU's step and the loader's workers. Every rate is
a measurement, listed in :data:`RATES` with where it was taken; the other backbones are scaled from resnet50 by
their FLOPs at their customary size. Datasets with no fixed size (``folder``) are not estimated.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

from pipeline.specs import RunSpec


class Rate(NamedTuple):
    value: float
    source: str


# Measured rates (images/s unless named otherwise) and where each came from.
RATES = {
    # resnet50, 224 px, batch 112 (56 x 2), frozen BN, Adam, one GPU, the global (non-DIML) margin loss
    "resnet50/fp32": Rate(2515.0, "H200, issue 26: 6 float loader workers fed 1,534 img/s, 61 % of the eager fp32 "
                                  "step (H100: 2,031-2,386, benchmarks/results/h100-1..4/train_fp32.json)"),
    "resnet50/bf16": Rate(2507.0, "H200, issue 26: bf16 autocast, eager (H100 bf16 + channels-last: 2,073-2,362, "
                                  "benchmarks/results/h100-*/train_bf16_cl.json)"),
    "resnet50/compiled": Rate(4007.0, "H200, issue 26: torch.compile, bf16, the best run (H100: 3,200-3,808, "
                                      "benchmarks/results/h100-*/train_compile.json)"),
    # what the structural loss multiplies the step time by (the tensor path, before the Triton kernels of issue 19)
    "diml/margin": Rate(1.39, "H100 fp32, benchmarks/README.md training steps: margin-DIML +39 %"),
    "diml/multisimilarity": Rate(1.72, "H100 fp32, benchmarks/README.md: MS-DIML +72 % (other structural losses)"),
    "diml/compiled": Rate(1.80, "H100 compiled bf16 + channels-last, benchmarks/README.md: margin-DIML +80 %"),
    # loader workers (DataLoader processes) at 224 px on CUB-like JPEGs, the authors' augmentation
    "loader/float": Rate(256.0, "H200 host, issue 26: the float transforms, per worker"),
    "loader/uint8": Rate(256.0 * 2.34, "the H200 host's float rate x the uint8 / float ratio per worker measured side "
                                       "by side on this project's CPU (benchmarks/bench_loader.py, 2026-12-04: 826 vs "
                                       "346 images per worker CPU second; 2.45x in wall time)"),
    "loader/uint8_cached": Rate(256.0 * 5.7, "likewise from the decoded cache (data.decoded_cache_gb), after the first "
                                             "epoch: 1,969 vs 346 images per worker CPU second (5.9x wall)"),
    # the rest of a trial
    "eval/forward_speedup": Rate(3.0, "forward only, vs a training step (rough)"),
    "eval/rerank_pairs_per_s": Rate(1.0e6, "structural re-ranking pairs/s on a GPU (benchmarks/README.md, "
                                           "evaluation: 6 M SOP-scale pairs in 16 s)"),
}
REFERENCE_SIZE = 224
# training speed relative to resnet50 at 224 px (by FLOPs: 4.1 GFLOPs for resnet50)
RELATIVE_SPEED = {"resnet18": 5000 / 2300, "resnet34": 3300 / 2300, "resnet50": 1.0, "resnet101": 1300 / 2300,
                  "googlenet": 4500 / 2300, "inception_v3": 4.1 / 5.7, "efficientnet_b0": 3000 / 2300,
                  "convnext_tiny": 2100 / 2300, "vit_b_16": 4.1 / 17.6}
# (train, test) images; the val split is carved from train
DATASET_SIZES = {"cub200": (5864, 5924), "cars196": (8054, 8131), "sop": (59551, 60502)}
# decoded bytes per image at full resolution (CUB: 500 x 375 at most; Cars196 and SOP: typical sizes, rough)
DECODED_BYTES = {"cub200": 500 * 375 * 3, "cars196": 700 * 480 * 3, "sop": 500 * 500 * 3}


def _sizes(spec: RunSpec) -> tuple[float, float] | None:
    data = spec.data
    if data.dataset == "synthetic":
        half = data.synthetic.num_classes // 2 * data.synthetic.images_per_class
        return float(half), float(half)
    return tuple(map(float, DATASET_SIZES[data.dataset])) if data.dataset in DATASET_SIZES else None


def backbone_rate(spec: RunSpec) -> float:
    """One GPU's training images/s with a global loss: ``spec``'s backbone, image size, precision, compilation."""
    model = spec.model
    mode = "compiled" if model.compile else "bf16" if model.amp else "fp32"
    rate = RATES[f"resnet50/{mode}"].value * RELATIVE_SPEED.get(model.backbone, 0.4)
    return rate * (REFERENCE_SIZE / spec.data.image_size) ** 2


def step_rate(spec: RunSpec) -> float:
    """:func:`backbone_rate` slowed by the structural loss (``loss.similarity: diml``)."""
    if spec.loss.similarity != "diml":
        return backbone_rate(spec)
    if spec.model.compile:
        cost = RATES["diml/compiled"]
    else:
        cost = RATES.get(f"diml/{spec.loss.name}", RATES["diml/multisimilarity"])
    return backbone_rate(spec) / cost.value


def loader_rate(spec: RunSpec, train_images: float, *, training: bool) -> float:
    """Images/s one loader worker delivers: the float or uint8 path (``data.input``), and for training from the
    decoded cache where ``data.decoded_cache_gb`` holds the split (an average over the epochs: the first decodes)."""
    data = spec.data
    if data.input == "float":
        return RATES["loader/float"].value
    uncached = RATES["loader/uint8"].value
    if not training or data.decoded_cache_gb <= 0:
        return uncached
    needed = train_images * DECODED_BYTES.get(data.dataset, 500 * 375 * 3)
    share = min(1.0, data.decoded_cache_gb * 1e9 / needed) * (spec.epochs - 1) / spec.epochs
    return 1.0 / (share / RATES["loader/uint8_cached"].value + (1.0 - share) / uncached)


def trial_gpu_hours(spec: RunSpec) -> float | None:
    """Estimated GPU-hours of one trial, or ``None`` when it uses no GPU or its dataset size is unknown."""
    sizes = _sizes(spec)
    if not spec.resources.use_gpu or sizes is None:
        return None
    train, test = sizes
    selection = train * spec.data.val_fraction if spec.data.val_fraction > 0 else test
    train -= train * spec.data.val_fraction
    workers = spec.resources.workers_per_trial
    gpus = workers * spec.resources.gpus_per_worker
    loaders = max(spec.data.loader_workers, 1) * workers
    train_rate = min(step_rate(spec) * workers, loader_rate(spec, train, training=True) * loaders)
    # the structural loss does not slow the forward pass
    forward = backbone_rate(spec) * workers * RATES["eval/forward_speedup"].value
    eval_rate = min(forward, loader_rate(spec, train, training=False) * loaders)
    depth = max(spec.evaluation.depths, default=0)
    pairs = RATES["eval/rerank_pairs_per_s"].value
    per_eval = selection / eval_rate + selection * depth / pairs
    evaluations = spec.epochs // spec.evaluation.every_n_epochs
    seconds = spec.epochs * train / train_rate + evaluations * per_eval + test / eval_rate + test * depth / pairs
    return seconds / 3600.0 * gpus


def by_backbone(specs: list[RunSpec], samples: int = 1) -> list[str]:
    """Dry-run lines: trials and estimated GPU-hours per backbone, and the total."""
    trials: dict[str, int] = defaultdict(int)
    hours: dict[str, float] = defaultdict(float)
    unknown: dict[str, int] = defaultdict(int)
    for spec in specs:
        trials[spec.model.backbone] += samples
        estimate = trial_gpu_hours(spec)
        if estimate is None:
            unknown[spec.model.backbone] += samples
        else:
            hours[spec.model.backbone] += estimate * samples
    if not hours:
        return []
    lines = ["", "GPU-hours (rough, one H100/H200-class GPU per worker; measured rates: pipeline/launch/estimate.py):"]
    width = max(len(name) for name in trials)
    for name in trials:
        note = f" ({unknown[name]} not estimated)" if unknown[name] else ""
        lines.append(f"  {name.ljust(width)}  {trials[name]:4d} trials  {hours[name]:8.0f} GPU-h{note}")
    lines.append(f"  {'total'.ljust(width)}  {sum(trials.values()):4d} trials  {sum(hours.values()):8.0f} GPU-h")
    return lines
