"""Every registered backbone builds and gives the DIML shapes; weights load through both paths; the registry raises."""

import pytest
import torch
import torchvision
from torch import nn

from diml.models import backbones
from diml.models import BackboneEntry, build_model, get_backbone_entry, list_backbones, register_backbone

EXPECTED = {"resnet18", "resnet34", "resnet50", "resnet101", "googlenet", "inception_v3", "efficientnet_b0",
            "convnext_tiny", "vit_b_16"}


def test_registry_lists_every_backbone_and_rejects_unknown_and_duplicate_names():
    assert EXPECTED <= set(list_backbones())
    with pytest.raises(ValueError, match="unknown backbone 'resnet7'; choose one of .*resnet18.*vit_b_16"):
        build_model("resnet7")
    with pytest.raises(ValueError, match="'resnet18' is already registered"):
        register_backbone(get_backbone_entry("resnet18"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_backbone_builds_and_returns_diml_shapes(name):
    torch.manual_seed(0)
    model = build_model(name, embed_dim=8, grid=3)
    side = 80 if name == "inception_v3" else 32
    global_emb, local_emb = model(torch.randn(2, 3, side, side))
    assert global_emb.shape == (2, 8) and local_emb.shape == (2, 8, 9)
    assert torch.isfinite(global_emb).all() and torch.isfinite(local_emb).all()
    (global_emb.square().sum() + local_emb.square().sum()).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []  # DDP without find_unused_parameters needs every parameter in the graph
    with torch.no_grad():
        cells = model.eval().cell_embeddings(torch.randn(1, 3, side, side))
    assert cells.shape == (1, 8, 3, 3)
    assert model.head.in_features == get_backbone_entry(name).out_channels
    assert not any(k.startswith(("fc.", "heads.", "aux", "AuxLogits")) for k in model.backbone.state_dict())


def test_cnn_global_input_matches_torchvision_pooled_features_with_googlenet_input_transform(tmp_path):
    """Independent reference: torchvision's own forward with the classifier replaced by the identity."""
    torch.manual_seed(0)
    googlenet_kwargs = {"aux_logits": True, "transform_input": True, "init_weights": True}
    for name, kwargs in (("resnet18", {}), ("googlenet", googlenet_kwargs)):
        reference = torchvision.models.get_model(name, weights=None, **kwargs).eval()
        path = tmp_path / f"{name}.pth"
        torch.save(reference.state_dict(), path)  # a torchvision checkpoint (googlenet's has aux heads)
        reference.fc = nn.Identity()
        model = build_model(name, weights=str(path)).eval()
        images = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            expected = reference(images)
            _, global_input = model.features(images)
        torch.testing.assert_close(global_input, expected, rtol=1e-4, atol=1e-5)


def test_vit_wrapper_matches_torchvision_and_other_sizes_interpolate_positions():
    """Reference: torchvision's own ViT forward (built for 32 px, so the check stays cheap) with an identity head."""
    torch.manual_seed(0)
    reference = torchvision.models.vit_b_16(weights=None, image_size=32).eval()
    wrapper = backbones.ViTFeatures(reference).eval()
    reference.heads = nn.Identity()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fmap, cls = wrapper(images)
        torch.testing.assert_close(cls, reference(images), rtol=1e-4, atol=1e-4)
        tokens = reference.encoder(torch.cat([reference.class_token.expand(2, -1, -1),
                                              reference._process_input(images)], dim=1))
    assert fmap.shape == (2, 768, 2, 2)
    torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), tokens[:, 1:], rtol=1e-4, atol=1e-4)  # row-major
    model = build_model("vit_b_16", embed_dim=4).eval()  # positions for 224 px (14 x 14 patches)
    with torch.no_grad():
        small_map, _ = model.features(torch.randn(1, 3, 48, 64))
    assert small_map.shape == (1, 768, 3, 4)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 3, 40, 40))


def test_weights_path_round_trip_and_errors(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet18", weights=str(path))
    loaded = model.backbone.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model("resnet18", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="does not match backbone 'resnet34'.*torchvision.models.resnet34"):
        build_model("resnet34", weights=str(path))
    with pytest.raises(ValueError, match="exclusive"):
        build_model("resnet18", pretrained=True, weights=str(path))


def test_pretrained_goes_through_torchvision_weights_api(tmp_path, monkeypatch):
    """``pretrained=True`` loads ``ResNet18_Weights.DEFAULT`` from the torch hub cache (pre-seeded: no internet)."""
    torch.manual_seed(2)
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    source = torchvision.models.resnet18(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / weights.url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_model("resnet18", pretrained=True)
    key = "layer4.1.conv2.weight"
    assert torch.equal(model.backbone.state_dict()[key], source.state_dict()[key])


def test_a_new_backbone_can_be_registered(monkeypatch):
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))  # leave the real registry untouched
    entry = get_backbone_entry("resnet18")
    custom = BackboneEntry("resnet18_for_test_registry", "resnet18", entry.make, 512, ("fc.",), 32)
    register_backbone(custom)
    assert "resnet18_for_test_registry" in list_backbones()
    assert build_model("resnet18_for_test_registry", embed_dim=4).head.out_features == 4
