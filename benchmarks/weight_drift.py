"""How far training moved each trial's weights from its initialisation (docs/FIDELITY.md, the real-digits run).

    DIML_DATA=/tmp/r18 python benchmarks/weight_drift.py SPEC STORAGE_PATH

For every trial of SPEC's grid, rebuilds the untrained model exactly as the Train worker does (same seed, same
order of RNG use), reads the trial's last checkpoint (``STORAGE_PATH/train-*_<index>/checkpoint_*/state.pt``) and
its best one (``best_so_far.pt``), and prints ``||w - w0|| / ||w0||`` over the conv and linear weights (BatchNorm
statistics and biases left out). The same distance to the init of another seed (about sqrt(2) for independent
inits) checks that the rebuilt init is the trial's. One launch per storage path (trials are found by grid index).
"""

from __future__ import annotations

import argparse
import glob

import torch

from pipeline.launch.study import build_study, load_spec_file
from pipeline.trial import build
from pipeline.trial.worker import seed_everything


def init_weights(spec) -> dict[str, torch.Tensor]:
    seed_everything(spec.seed)
    build.build_splits(spec)  # as the worker: the splits are built before the model
    return build.build_model(spec).state_dict()


def relative_distance(trained: dict, init: dict) -> float:
    keys = [k for k, v in init.items() if v.is_floating_point() and v.dim() > 1]
    num = sum(((trained[k].float() - init[k].float()) ** 2).sum() for k in keys) ** 0.5
    return float(num / sum((init[k].float() ** 2).sum() for k in keys) ** 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("storage_path")
    args = parser.parse_args()
    study = build_study(load_spec_file(args.spec), source=args.spec)
    inits: dict[int, dict] = {}
    for trial in study.trials:
        spec = trial.spec
        states = sorted(glob.glob(f"{args.storage_path}/train-*_{trial.index:05d}/checkpoint_*/state.pt"))
        if not states:
            print(f"{trial.label:28s} no checkpoint under {args.storage_path}")
            continue
        for seed in (spec.seed, spec.seed + 1):
            if seed not in inits:
                inits[seed] = init_weights(spec.model_copy(update={"seed": seed}))
        last = torch.load(states[-1], map_location="cpu", weights_only=False)["model"]
        best = torch.load(states[-1].replace("state.pt", "best_so_far.pt"), map_location="cpu", weights_only=False)
        print(f"{trial.label:28s} last {relative_distance(last, inits[spec.seed]):.4f}  best (epoch {best['epoch']}) "
              f"{relative_distance(best['model'], inits[spec.seed]):.4f}  last vs seed {spec.seed + 1}'s init "
              f"{relative_distance(last, inits[spec.seed + 1]):.3f}", flush=True)


if __name__ == "__main__":
    main()
