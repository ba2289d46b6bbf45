"""A rough GPU-hours estimate of a study, per backbone, for the dry run (planning, not a promise: +-2x).

Per trial: ``epochs x train images / training rate`` + every evaluation of the selection split (forward at 3x the
training rate + the structural re-ranking of ``max(depths)`` candidates per query) + the final test evaluation,
times the trial's GPUs. Rates are for one H100-class GPU in fp32, calibrated on ``benchmarks/README.md``'s measured
resnet50 step (224 px, batch 112: 48.8 ms, 2,300 img/s; margin-DIML +39 %, MS-DIML +72 %) and scaled for the other
backbones by their FLOPs at their customary size; the data loader caps the rate at 250 img/s per loader worker
(JPEG decoding and augmentation in PIL). Datasets with no fixed size (``folder``) are not estimated.
"""

from __future__ import annotations

from collections import defaultdict

from pipeline.specs import RunSpec

# training images/s on one GPU at 224 px (resnet50 measured; others scaled by FLOPs: 4.1 GFLOPs for resnet50)
TRAIN_RATE = {"resnet18": 5000.0, "resnet34": 3300.0, "resnet50": 2300.0, "resnet101": 1300.0, "googlenet": 4500.0,
              "inception_v3": 2300.0 * 4.1 / 5.7, "efficientnet_b0": 3000.0, "convnext_tiny": 2100.0,
              "vit_b_16": 2300.0 * 4.1 / 17.6}
REFERENCE_SIZE = 224
DIML_LOSS_COST = {"margin": 1.39, "multisimilarity": 1.72}  # step time x, measured; other structural losses: 1.72
LOADER_RATE_PER_WORKER = 250.0
EVAL_SPEEDUP = 3.0  # forward only
RERANK_PAIRS_PER_S = 1.0e6
# (train, test) images; the val split is carved from train
DATASET_SIZES = {"cub200": (5864, 5924), "cars196": (8054, 8131), "sop": (59551, 60502)}


def _sizes(spec: RunSpec) -> tuple[float, float] | None:
    data = spec.data
    if data.dataset == "synthetic":
        half = data.synthetic.num_classes // 2 * data.synthetic.images_per_class
        return float(half), float(half)
    return tuple(map(float, DATASET_SIZES[data.dataset])) if data.dataset in DATASET_SIZES else None


def trial_gpu_hours(spec: RunSpec) -> float | None:
    """Estimated GPU-hours of one trial, or ``None`` when it uses no GPU or its dataset size is unknown."""
    sizes = _sizes(spec)
    if not spec.resources.use_gpu or sizes is None:
        return None
    train, test = sizes
    selection = train * spec.data.val_fraction if spec.data.val_fraction > 0 else test
    train -= train * spec.data.val_fraction
    gpus = spec.resources.workers_per_trial * spec.resources.gpus_per_worker
    scale = (REFERENCE_SIZE / spec.data.image_size) ** 2
    loader = LOADER_RATE_PER_WORKER * max(spec.data.loader_workers, 1) * spec.resources.workers_per_trial
    gpu_rate = TRAIN_RATE.get(spec.model.backbone, 1000.0) * scale * spec.resources.workers_per_trial
    step_cost = 1.0
    if spec.loss.similarity == "diml":
        step_cost = DIML_LOSS_COST.get(spec.loss.name, max(DIML_LOSS_COST.values()))
    train_rate = min(gpu_rate / step_cost, loader)
    eval_rate = min(gpu_rate * EVAL_SPEEDUP, loader)  # the structural loss does not slow the forward pass
    depth = max(spec.evaluation.depths, default=0)
    per_eval = selection / eval_rate + selection * depth / RERANK_PAIRS_PER_S
    evaluations = spec.epochs // spec.evaluation.every_n_epochs
    seconds = (spec.epochs * train / train_rate + evaluations * per_eval
               + test / eval_rate + test * depth / RERANK_PAIRS_PER_S)
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
    lines = ["", "GPU-hours (rough, one H100-class GPU per worker; see pipeline/launch/estimate.py):"]
    width = max(len(name) for name in trials)
    for name in trials:
        note = f" ({unknown[name]} not estimated)" if unknown[name] else ""
        lines.append(f"  {name.ljust(width)}  {trials[name]:4d} trials  {hours[name]:8.0f} GPU-h{note}")
    lines.append(f"  {'total'.ljust(width)}  {sum(trials.values()):4d} trials  {sum(hours.values()):8.0f} GPU-h")
    return lines
