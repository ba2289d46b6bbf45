"""A synthetic "parts in an arrangement" image dataset, generated on the fly (no files, no download).

Each class is defined by a few parts (a shape, a colour, a texture) at class-specific positions. An image of the
class draws those parts with random global scale and shift, per-part jitter, size and colour noise, on a noisy
background with distractor parts drawn from the same vocabulary. Two images of a class therefore share the same
parts in roughly the same arrangement, while the clutter differs: matching parts matters, which is what DIML's
structural similarity is about.

Determinism: class ``c`` is defined by ``(seed, c)`` only and image ``(c, i)`` by ``(seed, c, i)`` only, so any
subset of the data can be generated in any order, in any process, with identical pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from diml.data.base import SplitDataset
from diml.data.keypoints import OriginalParts, PartSource

PALETTE = np.array([
    [0.90, 0.15, 0.15], [0.15, 0.75, 0.20], [0.20, 0.35, 0.95], [0.95, 0.85, 0.15],
    [0.85, 0.20, 0.85], [0.15, 0.85, 0.85], [0.98, 0.55, 0.10], [0.97, 0.97, 0.97],
])
SHAPES = ("circle", "square", "diamond", "triangle", "ring", "cross")
TEXTURES = ("solid", "h_stripes", "v_stripes", "checker")


@dataclass(frozen=True)
class Part:
    """One part: indices into ``SHAPES``, ``PALETTE``, ``TEXTURES``; centre ``(x, y)`` in [0, 1]; radius (fraction
    of the image side)."""

    shape: int
    colour: int
    texture: int
    x: float
    y: float
    radius: float


def _shape_mask(shape: int, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit shape in part coordinates ``dx, dy`` (1 = the radius)."""
    name = SHAPES[shape]
    if name == "circle":
        return dx * dx + dy * dy <= 1.0
    if name == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85
    if name == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15
    if name == "triangle":
        return (dy <= 0.8) & (np.abs(dx) <= (dy + 1.0) * 0.6)
    if name == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= 1.0) & (d2 >= 0.3)
    return ((np.abs(dx) <= 0.33) & (np.abs(dy) <= 1.0)) | ((np.abs(dy) <= 0.33) & (np.abs(dx) <= 1.0))


