"""Optimizer parameter groups for a loss's own parameters (margin beta, proxies, class weights).

The authors (wl-zhao/DIML ``criteria/__init__.py``, from Roth et al.'s benchmark) add one group per loss with the
loss's own learning rate and *no* ``weight_decay`` key; their optimizer is built as ``torch.optim.Adam(to_optim)``
without a global weight decay, so the loss parameters train without weight decay while the network group has
``--decay 4e-4``. Their rates (``parameters.py`` defaults, ``criteria/*.py``):

============  ====================================  ==========================================
loss          rate                                  authors' source
============  ====================================  ==========================================
margin        5e-4 (class margins beta)             ``--loss_margin_beta_lr``
proxynca      50 x the network's lr (proxies)       ``opt.lr * --loss_proxynca_lrmulti``
softtriple    1 x the network's lr (centres)        ``opt.lr * --loss_softtriplet_lrmulti``
softmax       1e-5 (class weights)                  ``--loss_softmax_lr``
arcface       5e-4 (class weights)                  ``--loss_arcface_lr``
============  ====================================  ==========================================

``proxyanchor`` is not in the authors' study; its rate is Kim et al.'s (proxies at 100 x the network's lr).
Losses without parameters get no group.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from torch import nn


class LossRate(NamedTuple):
    """A loss's learning rate: ``absolute`` (a fixed value) or ``multiple`` of the network's lr (one is ``None``)."""

    absolute: float | None = None
    multiple: float | None = None

    def resolve(self, model_lr: float) -> float:
        return self.absolute if self.absolute is not None else self.multiple * model_lr


AUTHORS_LOSS_RATES: dict[str, LossRate] = {
    "margin": LossRate(absolute=5e-4),
    "proxynca": LossRate(multiple=50.0),
    "softtriple": LossRate(multiple=1.0),
    "softmax": LossRate(absolute=1e-5),
    "arcface": LossRate(absolute=5e-4),
    "proxyanchor": LossRate(multiple=100.0),  # not in the authors' study: Kim et al. 2020
}
# The authors' loss groups carry no weight decay.
AUTHORS_LOSS_WEIGHT_DECAY = 0.0


def authors_loss_lr(name: str, model_lr: float) -> float:
    """The authors' learning rate for the parameters of loss ``name`` when the network trains at ``model_lr``."""
    if name not in AUTHORS_LOSS_RATES:
        raise ValueError(
            f"loss {name!r} has no learning rate of its own in the authors' code; set the loss learning rate "
            f"explicitly (losses with one: {', '.join(sorted(AUTHORS_LOSS_RATES))})"
        )
    return AUTHORS_LOSS_RATES[name].resolve(model_lr)


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def loss_param_groups(loss: nn.Module, *, model_lr: float, lr: float | None = None,
                      weight_decay: float = AUTHORS_LOSS_WEIGHT_DECAY, name: str | None = None) -> list[dict]:
    """Parameter groups for the trainable parameters of ``loss`` (a :class:`~diml.losses.MetricLoss`).

    Returns ``[]`` when the loss has no trainable parameters, else one group
    ``{"params", "lr", "weight_decay", "name": "loss"}``. ``lr=None`` takes the authors' rate for the loss
    (:data:`AUTHORS_LOSS_RATES`, looked up by ``name`` or ``loss.name``); ``weight_decay`` defaults to the authors'
    0. An explicit ``weight_decay`` key in the group keeps the optimizer's own default from applying to it.
    """
    _positive("model_lr", model_lr)
    if lr is not None:
        _positive("loss lr", lr)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"loss weight_decay must be a number >= 0, got {weight_decay!r}")
    params = [p for p in loss.parameters() if p.requires_grad]
    if not params:
        return []
    loss_name = name if name is not None else getattr(loss, "name", None)
    rate = lr if lr is not None else authors_loss_lr(str(loss_name), model_lr)
    return [{"params": params, "lr": rate, "weight_decay": float(weight_decay), "name": "loss"}]
