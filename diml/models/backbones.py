"""Torchvision backbones that keep their last spatial feature map.

Every backbone here is an ``nn.Module`` whose ``forward(images (B, 3, H, W))`` returns a :class:`BackboneOutput`:
``feature_map (B, C, h, w)`` (the unpooled last map) and ``global_input (B, C)`` (what the embedding head sees for
the global embedding: the spatial average of the map for CNNs, the class token for ViT).

Backbones are chosen by name from a small registry (:func:`register_backbone` raises on a duplicate name, unlike
timm which only warns). Submodules keep the attribute names they have in the torchvision model, so a torchvision
state dict (e.g. an ImageNet checkpoint copied to a cluster without internet) loads by key; only the classifier
heads are dropped.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torchvision
from torch import nn
from torch.nn import functional as F


class BackboneOutput(NamedTuple):
    """``feature_map: (B, C, h, w)``, ``global_input: (B, C)``."""

    feature_map: torch.Tensor
    global_input: torch.Tensor


@dataclass(frozen=True)
class BackboneEntry:
    """How to build one named backbone.

    ``make(tv_model, transform_input) -> nn.Module`` wraps a torchvision model (built by
    ``torchvision.models.get_model(tv_name, weights=...)``) into a backbone; ``dropped`` are the state-dict
    prefixes of the torchvision heads the wrapper discards; ``min_size`` is the smallest input side that still
    yields a non-empty feature map.
    """

    name: str
    tv_name: str
    make: Callable[[nn.Module, bool], nn.Module]
    out_channels: int
    dropped: tuple[str, ...]
    min_size: int
    tv_kwargs: tuple[tuple[str, object], ...] = ()


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(entry: BackboneEntry) -> None:
    """Add a backbone to the registry; a name that is already registered raises ``ValueError``."""
    if entry.name in _REGISTRY:
        raise ValueError(f"backbone {entry.name!r} is already registered; choose another name")
    _REGISTRY[entry.name] = entry


def list_backbones() -> list[str]:
    """Names accepted by :func:`diml.models.build_model`, sorted."""
    return sorted(_REGISTRY)


def get_backbone_entry(name: str) -> BackboneEntry:
    """The registry entry for ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(list_backbones())}")
    return _REGISTRY[name]


# The ImageNet statistics every pretrained backbone here expects its input normalised with (diml.data's transforms
# apply them); GoogLeNet / Inception re-normalise that input to the (x - 0.5) / 0.5 their torchvision weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SequentialFeatures(nn.Module):
    """Runs the named torchvision submodules in order; the global input is the spatial mean of the map.

    If ``transform_input`` is set, ImageNet-normalised images are first re-normalised to ``(x - 0.5) / 0.5`` as
    torchvision's GoogLeNet and Inception-v3 do for their pretrained weights.
    """

    def __init__(self, tv_model: nn.Module, names: list[str], transform_input: bool = False) -> None:
        super().__init__()
        self.names = list(names)
        for name in self.names:
            self.add_module(name, getattr(tv_model, name))
        self.transform_input = transform_input
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.register_buffer("_scale", std / 0.5, persistent=False)
        self.register_buffer("_shift", (mean - 0.5) / 0.5, persistent=False)

    def forward(self, images: torch.Tensor) -> BackboneOutput:
        """``images: (B, 3, H, W)`` -> ``BackboneOutput((B, C, h, w), (B, C))``."""
        x = images * self._scale + self._shift if self.transform_input else images
        for name in self.names:
            x = getattr(self, name)(x)
        return BackboneOutput(x, x.mean(dim=(2, 3)))


class ViTFeatures(nn.Module):
    """A torchvision ViT whose patch tokens are reshaped to a map ``(B, C, H/p, W/p)``; the class token is the
    global input.

    Unlike torchvision's ViT, any input side that is a multiple of the patch size works: the positional embedding
    of the patch tokens is resized bicubically from the pretraining grid to the current one.
    """

    def __init__(self, tv_model: nn.Module) -> None:
        super().__init__()
        self.patch_size = tv_model.patch_size
        self.hidden_dim = tv_model.hidden_dim
        self.conv_proj = tv_model.conv_proj
        self.class_token = tv_model.class_token
        self.encoder = tv_model.encoder

    def _positional_embedding(self, n_h: int, n_w: int) -> torch.Tensor:
        pos = self.encoder.pos_embedding  # (1, 1 + N, C)
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        side = int(math.isqrt(patch_pos.shape[1]))
        if (side, side) != (n_h, n_w):
            grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(n_h, n_w), mode="bicubic", align_corners=False)
            patch_pos = grid.permute(0, 2, 3, 1).reshape(1, n_h * n_w, -1)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(self, images: torch.Tensor) -> BackboneOutput:
        """``images: (B, 3, H, W)`` with ``H, W`` multiples of the patch size -> ``((B, C, H/p, W/p), (B, C))``."""
        b, _, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"images of size {h}x{w}: vit needs sides that are multiples of {p}; set image_size")
        n_h, n_w = h // p, w // p
        tokens = self.conv_proj(images).reshape(b, self.hidden_dim, n_h * n_w).permute(0, 2, 1)
        tokens = torch.cat([self.class_token.expand(b, -1, -1), tokens], dim=1)
        tokens = tokens + self._positional_embedding(n_h, n_w)
        tokens = self.encoder.ln(self.encoder.layers(self.encoder.dropout(tokens)))
        fmap = tokens[:, 1:].permute(0, 2, 1).reshape(b, self.hidden_dim, n_h, n_w)
        return BackboneOutput(fmap, tokens[:, 0])


