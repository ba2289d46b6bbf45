"""MLflow logging of a trial from its rank-0 Train worker (one process per trial), timed.

A no-op on the other ranks or without a run. At the start: the experiment's runs view (:func:`tracking.ensure_runs_view`),
the dataset splits as MLflow dataset inputs, and MLflow's system-metrics monitor (CPU, memory, disk, network; GPU
with ``pynvml``) on this worker's host until the end. Time spent in MLflow calls is added up and logged at the end as
``overhead/tracking_s``; the explanation figures' time as ``overhead/explanations_s``.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from typing import Any

from diml.distributed import unwrap_model
from pipeline import logged_model, tracking
from pipeline.trial import build

SPLIT_CONTEXT = {"train": "training", "val": "validation", "test": "testing"}  # mlflow.data.context values


class TrialLogger:
    """MLflow logging from rank 0 only; ``ctx`` is the worker's context (spec, rank, run id, tracking URI)."""

    def __init__(self, ctx, splits=None):
        self.ctx = ctx
        self.seconds = 0.0
        self.explain_seconds = 0.0  # the explanation figures' time, set by final()
        self.monitor = None
        self.active = ctx.rank == 0 and ctx.run_id is not None and ctx.tracking_uri is not None
        if self.active:
            import socket

            import ray

            self.tags({"ray_node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
                       "workers": str(ctx.world_size)})
            with self._timed():
                uri, run_id = ctx.tracking_uri, ctx.run_id
                experiment_id = tracking.client(uri).get_run(run_id).info.experiment_id
                tracking.ensure_runs_view(uri, experiment_id, max(ctx.spec.evaluation.depths))
                if splits is not None:
                    tracking.log_datasets(uri, run_id, ctx.spec.data.dataset, ctx.spec.data.root,
                                          {name: getattr(splits, name) for name in SPLIT_CONTEXT},
                                          SPLIT_CONTEXT)
                self.monitor = tracking.start_system_metrics(uri, run_id)

    @contextlib.contextmanager
    def _timed(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def tags(self, tags: dict[str, str]) -> None:
        if self.active:
            with self._timed():
                tracking.set_tags(self.ctx.tracking_uri, self.ctx.run_id, tags)

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.active:
            values = {k: float(v) for k, v in metrics.items() if k != "epoch" and math.isfinite(float(v))}
            with self._timed():
                tracking.log_metrics(self.ctx.tracking_uri, self.ctx.run_id, values, step)

    def failed(self, exc: Exception, epoch: int) -> dict[str, Any]:
        """Record a trial that cannot succeed (NaN loss) and tell the driver, which marks it failed."""
        import ray.train

        self.tags({"failure": str(exc), "failure.epoch": str(epoch)})
        self._stop_monitor()
        ray.train.report({"failed": 1, "failure": str(exc), "failure_epoch": epoch}, checkpoint=None)
        return {"status": "failed", "error": str(exc), "epoch": epoch}

    def final(self, final: dict[str, float], module, splits, best_epoch: int, embeddings) -> None:
        """Final metrics, then the artifacts: best checkpoint, test embeddings (Parquet), explanation figures."""
        if not self.active:
            return
        spec = self.ctx.spec
        step = max(best_epoch, 0)
        self.metrics(final, step)
        model = unwrap_model(module).model
        with tempfile.TemporaryDirectory() as folder:
            logged = []
            if self.ctx.log_checkpoint:
                from diml.models import save_checkpoint

                artifact_dir, name = os.path.split(tracking.CHECKPOINT_ARTIFACT)
                path = os.path.join(folder, name)
                config = build.model_config(spec, model)
                save_checkpoint(path, model.state_dict(), config, loss_state=unwrap_model(module).loss.state_dict(),
                                epoch=best_epoch, spec=spec.model_dump(mode="json"))
                logged.append((path, artifact_dir))
                with self._timed():
                    logged_model.log_model(self.ctx.tracking_uri, self.ctx.run_id, model, config, step=step)
            if embeddings is not None and spec.evaluation.save_embeddings:
                from diml.evaluation import save_embeddings

                path = os.path.join(folder, "test_embeddings.parquet")
                save_embeddings(path, embeddings.global_emb, embeddings.labels, embeddings.local_emb,
                                metadata={"split": "test", "epoch": best_epoch, "dataset": spec.data.dataset})
                logged.append((path, "embeddings"))
            explain_seconds = 0.0
            if embeddings is not None and spec.evaluation.explanations:
                start = time.perf_counter()
                logged.append((self._explanations(model, splits.test, embeddings, folder), "explanations"))
                explain_seconds = time.perf_counter() - start
                self.explain_seconds = explain_seconds
            with self._timed():
                tracking.log_artifacts(self.ctx.tracking_uri, self.ctx.run_id, logged)
        self._stop_monitor()
        self.metrics({"overhead/tracking_s": self.seconds, "overhead/explanations_s": explain_seconds}, step)

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
                                 seed=spec.seed, depth=max(spec.evaluation.depths), ot=ot, device=self.ctx.device)
        model.train(was_training)
        return out
