"""GPU check of the input path (issue 26): does the loader keep the training step busy? One short run, no Ray.

CUB-like JPEGs (``bench_loader.cub_like_image``: 500 x 375, quality 90) feed ``diml.engine.train_epoch`` of
resnet50 at 224 px, batch 112, bf16 autocast + channels-last (a global margin loss), through a DataLoader with
``--workers`` loader processes and ``pin_memory``, for each input path: ``float`` (today's per-image float
transforms), ``uint8`` (uint8 crops, copied ahead on a side stream and normalised on the GPU), ``uint8-cached``
(the same from the decoded cache). Per case and round: images/s, the step's own rate (images / step seconds from
CUDA events) and the GPU-busy share of the epoch (step seconds / epoch seconds, ``diml.engine.StepClock``).
Rounds are interleaved. Rows as JSON on stdout's last line and in ``$OUT/gpu_input.json``.

    python benchmarks/gpu_input.py [--workers 6] [--batches 24] [--rounds 2] [--images 600] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_loader import write_jpegs  # noqa: E402

from diml.data import Augmentation, train_transform  # noqa: E402
from diml.data.device_input import DeviceAugment, device_batches  # noqa: E402
from diml.data.files import make_file_split  # noqa: E402
from diml.data.pixel_cache import cache_pixels  # noqa: E402
from diml.data.pixels import Uint8TrainTransform  # noqa: E402
from diml.engine import TrainModule, train_epoch  # noqa: E402
from diml.losses import build_loss  # noqa: E402
from diml.models import build_model  # noqa: E402
from diml.ot import TRIAL_TRAINING_OT  # noqa: E402

CASES = ("float", "uint8", "uint8-cached")


def make_split(folder, relpaths, case: str, size: int):
    transform = train_transform(size, augmentation=Augmentation()) if case == "float" else Uint8TrainTransform(size)
    split = make_file_split(folder, relpaths, [p.split("/")[0] for p in relpaths],
                            {"000.class": "a", "001.class": "b"}, transform, None, skip_bad_images=False,
                            split_name=case)
    if case == "uint8-cached":
        cache_pixels(split, 64e9)
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=6, help="loader workers (the paper specs' data.loader_workers)")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--batches", type=int, default=24, help="timed batches per case and round")
    parser.add_argument("--batch", type=int, default=112)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    device = torch.device(args.device)
    cases = [c for c in args.cases.split(",") if c]
    torch.manual_seed(0)
    model = build_model(args.backbone, embed_dim=128, grid=4, frozen_bn=True).to(device)
    model = model.to(memory_format=torch.channels_last)
    loss = build_loss("margin", {}, similarity="global", num_classes=args.batch // 2, embed_dim=128,
                      miner="distance", ot=TRIAL_TRAINING_OT).to(device)
    module = TrainModule(model, loss, amp_dtype=torch.bfloat16 if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-5)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        start = time.perf_counter()
        relpaths = write_jpegs(folder, args.images)
        print(f"{len(relpaths)} JPEGs written in {time.perf_counter() - start:.1f} s", flush=True)
        loaders = {}
        for case in cases:
            start = time.perf_counter()
            split = make_split(folder, relpaths, case, args.size)
            # labels: two per class in a batch (the margin loss needs positives); the sampler draws with replacement
            sampler = torch.utils.data.RandomSampler(split, replacement=True, num_samples=10**9)
            loader = torch.utils.data.DataLoader(split, batch_size=args.batch, sampler=sampler,
                                                 num_workers=args.workers, pin_memory=device.type == "cuda",
                                                 persistent_workers=args.workers > 0, drop_last=True)
            loaders[case] = iter(loader)
            print(f"{case}: ready in {time.perf_counter() - start:.1f} s", flush=True)
        augment = DeviceAugment(channels_last=True)
        fixed = torch.arange(args.batch // 2).repeat_interleave(2)

        def batches(case: str):
            for _ in range(args.batches):
                images, _ = next(loaders[case])
                yield images, fixed

        for case in cases:  # warm-up: workers started, cuDNN autotuned
            train_epoch(module, device_batches(batches(case), device, augment), optimizer, epoch=0, device=device,
                        channels_last=True)
        for round_ in range(args.rounds):
            for case in cases:
                stats = train_epoch(module, device_batches(batches(case), device, augment), optimizer,
                                    epoch=round_, device=device, channels_last=True)
                row = {"bench": "gpu_input", "case": case, "workers": args.workers, "round": round_,
                       "images_per_s": stats.images / stats.seconds,
                       "step_images_per_s": stats.images / max(stats.step_seconds, 1e-9),
                       "gpu_busy": stats.step_seconds / stats.seconds, "epoch_s": stats.seconds,
                       "train_step_s": stats.step_seconds, "data_wait_s": stats.wait_seconds}
                rows.append(row)
                print(f"round {round_} {case:13s} {row['images_per_s']:7.0f} img/s, step alone "
                      f"{row['step_images_per_s']:7.0f} img/s, GPU busy {100 * row['gpu_busy']:5.1f} %, "
                      f"wait {stats.wait_seconds:.2f} s of {stats.seconds:.2f} s", flush=True)
    for case in cases:
        mine = [r for r in rows if r["case"] == case]
        print(f"{case:13s} median {statistics.median(r['images_per_s'] for r in mine):7.0f} img/s, GPU busy "
              f"{100 * statistics.median(r['gpu_busy'] for r in mine):5.1f} %")
    text = json.dumps(rows)
    if os.environ.get("OUT"):
        pathlib.Path(os.environ["OUT"], "gpu_input.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
