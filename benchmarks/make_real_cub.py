"""Real images in the CUB-200-2011 format: scikit-learn's handwritten digits, for docs/FIDELITY.md's experiment.

    python benchmarks/make_real_cub.py OUT_DIR [--size 64] [--resample bicubic|nearest] [--per-class N] [--copies K]

The source is ``sklearn.datasets.load_digits`` (bundled with scikit-learn, no download): 1,797 real handwritten
digits (UCI optdigits, 43 writers), 8 x 8 grey levels 0-16, 10 classes. Each image is turned into dark ink on
white paper (``255 - 255 * v / 16``), upsampled to ``size`` x ``size`` (bicubic by default: smooth strokes;
``nearest`` keeps the 8 x 8 blocks), copied to three channels and saved as JPEG (quality 95) like the official
archive, in its layout::

    OUT_DIR/CUB_200_2011/images.txt               <image id> <relative path>
                         image_class_labels.txt   <image id> <class id>
                         train_test_split.txt     <image id> <1: training image of the classification split>
                         bounding_boxes.txt       <image id> 1 1 <size> <size> (the whole image: CUB's x, y are
                                                  the 1-based top-left pixel)
                         classes.txt              <class id> <NNN.name>
                         images/NNN.name/*.jpg

Metric-learning split, as the authors (first half of the classes for training, the rest for testing): the
``cub200`` loader trains on class ids 1-100 and tests on 101-200, so digits 0-4 get ids 1-5 and digits 5-9 ids
101-105. ``train_test_split.txt`` is the official file of the classification split (every other image of a class),
which the metric-learning loader does not read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}


def class_id(digit: int) -> int:
    """CUB class id of a digit: 0-4 -> 1-5 (training classes), 5-9 -> 101-105 (test classes)."""
    return digit + 1 if digit < 5 else 101 + digit - 5


def digit_image(grey: np.ndarray, size: int, resample: str) -> Image.Image:
    """``grey``: (8, 8) ink levels 0-16 -> RGB (size, size) image, dark ink on white."""
    paper = np.clip(np.rint(255.0 - grey * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(paper).resize((size, size), RESAMPLE[resample]).convert("RGB")


def write_cub(out_dir, size: int = 64, resample: str = "bicubic", per_class: int | None = None,
              copies: int = 1) -> dict[int, int]:
    """Write the digits under ``out_dir/CUB_200_2011``; returns {class id: number of images}.

    ``per_class``: only the first N images of each digit (None: all 1,797). ``copies``: write each digit K times
    (``..._cK.jpg``, K > 0): a dataset the size of CUB's 11,788 images (7 copies) for throughput checks
    (``specs/gpu_smoke.yaml``).
    """
    from sklearn.datasets import load_digits

    if resample not in RESAMPLE:
        raise ValueError(f"resample {resample!r} is not one of {sorted(RESAMPLE)}")
    if size < 8:
        raise ValueError(f"size {size} is below the source's 8 px: use 8 or more")
    if copies < 1:
        raise ValueError(f"copies {copies} must be at least 1")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class {per_class} must be at least 1 (or None for all images)")
    base = Path(out_dir) / "CUB_200_2011"
    if base.exists() and any(base.iterdir()):
        raise ValueError(f"{str(base)!r} exists and is not empty: remove it or choose another OUT_DIR")
    digits = load_digits()
    rows = {name: [] for name in ("images", "image_class_labels", "train_test_split", "bounding_boxes")}
    counts: dict[int, int] = {}
    samples = [(index, grey, digit, copy) for index, (grey, digit) in enumerate(zip(digits.images,
                                                                                  digits.target.tolist()))
               for copy in range(copies)]
    for index, grey, digit, copy in samples:
        cid = class_id(digit)
        if per_class is not None and counts.get(cid, 0) >= per_class:
            continue
        counts[cid] = counts.get(cid, 0) + 1
        image_id = sum(counts.values())
        suffix = f"_c{copy}" if copy else ""
        rel = f"{cid:03d}.digit_{digit}/digit_{digit}_{counts[cid]:04d}_{index}{suffix}.jpg"
        (base / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        digit_image(grey, size, resample).save(base / "images" / rel, quality=95)
        rows["images"].append(f"{image_id} {rel}")
        rows["image_class_labels"].append(f"{image_id} {cid}")
        rows["train_test_split"].append(f"{image_id} {counts[cid] % 2}")
        rows["bounding_boxes"].append(f"{image_id} 1.0 1.0 {size}.0 {size}.0")
    for name, lines in rows.items():
        (base / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (base / "classes.txt").write_text("".join(f"{class_id(d)} {class_id(d):03d}.digit_{d}\n" for d in range(10)))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", type=int, default=64, help="output side in pixels (default 64)")
    parser.add_argument("--resample", default="bicubic", choices=sorted(RESAMPLE))
    parser.add_argument("--per-class", type=int, default=None, help="first N images of each digit (default: all)")
    parser.add_argument("--copies", type=int, default=1, help="write each digit K times (default 1)")
    args = parser.parse_args()
    counts = write_cub(args.out_dir, args.size, args.resample, args.per_class, args.copies)
    train = sum(n for c, n in counts.items() if c <= 100)
    print(f"wrote {sum(counts.values())} images of {len(counts)} classes to {Path(args.out_dir) / 'CUB_200_2011'}: "
          f"{train} train (digits 0-4, ids 1-5), {sum(counts.values()) - train} test (digits 5-9, ids 101-105)")


if __name__ == "__main__":
    main()