def _texture(texture: int, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Float in {0.35, 1}: the brightness factor of the texture in part coordinates."""
    name = TEXTURES[texture]
    if name == "solid":
        return np.ones_like(dx)
    if name == "h_stripes":
        on = np.floor(dy * 2.5) % 2 == 0
    elif name == "v_stripes":
        on = np.floor(dx * 2.5) % 2 == 0
    else:
        on = (np.floor(dx * 2.0) + np.floor(dy * 2.0)) % 2 == 0
    return np.where(on, 1.0, 0.35)


def _part_box(part: Part, size: int) -> tuple[int, int, int, int]:
    """``x0, x1, y0, y1``: the pixels :func:`draw_part` may paint (the part's bounding box, clipped)."""
    r_px = part.radius * size
    return (max(0, int(part.x * size - r_px) - 1), min(size, int(part.x * size + r_px) + 2),
            max(0, int(part.y * size - r_px) - 1), min(size, int(part.y * size + r_px) + 2))


def draw_part(canvas: np.ndarray, part: Part, colour: np.ndarray) -> None:
    """Paint ``part`` with RGB ``colour (3,)`` into ``canvas (S, S, 3)`` float in place (only its bounding box)."""
    size = canvas.shape[0]
    r_px = part.radius * size
    x0, x1, y0, y1 = _part_box(part, size)
    if x0 >= x1 or y0 >= y1:
        return
    ys = (np.arange(y0, y1) + 0.5)[:, None]
    xs = (np.arange(x0, x1) + 0.5)[None, :]
    dx = (xs - part.x * size) / r_px
    dy = (ys - part.y * size) / r_px
    dx, dy = np.broadcast_arrays(dx, dy)
    mask = _shape_mask(part.shape, dx, dy)
    shade = _texture(part.texture, dx, dy)[..., None] * colour
    region = canvas[y0:y1, x0:x1]
    region[mask] = shade[mask]


def part_covers(part: Part, size: int, point: np.ndarray) -> bool:
    """Whether :func:`draw_part` paints the pixel holding ``point`` (continuous ``x, y`` in an ``S x S`` image)."""
    px, py = np.floor(point).astype(int)
    x0, x1, y0, y1 = _part_box(part, size)
    if not (x0 <= px < x1 and y0 <= py < y1):
        return False
    r_px = part.radius * size
    return bool(_shape_mask(part.shape, np.array((px + 0.5 - part.x * size) / r_px),
                            np.array((py + 0.5 - part.y * size) / r_px)))


class SyntheticParts:
    """The generator: ``class_parts(c) -> list[Part]`` and ``render(c, i) -> (S, S, 3) uint8``.

    ``parts_per_class`` parts per class, ``distractors`` = (min, max) clutter parts per image.
    """

    def __init__(self, *, seed: int = 0, image_size: int = 64, parts_per_class: int = 3,
                 distractors: tuple[int, int] = (1, 3)) -> None:
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 for the synthetic dataset, got {image_size}")
        if not 1 <= parts_per_class <= 6:
            raise ValueError(f"parts_per_class must be in 1..6, got {parts_per_class}")
        if not 0 <= distractors[0] <= distractors[1]:
            raise ValueError(f"distractors must be (min, max) with 0 <= min <= max, got {distractors}")
        self.seed = seed
        self.image_size = image_size
        self.parts_per_class = parts_per_class
        self.distractors = tuple(distractors)

    def class_parts(self, class_id: int) -> list[Part]:
        """The class's parts at their canonical positions (spread apart, away from the border)."""
        rng = np.random.default_rng([self.seed, class_id, 0x5EED])
        kinds = rng.choice(len(SHAPES) * len(PALETTE) * len(TEXTURES), size=self.parts_per_class, replace=False)
        centres: list[np.ndarray] = []
        while len(centres) < self.parts_per_class:
            c = rng.uniform(0.25, 0.75, size=2)
            if all(np.linalg.norm(c - o) >= 0.3 for o in centres) or rng.random() < 0.01:
                centres.append(c)
        parts = []
        for kind, (x, y) in zip(kinds, centres):
            shape, rest = divmod(int(kind), len(PALETTE) * len(TEXTURES))
            colour, texture = divmod(rest, len(TEXTURES))
            parts.append(Part(shape, colour, texture, float(x), float(y), float(rng.uniform(0.125, 0.16))))
        return parts

    def _background(self, rng: np.random.Generator, pixels: bool = True) -> np.ndarray | None:
        """The noisy gradient background ``(S, S, 3)`` float; ``pixels=False`` draws the same random numbers
        (the generator ends in the same state) without computing the image and returns ``None``."""
        size = self.image_size
        base = rng.uniform(0.2, 0.45, size=3)
        gx, gy = rng.uniform(-0.15, 0.15, size=(2, 3))
        if not pixels:
            rng.standard_normal(size * size * 3)  # the draws of rng.normal(0, 0.04, (S, S, 3)), in the same order
            return None
        ramp = np.linspace(0.0, 1.0, size)
        canvas = base + gx * ramp[None, :, None] + gy * ramp[:, None, None]
        return canvas + rng.normal(0.0, 0.04, size=(size, size, 3))

    def _layout(self, class_id: int, index: int, pixels: bool = True):
        """``(background or None, distractors, class parts)``: what image ``(class_id, index)`` draws, in drawing
        order, each a list of ``(Part, colour (3,))``. The class parts are moved to their place in this image:
        centre ``0.5 + scale * (p - 0.5) + shift + jitter``."""
        rng = np.random.default_rng([self.seed, class_id, index, 0x1A6E])
        canvas = self._background(rng, pixels)
        distractors = []
        for _ in range(int(rng.integers(self.distractors[0], self.distractors[1] + 1))):
            shape, colour, texture = rng.integers(len(SHAPES)), rng.integers(len(PALETTE)), rng.integers(len(TEXTURES))
            x, y = rng.uniform(0.1, 0.9, size=2)
            part = Part(int(shape), int(colour), int(texture), x, y, rng.uniform(0.08, 0.13))
            distractors.append((part, PALETTE[colour] * rng.uniform(0.85, 1.1, size=3)))
        scale = rng.uniform(0.85, 1.15)
        shift = rng.uniform(-0.07, 0.07, size=2)
        parts = []
        for part in self.class_parts(class_id):
            x, y = 0.5 + scale * (np.array([part.x, part.y]) - 0.5) + shift + rng.normal(0.0, 0.025, size=2)
            moved = Part(part.shape, part.colour, part.texture, x, y, part.radius * scale * rng.uniform(0.9, 1.1))
            parts.append((moved, PALETTE[part.colour] * rng.uniform(0.85, 1.1, size=3)))
        return canvas, distractors, parts

    def render(self, class_id: int, index: int) -> np.ndarray:
        """Image ``index`` of class ``class_id``: ``(S, S, 3)`` uint8, a function of ``(seed, class_id, index)``."""
        canvas, distractors, parts = self._layout(class_id, index)
        for part, colour in distractors + parts:
            draw_part(canvas, part, colour)
        return (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def part_centres(self, class_id: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where image ``(class_id, index)`` draws its class parts, without rendering it: ``centres (P, 2)``
        (continuous pixels of the ``S x S`` image), ``visible (P,)`` and ``box (4,)`` (``x0, y0, x1, y1`` around
        the drawn class parts, clipped to the image).

        Part ``k`` is invisible when its centre lies outside the image or when a class part drawn after it paints
        the pixel holding its centre (distractors are drawn first, so they never cover a class part).
        """
        _, _, parts = self._layout(class_id, index, pixels=False)
        size = self.image_size
        centres = np.array([[p.x, p.y] for p, _ in parts]) * size
        visible = np.all((centres >= 0) & (centres < size), axis=1)
        for k in np.flatnonzero(visible):
            visible[k] = not any(part_covers(p, size, centres[k]) for p, _ in parts[k + 1:])
        boxes = np.array([_part_box(p, size) for p, _ in parts], dtype=np.float64)  # (P, 4) as x0, x1, y0, y1
        box = np.array([boxes[:, 0].min(), boxes[:, 2].min(), boxes[:, 1].max(), boxes[:, 3].max()])
        return centres, visible, box


class SyntheticPartSource(PartSource):
    """The class parts of the generator's images as keypoints: part ``k`` of every class is ``part_k`` (the
    metric compares images of one class, so per-class part ids are what it needs); the box surrounds the drawn
    class parts. Each image's layout is drawn once (no pixels) and cached."""

    has_boxes = True

    def __init__(self, generator: SyntheticParts) -> None:
        self.generator = generator
        self.part_names = [f"part_{k}" for k in range(generator.parts_per_class)]
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def original(self, items) -> OriginalParts:
        if not len(items):
            p = len(self.part_names)
            return OriginalParts(np.zeros((0, p, 2)), np.zeros((0, p), bool), np.zeros((0, 4)), np.zeros((0, 2), int))
        for item in items:
            if item not in self._cache:
                self._cache[item] = self.generator.part_centres(*item)
        centres, visible, boxes = (np.stack(column) for column in zip(*(self._cache[i] for i in items)))
        sizes = np.full((len(items), 2), self.generator.image_size, dtype=np.int64)
        return OriginalParts(centres, visible, boxes, sizes)


class SyntheticDataset(SplitDataset):
    """A split of the synthetic dataset; ``items[i] = (global class id, index within the class)``; its
    ``keypoints()`` are the class parts' centres (:class:`SyntheticPartSource`)."""

    def __init__(self, generator: SyntheticParts, class_ids: list[int], images_per_class: int, transform,
                 eval_transform=None) -> None:
        items = [(c, i) for c in class_ids for i in range(images_per_class)]
        labels = np.repeat(np.arange(len(class_ids)), images_per_class)
        super().__init__(items, labels, [f"class_{c:03d}" for c in class_ids], transform, eval_transform)
        self.generator = generator
        self.part_source = SyntheticPartSource(generator)

    def load_image(self, index: int) -> Image.Image:
        class_id, i = self.items[index]
        return Image.fromarray(self.generator.render(class_id, i), mode="RGB")

    def image_id(self, index: int) -> str:
        class_id, i = self.items[index]
        return f"synthetic/seed{self.generator.seed}/class_{class_id:03d}/{i:04d}"


SYNTHETIC_OPTIONS = ("num_classes", "images_per_class", "parts_per_class", "distractors")


def synthetic_splits(*, image_size: int, seed: int, train_transform, eval_transform, num_classes: int = 48,
                     images_per_class: int = 24, parts_per_class: int = 3,
                     distractors: tuple[int, int] = (1, 3)) -> tuple[SyntheticDataset, SyntheticDataset]:
    """``(train, test)``: the first half of the classes for training, the second half for testing (disjoint)."""
    if num_classes < 4:
        raise ValueError(f"num_classes must be >= 4 for the synthetic dataset, got {num_classes}")
    if images_per_class < 2:
        raise ValueError(f"images_per_class must be >= 2 for the synthetic dataset, got {images_per_class}")
    gen = SyntheticParts(seed=seed, image_size=image_size, parts_per_class=parts_per_class,
                         distractors=tuple(distractors))
    half = num_classes // 2
    train = SyntheticDataset(gen, list(range(half)), images_per_class, train_transform, eval_transform)
    test = SyntheticDataset(gen, list(range(half, num_classes)), images_per_class, eval_transform)
    return train, test
