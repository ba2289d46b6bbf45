"""The Ray Train loop of one trial, run by every worker (rank 0 also logs to MLflow and writes checkpoints).

Per epoch: train on class-balanced batches (the loss sees the global batch of all workers), evaluate the
selection split every ``evaluation.every_n_epochs`` (all workers embed a shard, rank 0 scores), report metrics from
every rank (``ray.train.report`` is a barrier) with a checkpoint from rank 0 holding the model, loss parameters,
optimizer, scheduler, epoch, RNG and the best weights so far. At the end: the best weights are evaluated on the test
split (global and test-time DIML at every depth) and logged with the artifacts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from diml import names
from diml.distributed import unwrap_model
from pipeline import provenance, tracking, tracking_buffer
from pipeline.specs import RunSpec, TrialLaunch
from pipeline.trial import build
from pipeline.trial.interpretability import part_correspondence
from pipeline.trial.logger import TrialLogger
from pipeline.trial.skipped import SkippedImages
from pipeline.trial.timing import EpochTimes

STATE_FILE = "state.pt"
BEST_FILE = "best_so_far.pt"  # the best epoch so far, in diml's checkpoint format (diml.models.checkpoint)


@dataclass
class Progress:
    """What survives a restart besides the weights: next epoch, the best epoch so far and its metrics."""

    next_epoch: int = 0
    best_epoch: int = -1
    best_score: float = -math.inf
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_score: float = -math.inf


@dataclass
class Best:
    """The best epoch's weights (every rank; checkpointed) and, when found in this process, the selection split's
    embeddings at that epoch (rank 0, memory only), so the final test evaluation is not repeated needlessly."""

    state: dict[str, dict[str, torch.Tensor]] | None = None
    embeddings: Any = None
    fresh: bool = False


@dataclass
class Context:
    spec: RunSpec
    rank: int
    world_size: int
    device: torch.device
    run_id: str | None
    tracking_uri: str | None
    log_checkpoint: bool = True
    skipped: SkippedImages | None = None  # with data.skip_bad_images


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _broadcast(value: Any, ctx: Context) -> Any:
    """Rank 0's ``value`` on every rank (a no-op on one worker)."""
    if ctx.world_size == 1 or not torch.distributed.is_initialized():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate_split(train_module, dataset, ctx: Context):
    """Embed ``dataset`` on all workers (each a shard) and score it on rank 0.

    Returns ``(results, embeddings)`` on rank 0 and ``(None, None)`` on the other ranks.
    """
    from diml.evaluation import drop_unreadable, evaluate, extract_embeddings

    model = unwrap_model(train_module).model
    if ctx.world_size > 1 and torch.distributed.is_initialized():
        # DDP broadcasts rank 0's buffers before each training forward, so after the last step every rank holds its
        # own BatchNorm running statistics: without this, the shards would be embedded by different models and the
        # scores would not be those of the weights rank 0 checkpoints and logs
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    was_training = model.training
    model.eval()
    embeddings = extract_embeddings(model, dataset, batch_size=ctx.spec.evaluation.batch_size, device=ctx.device,
                                    num_workers=ctx.spec.data.loader_workers, augment=build.device_augment(ctx.spec))
    model.train(was_training)
    if ctx.rank != 0:
        return None, None
    embeddings, unreadable = drop_unreadable(embeddings)  # data.skip_bad_images: images that went bad since the scan
    if ctx.skipped is not None:
        ctx.skipped.add(dataset, unreadable)
    results = evaluate(embeddings.global_emb, embeddings.labels, embeddings.local_emb, device=ctx.device,
                       **build.evaluation_options(ctx.spec))
    return results, embeddings


def selection_score(results: dict[str, dict[str, float]], metric: str) -> float:
    ranking, name = (names.result_name(part) for part in metric.split("/"))
    if ranking not in results or name not in results[ranking]:
        raise ValueError(f"evaluation.selection_metric {metric!r} is not among the evaluated rankings "
                         f"{sorted(results)}: add its depth to evaluation.depths or pick another metric")
    return float(results[ranking][name])


