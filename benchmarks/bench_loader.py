"""Training input per loader worker (issue 26): today's float transforms vs the uint8 path, side by side in one run.

CUB-like JPEGs are generated first (500 x 375, quality 90, ~46 KB: multi-octave smooth noise, filled shapes, a
little blur and grain, i.e. natural-image statistics rather than flat colour).  Each case is a DataLoader with ONE
worker over the same files with the same augmentation (the authors': RandomResizedCrop(224, 0.08-1, 3/4-4/3) +
flip), timed on the batches after a warm-up batch; the cases are interleaved, repeat after repeat, and the table
gives the median and the quartiles of images/s:

- ``float``: today's path, ``train_transform`` (Pillow decode, crop + resize, flip, ``ToTensor``, ``Normalize``);
- ``uint8 pil``: ``Uint8TrainTransform`` with Pillow decoding; ``uint8 simplejpeg``: with simplejpeg (the default
  when installed; the same pixels); ``uint8 simplejpeg-fast``: fast DCT and upsampling (other pixels: not used,
  measured only); ``uint8 cached``: from the decoded cache (``diml.data.pixel_cache``), steady state, with the
  cache's one-time build time printed separately.

``--epochs``: a training epoch end to end on the CPU (resnet18, 64 px, batch 32, margin loss) with 0, 1 and 2 loader
workers, float vs uint8 (the uint8 path normalises in the main process), interleaved.

    python benchmarks/bench_loader.py [--repeats 7] [--batches 8] [--size 224] [--epochs] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from diml.data import Augmentation, train_transform
from diml.data.files import make_file_split
from diml.data.pixels import Uint8TrainTransform


def cub_like_image(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    """A natural-looking RGB image: 1/f-like smooth noise over five octaves, 3-7 filled shapes, a slight blur and
    sensor-like grain (what makes a 500 x 375 JPEG at quality 90 weigh ~45 KB, as CUB's do)."""
    canvas = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((4, 0.5), (8, 0.25), (16, 0.14), (32, 0.08), (64, 0.05)):
        coarse = rng.normal(0, 1, size=(max(2, height * cells // width), cells, 3)).astype(np.float32)
        canvas += amplitude * np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize(
            (width, height), Image.Resampling.BICUBIC)) for c in range(3)], -1)
    canvas = (canvas - canvas.min()) / (canvas.max() - canvas.min())
    image = Image.fromarray((canvas * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        box = (x0, y0, x0 + int(rng.integers(30, 200)), y0 + int(rng.integers(30, 160)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1.2))).astype(np.float32)
    pixels += rng.normal(0, 6, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_jpegs(folder: pathlib.Path, count: int, *, seed: int = 0, quality: int = 90) -> list[str]:
    """``count`` CUB-like JPEGs under ``folder`` in two class folders; returns their relative paths."""
    rng = np.random.default_rng(seed)
    relpaths = []
    for index in range(count):
        relpath = f"{index % 2:03d}.class/{index:05d}.jpg"
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        cub_like_image(rng).save(folder / relpath, quality=quality)
        relpaths.append(relpath)
    return relpaths


def _decode_fast(path: pathlib.Path) -> np.ndarray:
    """simplejpeg with fast DCT and upsampling (other pixels than Pillow's: measured, never used)."""
    import simplejpeg

    return simplejpeg.decode_jpeg(path.read_bytes(), colorspace="RGB", fastdct=True, fastupsample=True)


def _decode_pillow(path: pathlib.Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def build_split(folder, relpaths, case: str, size: int):
    """The split of ``case`` (its transform and decoder)."""
    import diml.data.pixels as pixels

    aug = Augmentation()
    if case == "float":
        transform = train_transform(size, augmentation=aug)
    else:
        transform = Uint8TrainTransform(size, augmentation=aug)
    split = make_file_split(folder, relpaths, [p.split("/")[0] for p in relpaths], {"000.class": "a", "001.class": "b"},
                            transform, None, skip_bad_images=False, split_name=case)
    decoder = {"uint8 simplejpeg-fast": _decode_fast, "uint8 pil": _decode_pillow}.get(case)
    if decoder is not None:  # an instance attribute: DataLoader workers are forked, nothing is pickled
        split._decode_pixels = lambda index: decoder(split.path(index))
    if case != "uint8 pil" and case.startswith("uint8") and pixels.simplejpeg is None:
        raise SystemExit("simplejpeg is not installed: pip install simplejpeg (or drop its cases with --cases)")
    return split


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (``/proc/PID/stat``)."""
    import os

    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loader_rate(split, batches: int, batch_size: int) -> tuple[float, float]:
    """``(images/s, images per CPU second of the worker)`` of ``batches`` batches of a fresh one-worker DataLoader,
    after one warm-up batch. The second is what the worker would deliver with a core to itself (this machine is
    shared: wall rates move with the load, CPU time much less)."""
    loader = torch.utils.data.DataLoader(split, batch_size=batch_size, shuffle=True, num_workers=1,
                                         persistent_workers=True)
    iterator = iter(loader)
    next(iterator)
    pid = iterator._workers[0].pid  # noqa: SLF001 - the only handle on the worker process
    cpu, start = _cpu_seconds(pid), time.perf_counter()
    images = sum(next(iterator)[1].shape[0] for _ in range(batches))
    rate, cpu_rate = images / (time.perf_counter() - start), images / max(_cpu_seconds(pid) - cpu, 1e-9)
    del iterator, loader
    return rate, cpu_rate


def summary(values: list[float]) -> dict:
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": quartiles[0], "q3": quartiles[2], "runs": len(values)}


def bench_loader(args, folder, relpaths) -> list[dict]:
    from diml.data.pixel_cache import cache_pixels

    splits = {case: build_split(folder, relpaths, case, args.size) for case in args.cases}
    build_s = None
    if "uint8 cached" in splits:
        start = time.perf_counter()
        cache = cache_pixels(splits["uint8 cached"], 64e9, threads=1)
        build_s = time.perf_counter() - start
        print(f"decoded cache: {len(cache)} images, {cache.nbytes / 1e6:.0f} MB, built in {build_s:.2f} s "
              f"(1 thread, {len(cache) / build_s:.0f} img/s)")
    rates = {case: [] for case in splits}
    cpu_rates = {case: [] for case in splits}
    needed = (args.batches + 1) * args.batch_size
    if needed > len(relpaths):
        raise SystemExit(f"--batches {args.batches} x --batch-size {args.batch_size} needs {needed} images: "
                         "raise --images")
    for repeat in range(args.repeats):
        for case, split in splits.items():
            rate, cpu_rate = loader_rate(split, args.batches, args.batch_size)
            rates[case].append(rate)
            cpu_rates[case].append(cpu_rate)
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{c} {r[-1]:.0f}" for c, r in rates.items()),
              flush=True)
    rows = []
    for case, values in rates.items():
        row = {"bench": "loader", "case": case, "size": args.size, "workers": 1, **summary(values),
               "images_per_s": values, "images_per_cpu_s": cpu_rates[case],
               "cpu_median": statistics.median(cpu_rates[case])}
        if "float" in rates:  # ratios within each repeat (the same minute of the host), then their median
            row["vs_float"] = summary([v / f for v, f in zip(values, rates["float"])])
            row["cpu_vs_float"] = statistics.median([v / f for v, f in zip(cpu_rates[case], cpu_rates["float"])])
        if case == "uint8 cached":
            row["cache_build_s"] = build_s
        rows.append(row)
    rows.append(device_step_row(args))
    return rows


def device_step_row(args, batch: int = 112) -> dict:
    """CPU cost per image of the main-process device step (flip + normalisation of a uint8 batch) vs the float
    path's per-image ToTensor + Normalize (done in the workers today)."""
    from torchvision.transforms import functional as F

    from diml.data.device_input import DeviceAugment
    from diml.models.backbones import IMAGENET_MEAN, IMAGENET_STD

    pixels = torch.randint(0, 256, (batch, args.size, args.size, 3), dtype=torch.uint8)
    flips = torch.rand(batch) < 0.5
    augment = DeviceAugment()
    batched, per_image = [], []
    for _ in range(args.repeats):
        start = time.thread_time()
        augment(pixels, flips)
        batched.append((time.thread_time() - start) / batch * 1e3)
        start = time.thread_time()
        for index in range(batch):
            F.normalize(F.to_tensor(pixels[index].numpy()), IMAGENET_MEAN, IMAGENET_STD)
        per_image.append((time.thread_time() - start) / batch * 1e3)
    return {"bench": "device_step_cpu", "size": args.size, "batched_ms_per_image": statistics.median(batched),
            "float_per_image_ms": statistics.median(per_image)}


def bench_epochs(args, folder, relpaths) -> list[dict]:
    """A training epoch end to end on the CPU, float vs uint8, 0 / 1 / 2 loader workers, interleaved."""
    from diml.data import ClassBalancedBatchSampler
    from diml.data.device_input import device_batches
    from diml.engine import TrainModule, train_epoch
    from diml.losses import build_loss
    from diml.models import build_model

    size, batch = 64, 32
    # 16 classes so that a 16 x 2 batch has distinct classes
    relabel = [f"{i % 16:03d}" for i in range(len(relpaths))]
    names = {c: c for c in sorted(set(relabel))}
    splits = {}
    for case in ("float", "uint8"):
        transform = train_transform(size) if case == "float" else Uint8TrainTransform(size)
        splits[case] = make_file_split(folder, relpaths, relabel, names, transform, None, skip_bad_images=False,
                                       split_name=case)
    results = {(case, w): [] for w in args.epoch_workers for case in splits}
    torch.manual_seed(0)
    model = build_model("resnet18", embed_dim=64, grid=4)
    module = TrainModule(model, build_loss("margin", {}, similarity="global", num_classes=16, embed_dim=64,
                                           miner="distance"))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-5)
    loaders = {}
    for (case, workers) in results:
        sampler = ClassBalancedBatchSampler(splits[case].labels, batch, 2, seed=0)
        loaders[(case, workers)] = (sampler, torch.utils.data.DataLoader(
            splits[case], batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0))
    for repeat in range(args.epoch_repeats + 1):  # the first round warms the workers up and is not kept
        for key, (sampler, loader) in loaders.items():
            sampler.set_epoch(repeat)
            batches = (b for i, b in enumerate(loader) if i < args.epoch_batches)
            stats = train_epoch(module, device_batches(batches, "cpu"), optimizer, epoch=repeat,
                                device=torch.device("cpu"))
            if repeat:
                results[key].append(stats.seconds)
        if repeat:
            print(f"epoch round {repeat}/{args.epoch_repeats}: "
                  + ", ".join(f"{c} w{w} {v[-1]:.2f}s" for (c, w), v in results.items()), flush=True)
    rows = [{"bench": "epoch_cpu", "case": case, "workers": workers, "batches": args.epoch_batches, "batch": batch,
             "size": size, **summary(values), "seconds": values} for (case, workers), values in results.items()]
    for row in rows:  # uint8 / float epoch time within each round (the same minute of the host)
        if row["case"] == "uint8":
            row["vs_float"] = summary([u / f for u, f in zip(row["seconds"], results[("float", row["workers"])])])
    return rows


def print_table(rows: list[dict]) -> None:
    print("\none loader worker: images/s (median, quartiles) | x float in the same repeat (median, quartiles) | "
          "images per worker CPU second (median) | x float")
    for row in rows:
        if row["bench"] == "loader":
            ratio = row.get("vs_float", {"median": 1.0, "q1": 1.0, "q3": 1.0})
            print(f"  {row['case']:24s} {row['median']:7.0f} ({row['q1']:.0f}-{row['q3']:.0f}) | "
                  f"{ratio['median']:.2f}x ({ratio['q1']:.2f}-{ratio['q3']:.2f}) | {row['cpu_median']:7.0f} | "
                  f"{row.get('cpu_vs_float', 1.0):.2f}x")
        elif row["bench"] == "device_step_cpu":
            print(f"  main-process device step on the CPU: {row['batched_ms_per_image']:.3f} ms/image batched "
                  f"(the float path's per-image ToTensor + Normalize in a worker: {row['float_per_image_ms']:.3f} ms)")
        elif row["bench"] == "epoch_cpu":
            ratio = row.get("vs_float")
            paired = f" | uint8 / float in the same round {ratio['median']:.2f} ({ratio['q1']:.2f}-{ratio['q3']:.2f})" \
                if ratio else ""
            print(f"  epoch ({row['batches']} x {row['batch']}, {row['size']} px) {row['case']:6s} "
                  f"{row['workers']} workers: {row['median']:.2f} s ({row['q1']:.2f}-{row['q3']:.2f}){paired}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cases", default="float,uint8 pil,uint8 simplejpeg,uint8 simplejpeg-fast,uint8 cached")
    parser.add_argument("--epochs", action="store_true", help="also time CPU training epochs, float vs uint8")
    parser.add_argument("--epoch-workers", default="0,1,2")
    parser.add_argument("--epoch-batches", type=int, default=6)
    parser.add_argument("--epoch-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the main process")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    args.epoch_workers = [int(w) for w in args.epoch_workers.split(",")]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        start = time.perf_counter()
        relpaths = write_jpegs(folder, args.images)
        sizes = [(folder / p).stat().st_size for p in relpaths]
        print(f"{len(relpaths)} JPEGs 500 x 375, quality 90, {statistics.mean(sizes) / 1e3:.1f} KB on average "
              f"({time.perf_counter() - start:.1f} s to write)")
        rows = bench_loader(args, folder, relpaths)
        if args.epochs:
            rows += bench_epochs(args, folder, relpaths)
    print_table(rows)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
