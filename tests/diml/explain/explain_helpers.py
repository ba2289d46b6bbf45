"""Helpers of the explanation tests: small synthetic images, PNG reading, the tiny checkpoint config."""

import io

import numpy as np
from PIL import Image, ImageDraw

TINY_CONFIG = {"backbone": "resnet18", "embed_dim": 16, "grid": 2, "frozen_bn": False, "image_size": 32}


def shape_image(seed: int, size: int = 48) -> Image.Image:
    """A noisy background with a few coloured shapes (different per seed)."""
    rng = np.random.default_rng(seed)
    base = (rng.random((size, size, 3)) * 60 + rng.integers(40, 160, 3)).astype(np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.integers(0, size - 12, 2)
        r = int(rng.integers(5, 12))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + r, y + r), fill=colour)
    return image


def png_array(path) -> np.ndarray:
    """The pixels of a PNG file (checks the signature first)."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