# ------------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(folder: str, train_module, optimizer, scheduler, progress: Progress, best_state,
                    model_config: dict[str, Any]) -> None:
    """The training state (``state.pt``) and, if any, the best epoch's weights so far (``best_so_far.pt``, in
    :mod:`diml.models.checkpoint`'s format with ``model_config``)."""
    from diml.models import checkpoint

    module = unwrap_model(train_module)
    torch.save({"model": module.model.state_dict(), "loss": module.loss.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "progress": asdict(progress), "torch_rng": torch.get_rng_state()},
               os.path.join(folder, STATE_FILE))
    if best_state is not None:
        checkpoint.save_checkpoint(os.path.join(folder, BEST_FILE), best_state["model"], model_config,
                                   loss_state=best_state["loss"], epoch=progress.best_epoch)


def load_checkpoint(folder: str, train_module, optimizer, scheduler):
    """Restore a checkpoint written by :func:`save_checkpoint`; returns ``(progress, best_state)``."""
    from diml.models import checkpoint

    state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    module = unwrap_model(train_module)
    module.model.load_state_dict(state["model"])
    module.loss.load_state_dict(state["loss"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    best_path = os.path.join(folder, BEST_FILE)
    best = None
    if os.path.exists(best_path):
        stored = checkpoint.read_checkpoint(best_path)
        best = {"model": stored["model"], "loss": stored["loss"]}
    return Progress(**state["progress"]), best


def _cpu_copy(value: Any) -> Any:
    """A detached CPU copy of a state dict (tensors cloned; nested extra state, e.g. a miner's RNG, copied)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return value


def _snapshot(train_module) -> dict[str, dict[str, Any]]:
    module = unwrap_model(train_module)
    return {"model": _cpu_copy(module.model.state_dict()), "loss": _cpu_copy(module.loss.state_dict())}


# --------------------------------------------------------------------------------------------------- the loop
def _setup(config: dict[str, Any]):
    import ray.train
    import ray.train.torch

    spec = RunSpec.model_validate(config["spec"])
    launch = TrialLaunch.model_validate(config["launch"])
    train_ctx = ray.train.get_context()
    ctx = Context(spec=spec, rank=train_ctx.get_world_rank(), world_size=train_ctx.get_world_size(),
                  device=ray.train.torch.get_device(), run_id=config.get("run_id"),
                  tracking_uri=launch.tracking_uri, log_checkpoint=launch.log_checkpoint)
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    provenance.apply_determinism(spec.deterministic)
    tracking_buffer.bound_http_retries()
    seed_everything(spec.seed)
    from diml.engine import TrainModule

    splits = build.build_splits(spec)
    ctx.skipped = SkippedImages(splits) if spec.data.skip_bad_images else None
    model = build.build_model(spec)
    loss = build.build_loss(spec, splits.train.num_classes)
    amp = torch.bfloat16 if spec.model.amp and ctx.device.type == "cuda" else None
    module = TrainModule(model, loss, amp_dtype=amp).to(ctx.device)
    if spec.model.channels_last:
        module.model.to(memory_format=torch.channels_last)
    optimizer = build.build_optimizer(spec, module.model, module.loss)
    scheduler = build.build_scheduler(spec, optimizer)
    if spec.model.compile:  # in place: the state dict keeps its keys, so checkpoints load into plain models
        module.model.compile()
    if ctx.world_size > 1:
        module = ray.train.torch.prepare_model(module, move_to_device=False)
    return ctx, splits, module, optimizer, scheduler


def _loader(spec: RunSpec, dataset, ctx: Context):
    sampler = build.build_sampler(spec, dataset.labels, rank=ctx.rank, world_size=ctx.world_size)
    workers = spec.data.loader_workers
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                         pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0)
    return sampler, loader


@dataclass
class _Clock:
    """Orchestration overheads of this worker process: its setup time and the time from the trial driver's start
    (``trial_started``, epoch seconds on the driver) to the first training batch; reported once."""

    started: float
    trial_started: float | None = None
    first_batch: float | None = None
    skipped: float = 0.0
    reported: bool = False

    @contextlib.contextmanager
    def excluded(self):
        start = time.time()
        yield
        self.skipped += time.time() - start

    def batches(self, loader, limit: int | None):
        for index, batch in enumerate(loader):
            if limit is not None and index >= limit:
                return
            if self.first_batch is None:
                self.first_batch = time.time() - self.skipped
            yield batch

    def overheads(self) -> dict[str, float]:
        if self.reported or self.first_batch is None:
            return {}
        self.reported = True
        out = {"overhead/worker_setup_s": self.first_batch - self.started}
        if self.trial_started is not None:
            out["overhead/trial_to_first_batch_s"] = self.first_batch - self.trial_started
        return out


def quiet_worker_logs() -> None:
    """Keep INFO chatter out of the launcher's console (Ray forwards every worker's stderr to it): faiss's loader
    logs each SIMD build it tries, and Ray Train 2.60 logs every ``ray.train.report`` with all its metrics through
    a logger named after its module's file (outside ``ray.train``, so ``LoggingConfig`` does not reach it)."""
    import importlib.util

    names = ["faiss"]  # its loader logs as faiss.loader
    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    if spec is not None and spec.origin:
        names.append(spec.origin)
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


def train_loop(config: dict[str, Any]) -> dict[str, Any]:
    """``train_loop_per_worker`` of the trial's TorchTrainer; rank 0 returns the final metrics."""
    import ray.train

    from diml.data.device_input import device_batches
    from diml.engine import NonFiniteLossError, train_epoch

    quiet_worker_logs()
    clock = _Clock(started=time.time(), trial_started=config.get("trial_started_at"))
    ctx, splits, module, optimizer, scheduler = _setup(config)
    spec = ctx.spec
    progress, best = Progress(), Best()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("resume_from"):  # Train's own resume state was damaged and set aside
        checkpoint = ray.train.Checkpoint(config["resume_from"])
    pending = []  # MLflow calls the last attempt could not make (tracking_buffer)
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            progress, best.state = load_checkpoint(folder, module, optimizer, scheduler)
            pending = tracking_buffer.read_pending(folder)
    logger = TrialLogger(ctx, splits, pending)
    if checkpoint is not None:
        logger.tags({"restored_from_epoch": str(progress.next_epoch)})
    if progress.next_epoch == 0 and spec.evaluation.before_training:
        with clock.excluded():
            results, embeddings = evaluate_split(module, splits.test, ctx)
            if results is not None:
                logger.metrics({**tracking.evaluation_metrics("init/test", results),
                                **part_correspondence(splits.test, embeddings, ctx, "init/test", logger)}, 0)
    sampler, loader = _loader(spec, splits.train, ctx)
    augment = build.device_augment(spec)
    selection = splits.val if spec.selection_split == "val" else splits.test
    times = None
    for epoch in range(progress.next_epoch, spec.epochs):
        times = EpochTimes.start(logger.seconds)
        seed_everything(spec.seed * 100003 + epoch * 101 + ctx.rank)
        sampler.set_epoch(epoch)
        unreadable: list[int] = []  # data.skip_bad_images: dropped from the batches on the host
        batches = device_batches(clock.batches(loader, spec.batch.batches_per_epoch), ctx.device, augment,
                                 skipped=unreadable)
        try:
            stats = train_epoch(module, batches, optimizer, epoch=epoch, device=ctx.device,
                                channels_last=spec.model.channels_last)
        except NonFiniteLossError as exc:
            return logger.failed(exc, epoch)
        times.train_step, times.data_wait = stats.step_seconds, stats.wait_seconds
        if scheduler is not None:
            scheduler.step()
        metrics = {"epoch": epoch, "train/loss": stats.loss, "train/lr": stats.lr,
                   "train/epoch_seconds": stats.seconds,
                   "train/images_per_second": stats.images_per_second * ctx.world_size, **clock.overheads()}
        if (epoch + 1) % spec.evaluation.every_n_epochs == 0 or epoch + 1 == spec.epochs:
            with times.timing("eval"):
                _evaluate_epoch(module, selection, ctx, epoch, progress, metrics, best)
        if ctx.skipped is not None:  # data.skip_bad_images: this epoch's unreadable images, over every rank
            metrics.update(ctx.skipped.after_epoch(splits.train, stats.skipped + tuple(unreadable), ctx.world_size))
            logger.tags(ctx.skipped.new_tags())
        progress.next_epoch = epoch + 1
        metrics["selection_score"] = progress.last_score
        logger.metrics(metrics, epoch)
        with times.timing("checkpoint"):
            _report(metrics, ctx, module, optimizer, scheduler, progress, best.state, logger.pending)
        if epoch + 1 < spec.epochs:
            logger.metrics(times.metrics(logger.seconds), epoch)
    return _finish(module, splits, ctx, progress, best, logger, times)


def _evaluate_epoch(module, dataset, ctx: Context, epoch: int, progress: Progress, metrics, best: Best) -> None:
    start = time.perf_counter()
    results, embeddings = evaluate_split(module, dataset, ctx)
    split = ctx.spec.selection_split
    if ctx.rank == 0:
        metrics.update(tracking.evaluation_metrics(split, results))
        score = selection_score(results, ctx.spec.evaluation.selection_metric)
    else:
        score = None
    score = _broadcast(score, ctx)
    metrics[f"{split}/eval_seconds"] = time.perf_counter() - start
    progress.last_score = score
    if score > progress.best_score:
        progress.best_score, progress.best_epoch = score, epoch
        progress.best_metrics = {k: v for k, v in metrics.items() if k.startswith(f"{split}/")}
        best.state, best.embeddings, best.fresh = _snapshot(module), embeddings, True


def _report(metrics, ctx: Context, module, optimizer, scheduler, progress, best_state, pending) -> None:
    import ray.train

    if ctx.rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(folder, module, optimizer, scheduler, progress, best_state,
                        build.model_config(ctx.spec, unwrap_model(module).model))
        tracking_buffer.write_pending(folder, pending)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _finish(module, splits, ctx: Context, progress: Progress, best: Best, logger, times: EpochTimes | None,
            ) -> dict[str, Any]:
    """Evaluate the best weights on the test split (unless the best epoch was already scored on test in this
    process) and log the final metrics and artifacts; this final phase ends the last epoch's ``times``."""
    import ray.train

    times = times if times is not None else EpochTimes.start(logger.seconds)  # restored after the last epoch
    eval_start = time.perf_counter()
    if best.state is not None:
        unwrapped = unwrap_model(module)
        unwrapped.model.load_state_dict(best.state["model"])
        unwrapped.loss.load_state_dict(best.state["loss"])
    if ctx.spec.selection_split == "test" and best.fresh:
        final = {k.replace("test/", "best/test/", 1): v for k, v in progress.best_metrics.items()
                 if not k.endswith("eval_seconds")}
        test_embeddings = best.embeddings
    else:
        test_results, test_embeddings = evaluate_split(module, splits.test, ctx)
        final = {} if ctx.rank else {k.replace("test/", "best/test/", 1): v
                                     for k, v in tracking.evaluation_metrics("test", test_results).items()}
    final.update(part_correspondence(splits.test, test_embeddings, ctx, "best/test", logger))
    times.eval += time.perf_counter() - eval_start
    final["best/epoch"] = progress.best_epoch
    final["best/selection_score"] = progress.best_score
    final["selection_score"] = progress.best_score
    if ctx.skipped is not None and ctx.rank == 0:
        final.update(ctx.skipped.metrics())
    logger.final(final, module, splits, progress.best_epoch, test_embeddings)
    times.explanations += logger.explain_seconds
    logger.metrics(times.metrics(logger.seconds), max(ctx.spec.epochs - 1, 0))
    ray.train.report(final, checkpoint=None)
    if ctx.rank != 0:
        return {"status": "ok"}
    if logger.unlogged:  # trained to the end, but MLflow could not be used: the driver says what is missing
        return {"status": "unlogged", "unlogged": logger.unlogged, "pending": len(logger.pending),
                "tracking_error": logger.run.error, **final}
    return {"status": "ok", **final}
