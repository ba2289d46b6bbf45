"""The DIML training losses and their gradients on a fixed batch, pinned to stored values.

A change to the solver (kernels, blocking, normalisation, stopping rule) that moves what training sees must show up
here, not in a results table weeks later (issue 27: issue 19's thread work moved DIML-trained quickstart runs by
2-3 R@1 points and no test noticed; it was float noise, but nothing said so).

The batch is what a quickstart step feeds the loss: 32 embeddings (16 classes x 2), D = 128, a 4 x 4 grid, built
from a fixed NumPy seed (PCG64 gives the same numbers on every machine, unlike a vectorised torch.randn), with
class structure so that the plans are far from uniform. For each loss we store the loss, the gradient's norm and
its projections on 8 fixed random directions (every gradient entry moves them); values in
``pinned_diml_losses.json``.

Tolerances, from the dtype and the path:
- float32 with the training solver options (``TRIAL_TRAINING_OT``: tol 1e-4, the numba kernels on a CPU): the
  inputs and the products carry float32 rounding (~1e-7 relative), and another CPU (AVX2 vs AVX-512), thread count or
  reduction order moves the last digits; a problem whose marginal error sits at the tolerance at a check may stop one
  check (5 iterations) earlier or later, moving its plan by < 1e-4, diluted over the batch's ~500 problems.
  Measured against the stored values (AMD EPYC, AVX-512): 0 on the same machine, also with
  ATEN_CPU_CAPABILITY=default or avx2; 1.6e-7 relative with NUMBA_CPU_NAME=generic (the kernels compiled without
  AVX-512); 3e-8 through the tensor solver (DIML_OT_CPU_KERNEL=0); 1.6e-8 at commit f203d5b, before issue 19's
  thread work. Bound: 1e-5 relative on the loss and on each gradient figure (projections relative to the gradient
  norm), 60 x the largest of these. Uniform marginals instead of the cross-attention or eps 0.05 -> 0.06
  moves them by far more (checked in :func:`test_the_pin_catches_a_changed_solver`).
- float64 (the tensor solver, solved to tol 1e-10): 1e-9 relative; measured 1.5e-16 in all the runs above.

To regenerate after a change that is MEANT to move training (say so in the commit message):
``python tests/diml/losses/test_losses_pinned.py --write``.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest
import torch

from diml.losses import build_loss
from diml.options import TRIAL_TRAINING_OT, OTOptions

STORE = pathlib.Path(__file__).with_name("pinned_diml_losses.json")
CASES = {  # the quickstart's two DIML losses, as the pipeline builds them
    "margin-diml/distance": dict(name="margin", params={}, miner="distance"),
    "multisimilarity-diml": dict(name="multisimilarity", params={}, miner=None),
}
DTYPES = {"float32": (torch.float32, TRIAL_TRAINING_OT, 1e-5), "float64": (torch.float64, OTOptions(tol=1e-10), 1e-9)}
CLASSES, PER_CLASS, DIM, GRID, DIRECTIONS = 16, 2, 128, 4, 8


def fixed_batch(dtype: torch.dtype):
    """``global (32, 128)``, ``local (32, 128, 16)``, ``labels (32,)``: a component all images share (as in an
    untrained network, whose embeddings are all alike), class centres, and per-image and per-cell noise."""
    rng = np.random.default_rng(20261204)
    shared = rng.normal(size=(1, DIM, GRID * GRID))
    centres = rng.normal(size=(CLASSES, DIM, GRID * GRID))
    local = (2.0 * shared + np.repeat(centres, PER_CLASS, axis=0)
             + 1.5 * rng.normal(size=(CLASSES * PER_CLASS, DIM, GRID * GRID)))
    global_ = local.mean(axis=2) + 0.1 * rng.normal(size=(CLASSES * PER_CLASS, DIM))
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    directions = rng.normal(size=(DIRECTIONS, global_.size + local.size))
    return (torch.tensor(global_, dtype=dtype), torch.tensor(local, dtype=dtype), torch.tensor(labels),
            torch.tensor(directions / np.linalg.norm(directions, axis=1, keepdims=True)))


def loss_figures(case: str, dtype_name: str, ot: OTOptions | None = None) -> dict[str, float]:
    """The loss, its gradient norm and the gradient's projections on the fixed directions (float64 numbers)."""
    dtype, default_ot, _ = DTYPES[dtype_name]
    torch.manual_seed(0)
    global_emb, local_emb, labels, directions = fixed_batch(dtype)
    global_emb.requires_grad_(True)
    local_emb.requires_grad_(True)
    loss = build_loss(**CASES[case], similarity="diml", num_classes=CLASSES, embed_dim=DIM, ot=ot or default_ot)
    loss = loss.to(dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a trial's worker: one intra-op thread per CPU it asks for (the quickstart: 1)
    try:
        value = loss(global_emb, local_emb, labels)
        value.backward()
    finally:
        torch.set_num_threads(threads)
    grad = torch.cat([global_emb.grad.reshape(-1), local_emb.grad.reshape(-1)]).double()
    return {"loss": float(value.detach()), "grad_norm": float(grad.norm()),
            **{f"grad_dot_{k}": float(p) for k, p in enumerate(directions @ grad)}}


def _stored() -> dict:
    return json.loads(STORE.read_text())


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", list(CASES))
def test_diml_losses_and_gradients_match_the_pinned_values(case, dtype_name):
    got = loss_figures(case, dtype_name)
    want = _stored()[dtype_name][case]
    rel = DTYPES[dtype_name][2]
    scale = want["grad_norm"]
    assert got["loss"] == pytest.approx(want["loss"], rel=rel), "loss"
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=rel), "gradient norm"
    for key in want:
        if key.startswith("grad_dot_"):  # projections near 0 are compared relative to the gradient's size
            assert abs(got[key] - want[key]) <= rel * scale, key


def test_the_pin_catches_a_changed_solver():
    """What the float32 pin must see: the marginals without the cross-attention, or another eps."""
    stored = _stored()["float32"]["multisimilarity-diml"]
    rel = DTYPES["float32"][2]
    for changed in (TRIAL_TRAINING_OT.replace(eps=0.06), TRIAL_TRAINING_OT.replace(marginals="uniform")):
        got = loss_figures("multisimilarity-diml", "float32", ot=changed)
        moved = max(abs(got["loss"] - stored["loss"]) / abs(stored["loss"]),
                    abs(got["grad_norm"] - stored["grad_norm"]) / stored["grad_norm"])
        assert moved > 100 * rel, changed


def write() -> None:
    values = {name: {case: loss_figures(case, name) for case in CASES} for name in DTYPES}
    STORE.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    print(f"wrote {STORE}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/diml/losses/test_losses_pinned.py --write  (only for a change meant to move "
                 "training)")
    write()
