"""DIML data: dataset splits (synthetic and the real benchmark formats), transforms and class-balanced sampling.

``build_splits(dataset, ...) -> Splits(train, val, test)``; each split yields ``(image (3, S, S) float, label int)``
and has ``labels`` (np.int64, contiguous within the split), ``num_classes``, ``class_names``, ``load_image(i)`` and
``image_id(i)``; with part annotations, ``part_names``, ``keypoints()`` ``(N, P, 3)`` and ``part_boxes()``
``(N, 4)`` in the evaluation crop (:mod:`diml.data.keypoints`). ``ClassBalancedBatchSampler`` draws P classes x M
images per batch, disjoint across DDP ranks.
"""

from diml.data import formats as _formats  # noqa: F401  (registers cub200, cars196, sop, folder)
from diml.data.base import SplitDataset, Splits
from diml.data.files import BadImageError, ImageFileDataset, skipped_indices, skipped_label
from diml.data.keypoints import EvalGeometry
from diml.data.sampler import ClassBalancedBatchSampler
from diml.data.splits import build_splits, list_datasets, register_dataset
from diml.data.synthetic import SyntheticDataset, SyntheticParts
from diml.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Augmentation, eval_transform, train_transform

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Augmentation",
    "BadImageError",
    "ClassBalancedBatchSampler",
    "EvalGeometry",
    "ImageFileDataset",
    "SplitDataset",
    "Splits",
    "SyntheticDataset",
    "SyntheticParts",
    "build_splits",
    "eval_transform",
    "list_datasets",
    "register_dataset",
    "skipped_indices",
    "skipped_label",
    "train_transform",
]
