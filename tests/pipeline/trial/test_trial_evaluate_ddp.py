"""evaluate_split with 2 gloo processes whose BatchNorm statistics differ (as DDP leaves them after the last training
step): rank 0 scores the embeddings of rank 0's model, the one it checkpoints and logs, as one process does."""

import pytest
import torch
import torch.distributed as dist

from ddp_support import init_gloo, run_ranks
from e2e_support import TINY_SPEC


def _spec():
    from pipeline.specs import RunSpec

    return RunSpec.model_validate({k: v for k, v in TINY_SPEC.items() if k not in ("grid", "launch")})


def _model():
    from diml.models import build_model

    torch.manual_seed(0)
    return build_model("resnet18", embed_dim=16, grid=2)


class _Module(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model


def rank_worker(rank, store, folder):
    from pipeline.trial import build
    from pipeline.trial.worker import Context, evaluate_split

    init_gloo(rank, store, world_size=2)
    try:
        spec, model = _spec(), _model()
        if rank == 1:  # its own running statistics, far from rank 0's
            for name, buffer in model.named_buffers():
                if name.endswith("running_mean"):
                    buffer.add_(3.0)
        ctx = Context(spec=spec, rank=rank, world_size=2, device=torch.device("cpu"), run_id=None, tracking_uri=None)
        results, _ = evaluate_split(_Module(model), build.build_splits(spec).test, ctx)
        if rank == 0:
            torch.save({"results": results, "state": model.state_dict()}, f"{folder}/rank0.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_score_rank_zeros_model(tmp_path):
    from diml.evaluation import evaluate, extract_embeddings
    from pipeline.trial import build

    run_ranks(rank_worker, tmp_path)
    saved = torch.load(tmp_path / "rank0.pt", weights_only=False)
    spec, model = _spec(), _model()
    model.load_state_dict(saved["state"])
    model.eval()
    alone = extract_embeddings(model, build.build_splits(spec).test, batch_size=16, device="cpu")
    expected = evaluate(alone.global_emb, alone.labels, alone.local_emb, **build.evaluation_options(spec))
    # rank metrics from embeddings of other batches and thread counts (float32, a few ulp apart): equal as long as no
    # near-tie reorders, and this test set has none closer than 3e-5 between a positive and a negative
    for ranking in ("global", "diml@3", "diml@5"):
        for metric in ("R@1", "RP", "MAP@R"):
            assert saved["results"][ranking][metric] == pytest.approx(expected[ranking][metric], abs=1e-6), \
                (ranking, metric)
