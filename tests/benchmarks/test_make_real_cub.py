"""benchmarks/make_real_cub.py writes real digits that the real cub200 loader reads with the authors' class split."""

import pathlib
import subprocess
import sys

import numpy as np
from sklearn.datasets import load_digits

from diml.data import build_splits

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "make_real_cub.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def test_digits_in_cub_format_load_with_classes_0_to_4_for_training(tmp_path):
    done = _run(tmp_path, "--per-class", 3, "--size", 16, "--resample", "nearest")
    assert done.returncode == 0, done.stderr
    base = tmp_path / "CUB_200_2011"
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt"):
        assert len((base / name).read_text().splitlines()) == (10 if name == "classes.txt" else 30), name

    splits = build_splits("cub200", root=tmp_path, image_size=16)
    assert splits.train.class_names == [f"{d + 1:03d}.digit_{d}" for d in range(5)]
    assert splits.test.class_names == [f"{101 + d - 5:03d}.digit_{d}" for d in range(5, 10)]
    assert np.bincount(splits.train.labels).tolist() == [3] * 5
    assert np.bincount(splits.test.labels).tolist() == [3] * 5
    assert splits.val is None

    # The pixels are the digit named by the folder: the n-th image of digit d is sklearn's n-th d, ink dark on white,
    # each source pixel a 2 x 2 block (nearest, 8 -> 16 px), up to JPEG error.
    digits = load_digits()
    for split in (splits.train, splits.test):
        for i in range(len(split)):
            digit = int(split.class_names[split.labels[i]].split("_")[1])
            nth = int(pathlib.PurePosixPath(split.image_id(i)).name.split("_")[2]) - 1
            source = digits.images[np.flatnonzero(digits.target == digit)[nth]]
            pixels = np.asarray(split.load_image(i).convert("L"), dtype=float)
            assert pixels.shape == (16, 16)
            blocks = pixels.reshape(8, 2, 8, 2).mean(axis=(1, 3))
            assert np.abs(blocks - (255 - 255 * source / 16)).mean() < 6, split.image_id(i)


def test_refuses_to_write_over_a_dataset(tmp_path):
    assert _run(tmp_path, "--per-class", 1, "--size", 8).returncode == 0
    again = _run(tmp_path, "--per-class", 1, "--size", 8)
    assert again.returncode != 0 and "exists and is not empty" in again.stderr
