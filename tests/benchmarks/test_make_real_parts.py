"""benchmarks/make_real_parts.py: real photographs with exact keypoints, read by the unchanged cub200 loader.

The content check is independent of the builder's warp: from each test image's keypoints (as the loader gives them,
in the eval crop) and the photograph's points, scikit-image fits its own homography, renders the photograph with it
and finds the eval image there, best aligned at zero shift (a half-pixel error in any convention would move it).
"""

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from diml.data import build_splits

skimage = pytest.importorskip("skimage")
from skimage.transform import ProjectiveTransform, warp  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "make_real_parts.py"
SIZE, S, PARTS = 72, 64, 8


def _module():
    spec = importlib.util.spec_from_file_location("make_real_parts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("real_parts")
    done = _run("--out", out, "--images-per-class", 3, "--size", SIZE, "--parts", PARTS, "--seed", 1)
    assert done.returncode == 0, done.stderr
    assert "wrote 60 images of 20 photographs" in done.stdout
    return out


def _estimate(source, target) -> ProjectiveTransform:
    if hasattr(ProjectiveTransform, "from_estimate"):  # scikit-image >= 0.26
        fit = ProjectiveTransform.from_estimate(source, target)
        assert fit, fit
        return fit
    fit = ProjectiveTransform()
    assert fit.estimate(source, target)
    return fit


def _grey(x: torch.Tensor) -> np.ndarray:
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (x * std[:, None, None] + mean[:, None, None]).mean(0).numpy()


def _ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_counts_split_and_files_in_the_cub_layout(built):
    base = built / "CUB_200_2011"
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
        assert len((base / name).read_text().splitlines()) == 60, name
    assert len((base / "parts" / "part_locs.txt").read_text().splitlines()) == 60 * PARTS
    assert (base / "parts" / "parts.txt").read_text().splitlines()[0] == "1 point_01"
    splits = build_splits("cub200", root=built, image_size=S)
    module = _module()
    assert splits.train.class_names == [f"{i + 1:03d}.{n}" for i, n in enumerate(module.TRAIN)]
    assert splits.test.class_names == [f"{101 + i:03d}.{n}" for i, n in enumerate(module.TEST)]
    for split in (splits.train, splits.test):
        assert np.bincount(split.labels).tolist() == [3] * 10
        assert split.part_names == [f"point_{k:02d}" for k in range(1, PARTS + 1)]
        kp, boxes = split.keypoints(), split.part_boxes()
        assert kp.shape == (30, PARTS, 3) and 0.4 < kp[..., 2].mean() <= 1
        assert np.all((boxes >= 0) & (boxes <= S)) and np.all(boxes[:, :2] < boxes[:, 2:])


def test_the_same_seed_writes_the_same_files_and_a_full_folder_is_refused(built, tmp_path):
    again = _run("--out", tmp_path, "--images-per-class", 3, "--size", SIZE, "--parts", PARTS, "--seed", 1)
    assert again.returncode == 0, again.stderr
    for rel in ("parts/part_locs.txt", "bounding_boxes.txt", "images/104.rocket/rocket_0002.jpg"):
        assert (tmp_path / "CUB_200_2011" / rel).read_bytes() == (built / "CUB_200_2011" / rel).read_bytes()
    refused = _run("--out", tmp_path, "--images-per-class", 1)
    assert refused.returncode != 0 and "exists and is not empty" in refused.stderr


def test_each_keypoint_lands_on_its_photograph_point_after_the_eval_geometry(built):
    module = _module()
    test = build_splits("cub200", root=built, image_size=S).test
    kp = test.keypoints()
    shifts = [(dx, dy) for dx in (-1, -0.5, 0, 0.5, 1) for dy in (-1, -0.5, 0, 0.5, 1)]
    scores, checked = np.zeros(len(shifts)), 0
    for c, name in enumerate(module.TEST):
        photo = module.working_photo(module.load_photo(name), SIZE)
        points = module.select_points(photo, PARTS)
        grey_photo = photo.astype(np.float64).mean(axis=2) / 255
        for i in np.flatnonzero(test.labels == c):
            seen = kp[i, :, 2] == 1
            if seen.sum() < 5:
                continue
            fit = _estimate(points[seen], kp[i, seen, :2])
            assert np.abs(fit(points[seen]) - kp[i, seen, :2]).max() < 0.05  # one homography carries them all
            image = _grey(test[i][0])
            for j, (dx, dy) in enumerate(shifts):
                # crop pixel index (col, row) -> continuous + 0.5 -> shifted -> photograph -> index - 0.5
                to_crop = np.array([[1, 0, 0.5 + dx], [0, 1, 0.5 + dy], [0, 0, 1]])
                inverse = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]]) @ np.linalg.inv(fit.params) @ to_crop
                rendered = warp(grey_photo, ProjectiveTransform(inverse), output_shape=(S, S), order=1, cval=-1)
                inside = rendered >= 0
                scores[j] += _ncc(rendered[inside], image[inside])
            checked += 1
    assert checked >= 20
    scores /= checked
    assert scores[shifts.index((0, 0))] > 0.9
    assert int(np.argmax(scores)) == shifts.index((0, 0)), dict(zip(shifts, np.round(scores, 4)))
