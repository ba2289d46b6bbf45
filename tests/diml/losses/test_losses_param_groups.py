"""Loss-parameter groups: the authors' per-loss learning rates, no weight decay, one group per loss with parameters."""

import pytest
import torch

from diml.losses import AUTHORS_LOSS_RATES, build_loss, list_losses, loss_param_groups

MODEL_LR = 1e-5
# The authors' values, read from wl-zhao/DIML parameters.py and criteria/*.py (written out, not imported).
EXPECTED_LR = {"margin": 5e-4, "proxynca": 50 * MODEL_LR, "softtriple": MODEL_LR, "softmax": 1e-5, "arcface": 5e-4,
               "proxyanchor": 100 * MODEL_LR}


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_gets_the_authors_group_or_none(name):
    loss = build_loss(name, None, num_classes=5, embed_dim=8)
    own = [p for p in loss.parameters() if p.requires_grad]
    groups = loss_param_groups(loss, model_lr=MODEL_LR)
    if not own:
        assert groups == [] and name not in EXPECTED_LR
        return
    assert len(groups) == 1
    group = groups[0]
    assert group["lr"] == pytest.approx(EXPECTED_LR[name], rel=1e-12)
    assert group["weight_decay"] == 0.0 and group["name"] == "loss"
    assert {id(p) for p in group["params"]} == {id(p) for p in own}


def test_an_optimizer_keeps_the_groups_rates_and_zero_decay():
    model = torch.nn.Linear(4, 8)
    loss = build_loss("proxynca", None, num_classes=3, embed_dim=8)
    groups = [{"params": list(model.parameters()), "lr": MODEL_LR, "name": "model"}]
    groups += loss_param_groups(loss, model_lr=MODEL_LR)
    optimizer = torch.optim.Adam(groups, lr=MODEL_LR, weight_decay=4e-4)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ("model", MODEL_LR, 4e-4), ("loss", 50 * MODEL_LR, 0.0)]


def test_explicit_rate_and_decay_and_errors():
    loss = build_loss("margin", None, num_classes=3, embed_dim=8)
    (group,) = loss_param_groups(loss, model_lr=1e-5, lr=2e-3, weight_decay=1e-4)
    assert group["lr"] == 2e-3 and group["weight_decay"] == 1e-4
    assert loss_param_groups(build_loss("margin", {"learn_beta": False}, num_classes=3, embed_dim=8),
                             model_lr=1e-5) == []
    with pytest.raises(ValueError, match="loss lr must be a positive number"):
        loss_param_groups(loss, model_lr=1e-5, lr=0.0)
    with pytest.raises(ValueError, match="no learning rate of its own in the authors' code"):
        loss_param_groups(loss, model_lr=1e-5, name="npair")
    assert set(AUTHORS_LOSS_RATES) == set(EXPECTED_LR)
