"""Trace the first training steps of a spec's trial: per-step loss, gradient and weights, saved for comparison.

Runs the worker's step (:class:`diml.engine.TrainModule`, the spec's model, loss, optimizer and class-balanced
batches) in this process on one CPU thread, without Ray: one process holds the whole global batch
(``batch.size``), so BatchNorm sees all of it (a 2-worker trial's ranks each see half). The point is to compare two
code versions (or two settings) step by step, not to reproduce a trial's numbers.

    python benchmarks/step_trace.py specs/quickstart.yaml --set loss.similarity=diml --steps 40 --out new.pt
    # in a checkout of another commit (the same command, its own code):
    python benchmarks/step_trace.py specs/quickstart.yaml --set loss.similarity=diml --steps 40 --out old.pt
    python benchmarks/step_trace.py --compare old.pt new.pt

A trace holds every step's gradient and weights (float32): about 90 MB per step for the quickstart's resnet18
(30 steps: 2.6 GB). ``--perturb 1e-7`` multiplies every initial weight by ``1 + 1e-7 * N(0, 1)`` (about one float32 rounding): the
drift it causes is the yardstick for "float noise amplified by training".
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.getcwd())  # the checkout this runs in, before any installed copy

import torch  # noqa: E402


def trace(spec_path: str, sets: list[str], steps: int, perturb: float, grid_index: int) -> dict:
    from diml.engine import TrainModule
    from pipeline.launch.study import build_study, load_spec_file
    from pipeline.trial import build
    from pipeline.trial.worker import seed_everything

    torch.set_num_threads(1)
    study = build_study(load_spec_file(spec_path), source=spec_path, sets=sets, check_paths=True)
    spec = study.trials[grid_index].spec
    seed_everything(spec.seed)
    splits = build.build_splits(spec)
    model = build.build_model(spec)
    loss = build.build_loss(spec, splits.train.num_classes)
    module = TrainModule(model, loss)
    if perturb:
        generator = torch.Generator().manual_seed(12345)
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(1 + perturb * torch.randn(p.shape, generator=generator))
    optimizer = build.build_optimizer(spec, module.model, module.loss)
    sampler = build.build_sampler(spec, splits.train.labels, rank=0, world_size=1)
    loader = torch.utils.data.DataLoader(splits.train, batch_sampler=sampler, num_workers=0)
    losses, grad_norms, grads, weights = [], [], [], []
    epoch = 0
    while len(losses) < steps:
        seed_everything(spec.seed * 100003 + epoch * 101)
        sampler.set_epoch(epoch)
        for images, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            value = module(images, labels)
            value.backward()
            flat = torch.cat([p.grad.reshape(-1) for p in module.parameters() if p.grad is not None])
            losses.append(float(value.detach()))
            grad_norms.append(float(flat.norm()))
            grads.append(flat.clone())
            optimizer.step()
            weights.append(torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone())
            if len(losses) == steps:
                break
        epoch += 1
    return {"label": study.trials[grid_index].label, "losses": losses, "grad_norms": grad_norms,
            "grads": torch.stack(grads), "weights": torch.stack(weights)}


def compare(a: dict, b: dict) -> str:
    rows = [f"{'step':>4} {'loss a':>12} {'loss b':>12} {'|dloss|/loss':>12} {'|dgrad|/|grad|':>14} "
            f"{'|dw|/|w|':>10}"]
    for k in range(min(len(a["losses"]), len(b["losses"]))):
        la, lb = a["losses"][k], b["losses"][k]
        dg = float((a["grads"][k] - b["grads"][k]).norm() / a["grads"][k].norm())
        dw = float((a["weights"][k] - b["weights"][k]).norm() / a["weights"][k].norm())
        rows.append(f"{k:>4} {la:>12.8f} {lb:>12.8f} {abs(la - lb) / abs(la):>12.3e} {dg:>14.3e} {dw:>10.3e}")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--trial", type=int, default=0, help="index of the grid point (default 0)")
    parser.add_argument("--perturb", type=float, default=0.0)
    parser.add_argument("--out")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(*(torch.load(p, weights_only=False) for p in args.compare)))
        return 0
    if not args.spec or not args.out:
        parser.error("give a spec and --out (or --compare A B)")
    result = trace(args.spec, args.sets, args.steps, args.perturb, args.trial)
    torch.save(result, args.out)
    print(f"{result['label']}: {len(result['losses'])} steps, last loss {result['losses'][-1]:.6f} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
