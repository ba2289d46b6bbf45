"""The uint8 input path (issue 26) against the reference float transforms, on CPU tensors.

Tolerances, from the operations: the crop boxes and flips are drawn by the same torch calls, so they must be equal;
the resize is torch's uint8 bilinear with antialiasing where the float path uses Pillow's, two implementations of
the same filter that round to integers differently: at most 1 grey level apart; the normalisation of the same uint8
values is one multiply-add in float32 against torchvision's three operations (values up to 2.64, ulp 2.4e-7): 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision import transforms as T
from torchvision.transforms import functional as F

from diml.data import Augmentation, build_splits, eval_transform, train_transform
from diml.data.device_input import DeviceAugment, device_batches, one_ahead, select_flipped
from diml.data.pixels import PixelCrops, Uint8EvalTransform, Uint8TrainTransform, decode_file
from diml.models.backbones import IMAGENET_MEAN, IMAGENET_STD

GREY_LEVEL = 1.0 / (255.0 * min(IMAGENET_STD))  # one grey level after normalisation


def natural_image(seed: int, width: int = 120, height: int = 90) -> Image.Image:
    """Smooth noise, a few shapes and grain: asymmetric, so a flip or a shifted crop shows."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(4, 5, 3)).astype(np.uint8)
    base = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
        box = (x0, y0, x0 + int(rng.integers(5, 40)), y0 + int(rng.integers(5, 30)))
        draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    pixels = np.asarray(base).astype(np.int16) + rng.integers(-12, 13, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _normalise(crops: PixelCrops, **kwargs) -> torch.Tensor:
    """One sample through the device step: (3, S, S)."""
    return DeviceAugment(**kwargs)(crops.pixels[None], torch.tensor([crops.flip]))[0]


def _spy_boxes(monkeypatch) -> list:
    boxes = []
    original = T.RandomResizedCrop.get_params

    def spy(img, scale, ratio):
        box = original(img, scale, ratio)
        boxes.append(tuple(box))
        return box

    monkeypatch.setattr(T.RandomResizedCrop, "get_params", staticmethod(spy))
    return boxes


@pytest.mark.parametrize("aug", [Augmentation(), Augmentation(crop_scale=(0.5, 1.0), crop_ratio=(0.5, 2.0))])
def test_same_random_state_same_boxes_flips_and_images_as_torchvision(monkeypatch, aug):
    boxes = _spy_boxes(monkeypatch)
    images = [natural_image(seed) for seed in range(4)]
    reference, ours = train_transform(32, augmentation=aug), Uint8TrainTransform(32, augmentation=aug)
    torch.manual_seed(7)
    expected = [reference(images[k % 4]) for k in range(40)]
    reference_boxes, state = boxes[:], torch.get_rng_state()
    boxes.clear()
    torch.manual_seed(7)
    got = [ours(images[k % 4]) for k in range(40)]
    assert boxes == reference_boxes  # the same crop boxes, draw for draw (the flip draws sit between them)
    assert torch.equal(torch.get_rng_state(), state)  # and nothing else drawn
    flips = [bool(sample.flip) for sample in got]
    assert 5 < sum(flips) < 35
    for crops, want in zip(got, expected):
        assert crops.pixels.dtype == torch.uint8 and crops.pixels.shape == (32, 32, 3)
        diff = (_normalise(crops) - want).abs().max().item()
        assert diff <= GREY_LEVEL + 1e-6  # a flip decided differently would mirror the image: far larger


def test_uint8_resize_is_within_one_grey_level_of_pillows(monkeypatch):
    boxes = _spy_boxes(monkeypatch)
    ours = Uint8TrainTransform(48, augmentation=Augmentation(flip=False))
    worst = 0
    for seed in range(30):
        image = natural_image(seed, width=150 + seed, height=100 + 2 * seed)
        crops = ours(image)
        top, left, height, width = boxes[-1]
        pillow = np.asarray(F.resized_crop(image, top, left, height, width, [48, 48]), dtype=np.int16)
        worst = max(worst, int(np.abs(crops.pixels.numpy().astype(np.int16) - pillow).max()))
    assert worst <= 1


def test_normalisation_of_every_grey_level_matches_to_tensor_normalize_to_1e6():
    levels = torch.arange(256, dtype=torch.uint8).view(16, 16, 1).expand(16, 16, 3).contiguous()
    ours = DeviceAugment()(levels[None])[0]
    reference = F.normalize(F.to_tensor(levels.numpy()), IMAGENET_MEAN, IMAGENET_STD)
    assert ours.dtype == torch.float32
    assert (ours - reference).abs().max().item() <= 1e-6


def test_device_flip_mirrors_exactly_the_marked_samples_and_channels_last_is_honoured():
    pixels = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    flip = torch.tensor([True, False, True, False])
    plain = DeviceAugment()(pixels)
    out = DeviceAugment(channels_last=True)(pixels, flip)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert DeviceAugment()(pixels, flip).is_contiguous()
    for b in range(4):
        want = plain[b].flip(-1) if flip[b] else plain[b]
        assert torch.equal(out[b], want)
    # the CUDA branch's select (no host sync), on CPU tensors: the same samples mirrored
    chw = pixels.permute(0, 3, 1, 2)
    selected = select_flipped(chw, flip)
    assert all(torch.equal(selected[b], chw[b].flip(-1) if flip[b] else chw[b]) for b in range(4))


@pytest.mark.parametrize("size", [(120, 90), (90, 120), (64, 64), (301, 157)])
@pytest.mark.parametrize("ratio", [256 / 224, 1.0, 1.5])
def test_eval_geometry_is_torchvisions_within_one_grey_level(size, ratio):
    image = natural_image(3, *size)
    aug = Augmentation(eval_resize_ratio=ratio)
    want = eval_transform(40, augmentation=aug)(image)
    crops = Uint8EvalTransform(40, augmentation=aug)(image)
    assert crops.pixels.shape == (40, 40, 3) and not bool(crops.flip)
    assert (_normalise(crops) - want).abs().max().item() <= GREY_LEVEL + 1e-6


def test_no_random_crop_uses_the_eval_geometry_and_no_flip_draws_nothing():
    image = natural_image(5)
    aug = Augmentation(random_crop=False, flip=False)
    ours = Uint8TrainTransform(32, augmentation=aug)
    state = torch.get_rng_state()
    first, second = ours(image), ours(image)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.pixels, second.pixels) and not bool(first.flip)
    assert torch.equal(first.pixels, Uint8EvalTransform(32, augmentation=aug)(image).pixels)


