"""MLflow logging of a trial from its rank-0 Train worker (one process per trial), timed.

A no-op on the other ranks or without a run. At the start: the experiment's runs view (:func:`tracking.ensure_runs_view`),
the dataset splits as MLflow dataset inputs, and MLflow's system-metrics monitor (CPU, memory, disk, network; GPU
with ``pynvml``) on this worker's host until the end. Time spent in MLflow calls is added up and logged at the end as
``overhead/tracking_s``; the explanation figures' time as ``overhead/explanations_s``.

A tracking store that cannot be used never stops training (:class:`pipeline.tracking_buffer.BufferedRun`): metrics
and tags are kept (in each Ray checkpoint too) and logged later. The final step (best metrics, model, artifacts)
is logged only once the kept calls are; each of its parts is marked done on the run (tag :data:`TAG_FINAL`), so that
the next attempt of the trial (``--resume`` from its last checkpoint) logs just the missing parts, once.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from typing import Any

from diml.distributed import unwrap_model
from pipeline import logged_model, provenance, tracking
from pipeline.tracking_buffer import BufferedRun
from pipeline.trial import build

SPLIT_CONTEXT = {"train": "training", "val": "validation", "test": "testing"}  # mlflow.data.context values
TAG_FINAL = "final_logged"  # the parts of the final step already logged: metrics, model, artifacts
FINAL_PARTS = ("metrics", "model", "artifacts")


class TrialLogger:
    """MLflow logging from rank 0 only; ``ctx`` is the worker's context (spec, rank, run id, tracking URI)."""

    def __init__(self, ctx, splits=None, pending: list[dict] = ()):
        self.ctx = ctx
        self.seconds = 0.0
        self.explain_seconds = 0.0  # the explanation figures' time, set by final()
        self.monitor = None
        self.unlogged: list[str] = []  # the parts of the final step that could not be logged
        self.active = ctx.rank == 0 and ctx.run_id is not None and ctx.tracking_uri is not None
        self.run = BufferedRun(ctx.tracking_uri, ctx.run_id, pending) if self.active else None
        if self.active:
            import socket

            import ray

            self.tags({"ray_node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
                       "workers": str(ctx.world_size), **provenance.environment(ctx.device)})
            with self._timed():
                uri, run_id = ctx.tracking_uri, ctx.run_id
                self.run.call("the runs view", lambda: tracking.ensure_runs_view(
                    uri, tracking.client(uri).get_run(run_id).info.experiment_id, max(ctx.spec.evaluation.depths)))
                if splits is not None:
                    self.run.log_inputs(tracking.dataset_inputs(ctx.spec.data.dataset, ctx.spec.data.root,
                                                                {name: getattr(splits, name) for name in SPLIT_CONTEXT},
                                                                SPLIT_CONTEXT))
                if self.run.flush():
                    self.monitor = tracking.start_system_metrics(uri, run_id)

    @property
    def pending(self) -> list[dict]:
        """The MLflow calls not logged yet (kept in each Ray checkpoint: ``tracking_buffer.write_pending``)."""
        return self.run.pending if self.active else []

    @contextlib.contextmanager
    def _timed(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def tags(self, tags: dict[str, str]) -> None:
        if self.active and tags:
            with self._timed():
                self.run.set_tags(tags)

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.active:
            values = {k: float(v) for k, v in metrics.items() if k != "epoch" and math.isfinite(float(v))}
            with self._timed():
                self.run.log_metrics(values, step)

    def failed(self, exc: Exception, epoch: int) -> dict[str, Any]:
        """Record a trial that cannot succeed (NaN loss) and tell the driver, which marks it failed."""
        import ray.train

        from pipeline.trial.failures import one_line

        message = one_line(exc)
        self.tags({"failure": message, "failure.epoch": str(epoch)})
        self._stop_monitor()
        ray.train.report({"failed": 1, "failure": message, "failure_epoch": epoch}, checkpoint=None)
        return {"status": "failed", "error": message, "epoch": epoch}

    def final(self, final: dict[str, float], module, splits, best_epoch: int, embeddings) -> None:
        """Final metrics, then the best checkpoint and model, then the test embeddings (Parquet) and explanation
        figures, then the overheads; each part once (:data:`TAG_FINAL`). The parts that could not be logged are
        left in ``unlogged``."""
        if not self.active:
            return
        uri, run_id = self.ctx.tracking_uri, self.ctx.run_id
        wanted = [p for p in FINAL_PARTS if p != "model" or self.ctx.log_checkpoint]
        done: set[str] = set()
        if not self.run.call("the run's state", lambda: done.update(
                tracking.client(uri).get_run(run_id).data.tags.get(TAG_FINAL, "").split(","))):
            self._stop_monitor()
            self.unlogged = wanted
            return

        def mark(part: str) -> dict[str, str]:
            return {TAG_FINAL: ",".join(p for p in FINAL_PARTS if p in done or p == part)}

        step = max(best_epoch, 0)
        parts = {"metrics": lambda: self._timed_call(tracking.log_metrics, uri, run_id, final, step,
                                                     tags=mark("metrics")),
                 "model": lambda: self._log_model(module, best_epoch, step, mark("model")),
                 "artifacts": lambda: self._log_artifacts(module, splits, best_epoch, step, embeddings,
                                                          mark("artifacts"))}
        for part in wanted:
            if part not in done and not self.run.call(f"the final {part}", parts[part]):
                self.unlogged = [p for p in wanted if p not in done]
                break
            done.add(part)
        self._stop_monitor()

    def _timed_call(self, fn, *args, **kwargs):
        with self._timed():
            return fn(*args, **kwargs)

    def _log_model(self, module, best_epoch: int, step: int, tags: dict[str, str]) -> None:
        """The best weights as ``checkpoint/best_model.pt`` and as the MLflow model."""
        from diml.models import save_checkpoint

        spec, model = self.ctx.spec, unwrap_model(module).model
        with tempfile.TemporaryDirectory() as folder, self._timed():
            artifact_dir, name = os.path.split(tracking.CHECKPOINT_ARTIFACT)
            path = os.path.join(folder, name)
            config = build.model_config(spec, model)
            save_checkpoint(path, model.state_dict(), config, loss_state=unwrap_model(module).loss.state_dict(),
                            epoch=best_epoch, spec=spec.model_dump(mode="json"))
            tracking.log_artifacts(self.ctx.tracking_uri, self.ctx.run_id, [(path, artifact_dir)])
            logged_model.log_model(self.ctx.tracking_uri, self.ctx.run_id, model, config, step=step)
            tracking.set_tags(self.ctx.tracking_uri, self.ctx.run_id, tags)

    def _log_artifacts(self, module, splits, best_epoch: int, step: int, embeddings, tags: dict[str, str]) -> None:
        """Test embeddings (Parquet) and explanation figures, then the overheads (tracking time, figures' time)."""
        spec = self.ctx.spec
        with tempfile.TemporaryDirectory() as folder:
            logged = []
            if embeddings is not None and spec.evaluation.save_embeddings:
                from diml.evaluation import save_embeddings

                path = os.path.join(folder, "test_embeddings.parquet")
                save_embeddings(path, embeddings.global_emb, embeddings.labels, embeddings.local_emb,
                                metadata={"split": "test", "epoch": best_epoch, "dataset": spec.data.dataset})
                logged.append((path, "embeddings"))
            explain_seconds = 0.0
            if embeddings is not None and spec.evaluation.explanations:
                start = time.perf_counter()
                kept = embeddings.metadata.get("indices")  # the images read (diml.evaluation.drop_unreadable)
                dataset = splits.test if kept is None else splits.test.subset(kept)
                logged.append((self._explanations(unwrap_model(module).model, dataset, embeddings, folder),
                               "explanations"))
                explain_seconds = time.perf_counter() - start
                self.explain_seconds = explain_seconds
            self._timed_call(tracking.log_artifacts, self.ctx.tracking_uri, self.ctx.run_id, logged)
        self._stop_monitor()
        tracking.log_metrics(self.ctx.tracking_uri, self.ctx.run_id,
                             {"overhead/tracking_s": self.seconds, "overhead/explanations_s": explain_seconds}, step,
                             tags=tags)

    def _stop_monitor(self) -> None:
        if self.monitor is not None:
            with self._timed():
                self.monitor.finish()
            self.monitor = None

    def _explanations(self, model, dataset, embeddings, folder: str) -> str:
        from diml.explain import write_trial_explanations
        from diml.ot import OTOptions

        spec = self.ctx.spec
        out = os.path.join(folder, "explanations")
        was_training = model.training
        model.eval()
        # the evaluation's eps and marginals with the library's solver defaults, as the figures have always used
        ot = OTOptions(eps=spec.evaluation.ot.eps, marginals=spec.evaluation.ot.marginals)
        write_trial_explanations(model, dataset, embeddings, out, n_queries=spec.evaluation.explanations,
                                 seed=spec.seed, depth=max(spec.evaluation.depths), ot=ot, device=self.ctx.device,
                                 resize_ratio=spec.data.augmentation.eval_resize_ratio)
        model.train(was_training)
        return out
