"""Real photographs with exact part keypoints, in the CUB-200-2011 layout: a correspondence benchmark built offline.

    python benchmarks/make_real_parts.py --out OUT_DIR [--images-per-class 20] [--size 256] [--parts 10] [--seed 0]

Sources: the 20 real photographs bundled in scikit-image's wheel (``skimage.data``: astronaut, camera, chelsea, ...)
and scikit-learn's (``load_sample_images``: china, flower); no download. Each photograph is a class. It is first
resized (Lanczos) so that its short side is ``size``; ``parts`` keypoints are chosen on it automatically (the
strongest Shi-Tomasi corners, at least ``size / 10`` apart (closer where a photograph has too few), away from the
border). Each instance of the class is a random view of the photograph: a crop of 70-95 % of it (along the tighter
side), rotated by up to 12 degrees, with a perspective distortion (each corner moved by up to 6 % of the crop),
written at a random aspect ratio (short side ``size``, long side ``size`` to ``4/3 size``, oriented as the
photograph, either way for a square one), then a colour change (brightness, contrast, saturation, channel gains)
and a little noise, saved as JPEG (quality 92). The view is one homography ``H`` (source pixels to instance
pixels); each keypoint is carried through it exactly, and one that leaves the instance is written invisible. Pixels
are sampled at their centres (pixel ``k`` spans ``[k, k + 1)``), bilinearly.

The layout is the official archive's, read by the unchanged ``cub200`` loader::

    OUT_DIR/CUB_200_2011/images.txt               <image id> <relative path>
                         image_class_labels.txt   <image id> <class id>
                         train_test_split.txt     <image id> <1: every other image (the classification split)>
                         classes.txt              <class id> <NNN.name>
                         bounding_boxes.txt       <image id> <x> <y> <width> <height>: the photograph's extent in
                                                  the instance (clipped), x, y 1-based as CUB
                         parts/parts.txt          <part id> point_NN (per class: point 3 of one photo is not
                                                  point 3 of another)
                         parts/part_locs.txt      <image id> <part id> <x> <y> <visible>: CUB's 1-based pixel
                                                  convention (continuous x + 0.5), three decimals; 0 0 0 invisible
                         images/NNN.name/name_NNNN.jpg

Classes 1-10 train (the grey, texture and microscopy photographs: camera, hubble_deep_field, retina, moon, text,
page, grass, gravel, immunohistochemistry, cell), 101-110 test (scenes with objects: astronaut, chelsea, coffee,
rocket, motorcycle, coins, brick, clock, china, flower), so the loader's 1-100 / 101-200 split gives 10 + 10.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN = ("camera", "hubble_deep_field", "retina", "moon", "text", "page", "grass", "gravel", "immunohistochemistry",
         "cell")
TEST = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "coins", "brick", "clock", "china", "flower")


def class_ids() -> dict[str, int]:
    """CUB class id of each photograph: the training photographs 1-10, the test photographs 101-110."""
    return {**{n: i + 1 for i, n in enumerate(TRAIN)}, **{n: 101 + i for i, n in enumerate(TEST)}}


def load_photo(name: str) -> np.ndarray:
    """The bundled photograph ``name`` as ``(H, W, 3)`` uint8 RGB (grey ones copied to three channels)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        pixels = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        pixels = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3]).astype(np.uint8)


def working_photo(photo: np.ndarray, size: int) -> np.ndarray:
    """``photo`` resized (Lanczos) so that its short side is ``size``."""
    h, w = photo.shape[:2]
    scale = size / min(h, w)
    new = (max(size, int(round(w * scale))), max(size, int(round(h * scale))))
    return np.asarray(Image.fromarray(photo).resize(new, Image.Resampling.LANCZOS))


