"""The options of DIML's optimal transport: one frozen dataclass, every default written here once.

:class:`OTOptions` crosses every boundary: the solver (:func:`diml.ot.sinkhorn`, :func:`diml.ot.match`,
:func:`diml.ot.structural_similarity`, ...), the structural losses (:func:`diml.losses.build_loss`), the evaluation
(:func:`diml.evaluation.evaluate`), the explanations (:mod:`diml.explain`) and the pipeline's spec, whose defaults are
:data:`TRIAL_EVALUATION_OT` and :data:`TRIAL_TRAINING_OT`.  Invalid values raise ``ValueError`` when the options are
built, with a one-line message naming the field and the fix.

This module imports no torch (nor anything of :mod:`diml.ot`, which re-exports it): the pipeline's spec reads its
defaults in processes that never load a model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

GRAD_MODES = ("plan_constant", "autodiff")
MARGINAL_MODES = ("cross_attention", "uniform")


def _check_int(name, value, *, minimum, example) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} (got {value!r}); pass e.g. {example}")


@dataclass(frozen=True)
class OTOptions:
    """Options of the entropic OT between the cells of two images (Zhao et al., ICCV 2021: eps 0.05, cross-attention
    marginals).

    Attributes:
        eps: entropic regularisation :math:`\\varepsilon` (kernel ``exp(-C / eps)``).
        marginals: ``"cross_attention"`` (paper) or ``"uniform"``; unused by :func:`diml.ot.sinkhorn`, whose
            marginals are given.
        max_iter: Sinkhorn iterations at most before the unconverged problems switch to the float64 Newton polish
            (slow problems switch earlier).
        tol: target marginal error ``|T 1 - a|_1 + |T^T 1 - b|_1`` per problem.
        check_every: iterations between two convergence checks (each check is one host sync).
        newton_steps: maximal Newton steps for problems Sinkhorn did not converge (0 disables the polish).
        grad: ``"plan_constant"`` (the plan carries no gradient, as the paper) or ``"autodiff"`` (differentiate
            through every iteration).
    """

    eps: float = 0.05
    marginals: str = "cross_attention"
    max_iter: int = 300
    tol: float = 1e-6
    check_every: int = 5
    newton_steps: int = 30
    grad: str = "plan_constant"

    def __post_init__(self) -> None:
        eps, tol = self.eps, self.tol
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"eps must be a finite number > 0 (got {eps!r}); pass e.g. eps={OTOptions.eps}")
        if self.marginals not in MARGINAL_MODES:
            raise ValueError(f"marginals must be one of {MARGINAL_MODES} (got {self.marginals!r})")
        _check_int("max_iter", self.max_iter, minimum=1, example=f"max_iter={OTOptions.max_iter}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"tol must be a finite number >= 0 (got {tol!r}); pass e.g. tol={OTOptions.tol}")
        _check_int("check_every", self.check_every, minimum=1, example=f"check_every={OTOptions.check_every}")
        _check_int("newton_steps", self.newton_steps, minimum=0,
                   example=f"newton_steps={OTOptions.newton_steps} (0 disables the polish)")
        if self.grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {GRAD_MODES} (got {self.grad!r})")

    def replace(self, **changes) -> OTOptions:
        """A copy with ``changes`` (validated); an unknown name raises ``ValueError`` listing the fields."""
        return OTOptions.from_dict({**self.as_dict(), **changes})

    def as_dict(self) -> dict:
        """``{"eps": .., "marginals": .., ...}``: every field (e.g. to log it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values) -> OTOptions:
        """Options from a mapping of field names (missing ones take the defaults); unknown names raise
        ``ValueError`` listing the allowed ones."""
        if not isinstance(values, dict):
            raise ValueError(f"OT options must be a dict of {list(FIELDS)} (got {type(values).__name__})")
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise ValueError(f"OT options have no field {unknown[0]!r}; allowed: {list(FIELDS)}")
        return cls(**values)


FIELDS = tuple(f.name for f in dataclasses.fields(OTOptions))

TRIAL_EVALUATION_OT = OTOptions(max_iter=200)
"""The evaluation inside a training run (the defaults of the pipeline spec's ``evaluation.ot``): Sinkhorn is capped
at 200 iterations before the Newton polish, as the pipeline has done since its first version (the library default,
300, came later with the solver's fast path); kept so that trial results do not change."""

TRIAL_TRAINING_OT = TRIAL_EVALUATION_OT.replace(tol=1e-4)
"""The OT inside training losses (the defaults of the pipeline spec's ``loss.ot``).  The plan is a constant for the
gradient there, so it is solved to a marginal error of 1e-4; evaluation keeps 1e-6.  (Checking every 10 iterations
with at most 5 Newton steps cut the CPU operation count by 30 % but measured no faster on an H100:
benchmarks/results/h100-4.)"""


def as_options(ot) -> OTOptions:
    """``ot`` itself if it is an :class:`OTOptions`, else a ``ValueError`` naming the fix."""
    if not isinstance(ot, OTOptions):
        raise ValueError(f"ot must be a diml.ot.OTOptions (got {type(ot).__name__}); pass e.g. "
                         "ot=OTOptions(eps=0.1), or OTOptions.from_dict(...) for a dict")
    return ot

