"""Registries and build_loss: names, hyperparameter validation, errors that name the fix."""

import pytest
import torch

from diml.losses import MetricLoss, build_loss, list_losses, list_miners
from diml.losses.catalog import LOSSES
from diml.losses.registry import Param, Registry, number
from diml.ot import OTOptions

PAPER_GRID = ["margin", "triplet", "contrastive", "multisimilarity", "lifted", "npair", "proxynca", "proxyanchor",
              "arcface", "softtriple", "angular", "histogram", "snr", "quadruplet", "softmax", "circle"]


def build(name="margin", params=None, **kwargs):
    kwargs = {"num_classes": 4, "embed_dim": 8} | kwargs
    return build_loss(name, params, **kwargs)


def test_every_name_of_the_paper_grid_is_registered():
    assert sorted(PAPER_GRID) == list_losses()
    assert {"random", "semihard", "softhard", "distance"} <= set(list_miners())


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_builds_with_its_defaults(name):
    loss = build(name)
    assert isinstance(loss, MetricLoss) and loss.name == name and loss.similarity == "global"


@pytest.mark.parametrize("miner", list_miners())
def test_every_miner_builds_and_mines(miner):
    loss = build("triplet", miner=miner)
    g = torch.randn(6, 8)
    assert loss.miner is not None
    assert len(loss.miner(g, torch.tensor([0, 0, 1, 1, 2, 2]))) in (3, 4)


def test_unknown_loss_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown loss 'tripplet'; known: angular, arcface, .*triplet"):
        build("tripplet")


def test_unknown_miner_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown miner 'hardest'; known: batchhard, distance"):
        build("triplet", miner="hardest")


def test_unknown_hyperparameter_is_named():
    with pytest.raises(ValueError, match=r"loss 'margin' has no hyperparameter 'betta'; allowed: \['beta', "):
        build("margin", {"betta": 0.6})
    with pytest.raises(ValueError, match=r"miner 'semihard' has no hyperparameter 'margn'"):
        build("triplet", miner="semihard", miner_params={"margn": 0.1})


@pytest.mark.parametrize(
    "name, params, fragment",
    [
        ("margin", {"beta": -0.6}, "'beta' must be >= 0"),
        ("margin", {"learn_beta": "yes"}, "'learn_beta' must be true or false"),
        ("triplet", {"margin": float("nan")}, "'margin' must be a finite number"),
        ("multisimilarity", {"alpha": 0}, "'alpha' must be > 0"),
        ("histogram", {"n_bins": 6.5}, "'n_bins' must be an int >= 2"),
        ("softtriple", {"centers_per_class": True}, "'centers_per_class' must be an int"),
        ("arcface", {"margin": 120}, "'margin' must be <= 90"),
    ],
)
def test_invalid_hyperparameter_values_are_named(name, params, fragment):
    with pytest.raises(ValueError, match=fragment):
        build(name, params)


def test_invalid_miner_values_are_named():
    with pytest.raises(ValueError, match="'upper_cutoff' must be <= 2"):
        build("triplet", miner="distance", miner_params={"upper_cutoff": 3.0})
    with pytest.raises(ValueError, match="upper_cutoff must exceed lower_cutoff"):
        build("triplet", miner="distance", miner_params={"lower_cutoff": 1.0, "upper_cutoff": 0.8})


@pytest.mark.parametrize("name", ["proxynca", "proxyanchor", "arcface", "softtriple", "softmax", "angular"])
def test_structural_similarity_for_a_global_only_loss_names_the_fix(name):
    with pytest.raises(ValueError, match=rf"loss '{name}' works on the global embedding.*use similarity='global'"):
        build(name, similarity="diml")


def test_combination_errors_name_the_fix():
    with pytest.raises(ValueError, match="similarity must be one of"):
        build(similarity="structural")
    with pytest.raises(ValueError, match="'multisimilarity' selects its own pairs.*pass miner=None"):
        build("multisimilarity", miner="distance")
    with pytest.raises(ValueError, match="miner_params were given without a miner"):
        build("triplet", miner_params={"seed": 1})
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        build(num_classes=0)
    with pytest.raises(ValueError, match="embed_dim must be an int >= 1"):
        build(embed_dim=None)
    with pytest.raises(ValueError, match="loss 'margin' params must be a dict"):
        build("margin", [("beta", 0.6)])


def test_ot_options_are_validated_even_for_global_losses():
    with pytest.raises(ValueError, match=r"ot must be a diml.ot.OTOptions \(got dict\)"):
        build(ot={"eps": 0.05})
    with pytest.raises(ValueError, match=r"OT options have no field 'epsilon'; allowed: \['eps', "):
        build(ot=OTOptions.from_dict({"epsilon": 0.05}))
    with pytest.raises(ValueError, match="eps"):
        build(similarity="diml", ot=OTOptions(eps=-1.0))
    with pytest.raises(ValueError, match="marginals"):
        build(similarity="diml", ot=OTOptions(marginals="attention"))


def test_forward_rejects_bad_inputs_with_the_fix():
    loss = build("margin")
    g, local, y = torch.randn(4, 8), torch.randn(4, 8, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"global_emb must have shape \(B, 8\)"):
        loss(g[:, :5], local, y)
    with pytest.raises(ValueError, match=r"local_emb must have shape \(B, D, R\) = \(4, 8, R\)"):
        loss(g, local[:3], y)
    with pytest.raises(ValueError, match="labels must be int64"):
        loss(g, local, y.int())
    with pytest.raises(ValueError, match=r"labels must be an int64 tensor of shape \(4,\)"):
        loss(g, local, y[:3])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=4\)"):
        loss(g, local, torch.tensor([0, 0, 4, 4]))
    with pytest.raises(ValueError, match="local_emb .* is required with similarity='diml'"):
        build(similarity="diml")(g, None, y)


def test_loss_parameters_are_exposed_for_their_own_learning_rate():
    assert [tuple(p.shape) for p in build("margin").parameters()] == [(4,)]
    assert [tuple(p.shape) for p in build("margin", {"learn_beta": False}).parameters()] == []
    assert [tuple(p.shape) for p in build("proxynca").parameters()] == [(4, 8)]
    assert [tuple(p.shape) for p in build("softtriple").parameters()] == [(8, 8)]
    assert list(build("triplet", miner="distance").parameters()) == []


def test_a_registry_refuses_a_second_registration():
    registry = Registry("widget")
    registry.register("a", params={"x": Param(1.0, number(low=0))})(lambda x: x)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        registry.register("a")(lambda: None)
    assert registry.names() == ["a"]
    with pytest.raises(ValueError, match="loss 'margin' is already registered"):
        LOSSES.register("margin")(lambda: None)
    assert LOSSES.get("margin").factory.__name__ == "_margin"