def select_points(photo: np.ndarray, count: int) -> np.ndarray:
    """``(count, 2)`` continuous ``x, y`` of the strongest corners of ``photo`` (pixel centres; Shi-Tomasi: the
    smaller eigenvalue of the structure tensor, large where the texture varies both ways), at least
    ``short / 10`` pixels apart and ``short / 6`` from the border (closer when the photograph has too few)."""
    from skimage.feature import corner_peaks, corner_shi_tomasi

    grey = photo.astype(np.float64).mean(axis=2) / 255.0
    short = min(grey.shape)
    response = corner_shi_tomasi(grey, sigma=max(1.0, short / 128))
    for distance, threshold in ((10, 1e-3), (16, 1e-3), (32, 1e-3), (10, 0.0), (32, 0.0)):
        peaks = corner_peaks(response, min_distance=max(1, short // distance), threshold_rel=threshold,
                             exclude_border=short // 6, num_peaks=count)
        if len(peaks) >= count:
            break
    if len(peaks) < count:
        raise ValueError(f"only {len(peaks)} corners found in a {grey.shape} photograph; ask for fewer --parts")
    return peaks[:count, ::-1] + 0.5


def homography(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 3 x 3 ``H`` with ``H (x, y, 1) ~ (x', y', 1)`` for four (or more, least squares) point pairs."""
    rows = []
    for (x, y), (u, v) in zip(source, target):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
    _, _, vt = np.linalg.svd(np.asarray(rows, dtype=np.float64))
    h = vt[-1].reshape(3, 3)
    return h / h[2, 2]


def apply(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(N, 2)`` points through ``h``."""
    x, y = points[:, 0], points[:, 1]
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    return np.stack([(h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w, (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w], axis=1)


def random_view(rng: np.random.Generator, source_wh: tuple[int, int], size: int) -> tuple[np.ndarray, tuple]:
    """``(H, (out_w, out_h))``: a random crop / rotation / perspective view of a ``source_wh`` photograph."""
    src_w, src_h = source_wh
    long = int(round(size * rng.uniform(1.0, 4 / 3)))
    landscape = rng.random() < 0.5 if max(src_w, src_h) < 1.05 * min(src_w, src_h) else src_w > src_h
    out_w, out_h = (long, size) if landscape else (size, long)
    zoom = max(out_w / src_w, out_h / src_h) / 0.95 * rng.uniform(1.0, 0.95 / 0.7)  # crop 95 % down to 70 %
    crop_w, crop_h = out_w / zoom, out_h / zoom
    centre = rng.uniform([crop_w / 2, crop_h / 2], [src_w - crop_w / 2, src_h - crop_h / 2])
    angle = np.deg2rad(rng.uniform(-12, 12))
    rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [crop_w / 2, crop_h / 2]
    corners = corners + rng.uniform(-0.06, 0.06, size=(4, 2)) * [crop_w, crop_h]
    quad = corners @ rotate.T + centre
    target = np.array([[0, 0], [out_w, 0], [out_w, out_h], [0, out_h]], dtype=np.float64)
    return homography(quad, target), (out_w, out_h)


def warp(photo: np.ndarray, h: np.ndarray, out_wh: tuple[int, int], fill: np.ndarray) -> np.ndarray:
    """The view: output pixel centres through ``h^-1`` into ``photo``, bilinear between the photograph's pixel
    centres (the edge pixels extended by half a pixel); outside the photograph ``fill``. ``(out_h, out_w, 3)``
    float."""
    out_w, out_h = out_wh
    src_h, src_w = photo.shape[:2]
    ys, xs = np.mgrid[0:out_h, 0:out_w] + 0.5
    src = apply(np.linalg.inv(h), np.stack([xs.ravel(), ys.ravel()], axis=1))
    inside = np.all((src >= 0) & (src <= [src_w, src_h]), axis=1)
    # array index of a continuous coordinate: minus half a pixel
    u, v = np.clip(src[:, 0] - 0.5, 0, src_w - 1), np.clip(src[:, 1] - 0.5, 0, src_h - 1)
    x0, y0 = np.minimum(u.astype(np.int64), src_w - 2), np.minimum(v.astype(np.int64), src_h - 2)
    fx, fy = (u - x0)[:, None], (v - y0)[:, None]
    p = photo.astype(np.float32)
    fx, fy = fx.astype(np.float32), fy.astype(np.float32)
    out = ((p[y0, x0] * (1 - fx) + p[y0, x0 + 1] * fx) * (1 - fy)
           + (p[y0 + 1, x0] * (1 - fx) + p[y0 + 1, x0 + 1] * fx) * fy)
    out = np.where(inside[:, None], out, fill[None, :])
    return out.reshape(out_h, out_w, 3)


def recolour(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """Brightness, contrast, saturation, channel gains and noise; ``(H, W, 3)`` float 0-255 -> uint8."""
    x = pixels * rng.uniform(0.9, 1.1, size=3)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + rng.uniform(0.6, 1.4) * (x - grey)
    x = x.mean() + rng.uniform(0.75, 1.25) * (x - x.mean())
    x = x * rng.uniform(0.8, 1.2) + rng.normal(0.0, 2.0, size=x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def write_parts(out_dir, images_per_class: int = 20, size: int = 256, parts: int = 10, seed: int = 0) -> dict:
    """Write the set under ``out_dir/CUB_200_2011``; returns ``{"images", "classes", "visible"}`` counts."""
    if images_per_class < 1 or size < 16 or not 4 <= parts <= 50:
        raise ValueError(f"need images_per_class >= 1, size >= 16 and 4 <= parts <= 50, got {images_per_class}, "
                         f"{size}, {parts}")
    base = Path(out_dir) / "CUB_200_2011"
    if base.exists() and any(base.iterdir()):
        raise ValueError(f"{str(base)!r} exists and is not empty: remove it or choose another --out")
    rows = {n: [] for n in ("images", "image_class_labels", "train_test_split", "bounding_boxes", "part_locs")}
    visible = image_id = 0
    ids = class_ids()
    for name, cid in sorted(ids.items(), key=lambda item: item[1]):
        photo = working_photo(load_photo(name), size)
        points = select_points(photo, parts)
        folder = f"{cid:03d}.{name}"
        (base / "images" / folder).mkdir(parents=True, exist_ok=True)
        for index in range(images_per_class):
            rng = np.random.default_rng([seed, cid, index])
            h, (out_w, out_h) = random_view(rng, (photo.shape[1], photo.shape[0]), size)
            pixels = warp(photo, h, (out_w, out_h), rng.uniform(0, 255, size=3))
            image_id += 1
            rel = f"{folder}/{name}_{index + 1:04d}.jpg"
            Image.fromarray(recolour(rng, pixels)).save(base / "images" / rel, quality=92)
            rows["images"].append(f"{image_id} {rel}")
            rows["image_class_labels"].append(f"{image_id} {cid}")
            rows["train_test_split"].append(f"{image_id} {(index + 1) % 2}")
            corners = apply(h, np.array([[0, 0], [photo.shape[1], 0], [photo.shape[1], photo.shape[0]],
                                         [0, photo.shape[0]]], dtype=np.float64))
            x0, y0 = np.clip(corners.min(axis=0), 0, [out_w, out_h])
            x1, y1 = np.clip(corners.max(axis=0), 0, [out_w, out_h])
            rows["bounding_boxes"].append(f"{image_id} {x0 + 1:.3f} {y0 + 1:.3f} {x1 - x0:.3f} {y1 - y0:.3f}")
            moved = apply(h, points)
            inside = np.all((moved >= 0) & (moved < [out_w, out_h]), axis=1)
            visible += int(inside.sum())
            for k, ((x, y), seen) in enumerate(zip(moved, inside), start=1):
                rows["part_locs"].append(f"{image_id} {k} {x + 0.5:.3f} {y + 0.5:.3f} 1" if seen
                                         else f"{image_id} {k} 0.0 0.0 0")
    (base / "parts").mkdir()
    for name, lines in rows.items():
        path = base / ("parts" if name == "part_locs" else "") / f"{name}.txt"
        path.write_text("\n".join(lines) + "\n")
    (base / "parts" / "parts.txt").write_text("".join(f"{k} point_{k:02d}\n" for k in range(1, parts + 1)))
    (base / "classes.txt").write_text("".join(f"{cid} {cid:03d}.{n}\n" for n, cid in sorted(ids.items(),
                                                                                           key=lambda i: i[1])))
    return {"images": image_id, "classes": len(ids), "visible": visible / (image_id * parts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (CUB_200_2011/ is written inside)")
    parser.add_argument("--images-per-class", type=int, default=20, help="instances per photograph (default 20)")
    parser.add_argument("--size", type=int, default=256, help="short side of the instances in pixels (default 256)")
    parser.add_argument("--parts", type=int, default=10, help="keypoints per photograph (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    done = write_parts(args.out, args.images_per_class, args.size, args.parts, args.seed)
    print(f"wrote {done['images']} images of {done['classes']} photographs to "
          f"{Path(args.out) / 'CUB_200_2011'} in {time.perf_counter() - start:.1f} s: classes 1-10 train, 101-110 "
          f"test; {args.parts} keypoints each, {100 * done['visible']:.1f} % visible")


if __name__ == "__main__":
    main()