def _resnet(tv_model: nn.Module, transform_input: bool) -> nn.Module:
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    return SequentialFeatures(tv_model, names)


def _googlenet(tv_model: nn.Module, transform_input: bool) -> nn.Module:
    names = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
             "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
             "inception5a", "inception5b"]
    return SequentialFeatures(tv_model, names, transform_input)


def _inception_v3(tv_model: nn.Module, transform_input: bool) -> nn.Module:
    names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
             "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
             "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]
    return SequentialFeatures(tv_model, names, transform_input)


def _efficientnet(tv_model: nn.Module, transform_input: bool) -> nn.Module:
    return SequentialFeatures(tv_model, ["features"])


def _convnext(tv_model: nn.Module, transform_input: bool) -> nn.Module:
    # ConvNeXt's head normalises (LayerNorm2d) before its linear layer; keep that norm, applied at every position,
    # so pretrained features keep their scale. It stays under "classifier.0" to match the torchvision keys.
    tv_model.classifier = nn.Sequential(tv_model.classifier[0])
    return SequentialFeatures(tv_model, ["features", "classifier"])


def _vit(tv_model: nn.Module, transform_input: bool) -> nn.Module:
    return ViTFeatures(tv_model)


def _register_torchvision_backbones() -> None:
    aux = (("aux_logits", False), ("init_weights", True))
    for name, channels in [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("resnet101", 2048)]:
        register_backbone(BackboneEntry(name, name, _resnet, channels, ("fc.",), 32))
    register_backbone(BackboneEntry("googlenet", "googlenet", _googlenet, 1024, ("aux1.", "aux2.", "fc."), 32, aux))
    register_backbone(
        BackboneEntry("inception_v3", "inception_v3", _inception_v3, 2048, ("AuxLogits.", "fc."), 75, aux)
    )
    register_backbone(BackboneEntry("efficientnet_b0", "efficientnet_b0", _efficientnet, 1280, ("classifier.",), 32))
    register_backbone(BackboneEntry("convnext_tiny", "convnext_tiny", _convnext, 768, ("classifier.",), 32))
    register_backbone(BackboneEntry("vit_b_16", "vit_b_16", _vit, 768, ("heads.",), 16))


_register_torchvision_backbones()


NO_WEIGHTS = ("none", "false")


def weights_name(backbone: str, pretrained: bool | str | None) -> str | None:
    """The canonical torchvision weights name that ``pretrained`` selects for ``backbone``, or ``None`` for none.

    ``pretrained`` is a member name of the backbone's torchvision weights enum (``IMAGENET1K_V1``, ``IMAGENET1K_V2``,
    ``DEFAULT``, ...; case-insensitive), ``True`` (= ``"DEFAULT"``), or ``False`` / ``None`` / ``"none"`` /
    ``"false"`` (random initialisation). ``DEFAULT`` resolves to the member it aliases (``IMAGENET1K_V2`` for
    resnet50). Only torchvision's enum is read: nothing is downloaded. An unknown name raises ``ValueError`` listing
    the backbone's names.
    """
    entry = get_backbone_entry(backbone)
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        pretrained = "DEFAULT"
    if not isinstance(pretrained, str):
        raise ValueError(f"pretrained must be true, false or a weights name, got {pretrained!r}")
    if pretrained.lower() in NO_WEIGHTS:
        return None
    enum = torchvision.models.get_model_weights(entry.tv_name)
    members = enum.__members__
    key = pretrained.upper()
    if key not in members:
        raise ValueError(
            f"unknown weights {pretrained!r} for backbone {backbone!r}; choose one of {', '.join(members)} or false"
        )
    return members[key].name


def build_backbone(name: str, *, pretrained: bool | str | None = False, weights_path: str | None = None) -> nn.Module:
    """Build the named backbone (``out_channels`` and ``min_size`` attributes are set on it).

    ``pretrained`` (see :func:`weights_name`) goes through torchvision's weights API (downloaded once into the torch
    hub cache, ``$TORCH_HOME/hub/checkpoints``); ``weights_path`` loads a torchvision state dict from a local file
    with ``torch.load(..., weights_only=True)``.
    """
    entry = get_backbone_entry(name)
    weights = weights_name(name, pretrained)
    if weights is not None and weights_path is not None:
        raise ValueError("pretrained weights and weights=PATH are exclusive: set only one")
    kwargs = dict(entry.tv_kwargs)
    if weights is not None:
        kwargs.pop("init_weights", None)
        kwargs.pop("aux_logits", None)
    tv_model = torchvision.models.get_model(entry.tv_name, weights=weights, **kwargs)
    backbone = entry.make(tv_model, weights is not None or weights_path is not None)
    if weights_path is not None:
        load_backbone_weights(backbone, entry, weights_path)
    backbone.out_channels = entry.out_channels
    backbone.min_size = entry.min_size
    return backbone


def load_backbone_weights(backbone: nn.Module, entry: BackboneEntry, path: str) -> None:
    """Load a torchvision state dict file into ``backbone``.

    Every backbone parameter and buffer must be in the file; extra keys are accepted only under the dropped
    classifier heads (``entry.dropped``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist; pass the path of a saved state dict")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path!r} does not hold a state dict (got {type(state).__name__})")
    result = backbone.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys if not k.startswith(entry.dropped)]
    if result.missing_keys or unexpected:
        raise ValueError(
            f"weights file {path!r} does not match backbone {entry.name!r}: missing {result.missing_keys[:5]}, "
            f"unexpected {unexpected[:5]}; save the state dict of torchvision.models.{entry.tv_name}"
        )