def test_build_splits_uint8_items_and_validation():
    splits = build_splits("synthetic", image_size=32, num_classes=4, images_per_class=3, input_format="uint8",
                          augmentation=Augmentation(crop_scale=(0.9, 1.0)))
    crops, label = splits.train[0]
    assert isinstance(crops, PixelCrops) and crops.pixels.shape == (32, 32, 3) and label == 0
    assert splits.train.transform.augmentation.crop_scale == (0.9, 1.0)
    test_crops, _ = splits.test[0]
    assert not bool(test_crops.flip)
    assert isinstance(splits.train.eval_view()[0][0], PixelCrops)
    with pytest.raises(ValueError, match="input_format must be one of float, uint8"):
        build_splits("synthetic", image_size=32, num_classes=4, images_per_class=3, input_format="half")


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_and_labels_arrive_in_order_through_the_prefetching_loader(workers):
    splits = build_splits("synthetic", image_size=16, num_classes=6, images_per_class=4, input_format="uint8")
    test = splits.test  # eval geometry: deterministic items
    loader = torch.utils.data.DataLoader(test, batch_size=5, num_workers=workers)
    got = list(device_batches(loader, "cpu"))
    images = torch.cat([b[0] for b in got])
    labels = torch.cat([b[1] for b in got])
    assert labels.tolist() == test.labels.tolist()
    for index in range(len(test)):
        crops, _ = test[index]
        assert torch.equal(images[index], _normalise(crops))


class _FakeStream:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def wait_stream(self, other):
        self.log.append(f"{self.name} waits {other.name}")


class _FakeTensor:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def record_stream(self, stream):
        self.log.append(f"{self.name} used on {stream.name}")


def test_one_ahead_issues_the_next_copy_before_handing_out_the_current_batch():
    """The CUDA prefetch order on fake streams: copy i+1 is issued on the side stream before batch i is used, the
    current stream waits for the side stream (no host sync), every tensor is recorded on the current stream."""
    import contextlib

    log = []
    side, current = _FakeStream(log, "side"), _FakeStream(log, "current")

    @contextlib.contextmanager
    def on_stream(stream):
        log.append(f"enter {stream.name}")
        yield
        log.append(f"leave {stream.name}")

    def prepare(batch):
        log.append(f"copy {batch}")
        return (_FakeTensor(log, f"images{batch}"), _FakeTensor(log, f"labels{batch}"))

    for images, _ in one_ahead(range(3), prepare, side, current, on_stream):
        log.append(f"use {images.name}")
    assert log == [
        "enter side", "copy 0", "leave side", "current waits side", "images0 used on current",
        "labels0 used on current",
        "enter side", "copy 1", "leave side", "use images0", "current waits side", "images1 used on current",
        "labels1 used on current",
        "enter side", "copy 2", "leave side", "use images1", "current waits side", "images2 used on current",
        "labels2 used on current",
        "use images2",
    ]


def test_float_batches_pass_through_device_batches():
    batches = [(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))]
    (images, labels), = device_batches(batches, "cpu")
    assert torch.equal(images, batches[0][0]) and labels.tolist() == [0, 1]


def test_device_augment_rejects_float_images():
    with pytest.raises(ValueError, match=r"\(B, S, S, 3\) uint8"):
        DeviceAugment()(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="std > 0"):
        DeviceAugment(std=(1.0, 0.0, 1.0))


@pytest.mark.parametrize("mode, suffix, kwargs", [("RGB", ".jpg", {"quality": 90}), ("L", ".jpg", {}),
                                                  ("RGB", ".png", {}), ("RGB", ".jpeg", {"subsampling": 0})])
def test_decode_file_gives_pillows_pixels(tmp_path, mode, suffix, kwargs):
    path = tmp_path / f"image{suffix}"
    natural_image(1).convert(mode).save(path, **kwargs)
    with Image.open(path) as image:
        want = np.asarray(image.convert("RGB"))
    got = decode_file(path)
    assert got.dtype == np.uint8 and got.shape == want.shape and np.array_equal(got, want)


def test_decode_file_names_a_missing_or_broken_file(tmp_path):
    from diml.data import BadImageError

    with pytest.raises(FileNotFoundError, match="missing"):
        decode_file(tmp_path / "gone.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8not a jpeg")
    with pytest.raises(BadImageError, match="broken.jpg"):
        decode_file(broken)


@pytest.mark.parametrize("scale, ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 1.0), (0.5, 2.0))])
def test_augmentation_distribution_matches_the_spec_over_many_draws(monkeypatch, scale, ratio):
    """Crop area fraction and aspect ratio within the spec's ranges and distributed as torchvision's own draws
    (two-sample Kolmogorov-Smirnov, independent seeds), flips with frequency 0.5, on a CUB-sized 500 x 375 image
    (the resize is stubbed out: only the draws are looked at)."""
    from scipy.stats import ks_2samp

    import diml.data.pixels

    boxes = _spy_boxes(monkeypatch)
    monkeypatch.setattr(diml.data.pixels, "resize_uint8", lambda chw, h, w: torch.zeros(3, h, w, dtype=torch.uint8))
    image = np.zeros((375, 500, 3), dtype=np.uint8)
    ours = Uint8TrainTransform(16, augmentation=Augmentation(crop_scale=scale, crop_ratio=ratio))
    torch.manual_seed(1)
    n = 3000
    flips = sum(bool(ours(image).flip) for _ in range(n))
    got = np.array(boxes[-n:], dtype=float)
    torch.manual_seed(2)
    reference = np.array([T.RandomResizedCrop.get_params(torch.empty(3, 375, 500), list(scale), list(ratio))
                          for _ in range(n)], dtype=float)
    for boxes_ in (got, reference):
        assert np.all(boxes_[:, 2] <= 375) and np.all(boxes_[:, 3] <= 500) and np.all(boxes_[:, :2] >= 0)
    area, log_ratio = (got[:, 2] * got[:, 3]) / (375 * 500), np.log(got[:, 3] / got[:, 2])
    ref_area = (reference[:, 2] * reference[:, 3]) / (375 * 500)
    ref_log_ratio = np.log(reference[:, 3] / reference[:, 2])
    # integer rounding of the box sides moves the area and ratio by at most a side's pixel
    assert area.min() >= scale[0] * 0.97 and area.max() <= scale[1] + 1e-9
    assert log_ratio.min() >= np.log(ratio[0]) - 0.02 and log_ratio.max() <= np.log(ratio[1]) + 0.02
    assert ks_2samp(area, ref_area).pvalue > 1e-3 and ks_2samp(log_ratio, ref_log_ratio).pvalue > 1e-3
    assert abs(flips - n / 2) <= 4 * (n * 0.25) ** 0.5  # binomial(n, 0.5): 4 standard deviations


def test_pixel_cache_holds_the_decoded_images_within_its_budget_for_views_and_workers(tmp_path):
    from diml.data.files import make_file_split
    from diml.data.pixel_cache import cache_pixels

    relpaths = []
    for index in range(6):
        relpath = f"c{index % 2}/{index}.jpg"
        (tmp_path / relpath).parent.mkdir(exist_ok=True)
        natural_image(index, width=40 + index, height=30).save(tmp_path / relpath, quality=90)
        relpaths.append(relpath)
    split = make_file_split(tmp_path, relpaths, [index % 2 for index in range(6)], {0: "a", 1: "b"},
                            Uint8EvalTransform(16), None, skip_bad_images=False, split_name="t")
    decoded = [split.load_pixels(index) for index in range(6)]
    budget = sum(image.size for image in decoded[:4])
    cache = cache_pixels(split, budget, threads=2)
    assert len(cache) == 4 and cache.nbytes == budget and split.pixel_cache is cache
    for index in range(6):
        assert np.array_equal(split.load_pixels(index), decoded[index])  # cached or not, the same pixels
    view = split.select_classes([1])  # other indices, the same image ids
    assert all(np.array_equal(view.load_pixels(i), decoded[2 * i + 1]) for i in range(len(view)))
    loader = torch.utils.data.DataLoader(split, batch_size=3, num_workers=2)
    pixels = torch.cat([batch[0].pixels for batch in loader])
    assert all(torch.equal(pixels[i], split[i][0].pixels) for i in range(6))
    for (path, _) in [(tmp_path / p, None) for p in relpaths]:
        path.unlink()  # the cached images no longer need their files
    assert np.array_equal(split.load_pixels(0), decoded[0])
    with pytest.raises(FileNotFoundError):
        split.load_pixels(5)
    with pytest.raises(ValueError, match="max_bytes must be > 0"):
        cache_pixels(split, 0)
