"""GPU versions (Triton) of the scaling phase (steps 2-3 of :mod:`diml.ot.sinkhorn`) and the Newton polish.

The batched tensor iteration of :mod:`diml.ot._scaling` costs about ten small kernel launches per Sinkhorn iteration
and a host synchronisation per convergence check; the Newton polish adds some fifty launches and a few host syncs
per step.  At a training batch (112 images, 12,544 problems of ``16 x 16`` or a few hundred mined pairs) the
arithmetic is a few microseconds and the launches and syncs are the step's cost (measured on an H100: the DIML
losses added 35-72 % to a resnet50 step).  Here each phase is **one kernel launch**: one Triton program per problem
holds its ``n x m`` kernel in registers and runs the whole scaling phase (updates, the check every ``check_every``
iterations, the switch rule) or the whole float64 Newton polish (Laplacian, Cholesky, trust region, line search)
for that problem alone, in a ``while`` loop that ends when that problem is done.  No host sync happens inside a
solve; :func:`solve` reads back two integers at its end (the largest iteration and Newton-step counts the result
reports).

The algorithms are those of :mod:`diml.ot._cpu` (the numba kernels, themselves the tensor path's), so a problem
takes the same number of iterations and Newton steps up to a check decided by float rounding, and the results
agree to that rounding (``tests/diml/ot/test_ot_gpu_kernel.py`` runs these kernels in Triton's interpreter on the
CPU against the tensor path).  As there, a problem whose scalings leave ``[e^-30, e^30]`` goes to the Newton polish
instead of having its scalings absorbed.  Served: non-differentiable CUDA solves of kernels that need no
stabilising shifts (DIML's cosine costs at ``eps >= 1/30``), float32, with ``n, m <= 64``; the rest (float64 solves
among them: Triton passes Python floats such as the smallest normal number as float32) keeps the tensor path.

Set ``DIML_OT_GPU_KERNEL=0`` to disable both (then, as without Triton, the tensor path runs).
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
import warnings

import torch

ENABLED = importlib.util.find_spec("triton") is not None and os.environ.get("DIML_OT_GPU_KERNEL", "1") != "0"
# the tests run the kernels on CPU tensors in Triton's interpreter: TRITON_INTERPRET=1 DIML_OT_GPU_INTERPRET=1
INTERPRET = os.environ.get("DIML_OT_GPU_INTERPRET") == "1" and os.environ.get("TRITON_INTERPRET") == "1"
MAX_CELLS = 64  # n and m at most this (one program holds the n x m kernel in registers)
_LOCK = threading.Lock()
_KERNELS: list = []  # (scale kernel, newton kernel) once built


def applies(kernel: torch.Tensor, *, direct: bool, differentiable: bool) -> bool:
    """Whether :func:`solve` serves this solve: Triton present and enabled, CUDA, no autograd, no shifts, and the
    kernels compiled on this device (tried once per device; a failure warns and keeps the tensor path)."""
    return (ENABLED and direct and not differentiable and (kernel.device.type == "cuda" or INTERPRET)
            and kernel.dtype == torch.float32 and max(kernel.shape[1:]) <= MAX_CELLS and _works_on(kernel.device))


_WORKS: dict[str, bool] = {}


def _works_on(device: torch.device) -> bool:
    """Solve one tiny problem with the kernels on ``device`` once (this compiles them); False, with a warning, if
    Triton cannot build or run them there (e.g. a GPU older than Triton supports)."""
    key = str(device)
    if key not in _WORKS:
        from diml.ot._scaling import Outputs, LogKernel

        try:
            sim = torch.eye(16, device=device).unsqueeze(0)
            a = torch.full((1, 16), 1.0 / 16, device=device)
            outputs = Outputs(1, 16, 16, torch.float32, device, False)
            solve(LogKernel(sim, 20.0, -20.0), torch.exp(20.0 * sim - 20.0), a, a, outputs, max_iter=50, tol=1e-4,
                  check_every=5, min_iters=20, switch_iters=50, newton_steps=5, absorb_log=30.0, trust=8.0,
                  armijo=1e-4, halvings=5)
            _WORKS[key] = True
        except Exception as err:  # noqa: BLE001  (any build or launch failure: fall back, say why once)
            _WORKS[key] = False
            warnings.warn(f"diml.ot: the Triton OT kernels do not run on {device} ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); the tensor path solves there instead "
                          "(set DIML_OT_GPU_KERNEL=0 to skip this attempt)", RuntimeWarning, stacklevel=3)
    return _WORKS[key]


def kernels() -> tuple:
    """The two Triton kernels, compiled on first use (imported lazily: importing :mod:`diml.ot` never imports
    Triton).  Under ``TRITON_INTERPRET=1`` (set before Triton is imported) they run in Triton's CPU interpreter."""
    with _LOCK:
        if not _KERNELS:
            from diml.ot import _gpu_kernels

            _KERNELS.extend((_gpu_kernels.scale_problems, _gpu_kernels.newton_problems))
        return tuple(_KERNELS)


def _block(size: int) -> int:
    return max(16, 1 << (int(size) - 1).bit_length())


def solve(lk, kernel, a, b, outputs, *, max_iter, tol, check_every, min_iters, switch_iters, newton_steps,
          absorb_log, trust, armijo, halvings) -> int:
    """Both phases for every problem of ``kernel (B, n, m)`` with marginals ``a, b`` (``lk``: the log-kernel
    source, for the float64 polish).  Results go into ``outputs``' buffers; returns the largest number of Newton
    steps used (one host sync, which also reads the largest iteration count into ``outputs.max_iterations``)."""
    scale_k, newton_k = kernels()
    B, n, m = kernel.shape
    dev = kernel.device
    kernel, a, b = kernel.contiguous(), a.contiguous(), b.contiguous()
    u = torch.empty(B, n, dtype=kernel.dtype, device=dev)
    v = torch.empty(B, m, dtype=kernel.dtype, device=dev)
    status = torch.empty(B, dtype=torch.int32, device=dev)
    iters = torch.empty(B, dtype=torch.int32, device=dev)
    bn, bm = _block(n), _block(m)
    warps = 1 if bn * bm <= 256 else 4
    tiny = torch.finfo(kernel.dtype).tiny
    scale_k[(B,)](kernel, a, b, u, v, outputs.plan, iters, status, n, m, int(max_iter), 0.5 * float(tol),
                  int(check_every), int(min_iters), float(switch_iters), int(newton_steps > 0),
                  math.exp(absorb_log), math.exp(-absorb_log), tiny, BN=bn, BM=bm, num_warps=warps)
    neg = torch.tensor(torch.finfo(outputs.x.dtype).min / 4, dtype=outputs.x.dtype, device=dev)  # log(0), finite
    torch.where(a > 0, u.log(), neg, out=outputs.x)  # as the tensor path
    torch.where(b > 0, v.log(), neg, out=outputs.y)
    outputs.iterations.copy_(iters)
    steps = torch.zeros(B, dtype=torch.int32, device=dev)
    # the polish (with newton_steps=0: the plan at the last iterate) of the problems of status 1, in place in the
    # outputs (float64 inside the kernel); the others return at once
    newton_k[(B,)](lk.source.detach().contiguous(), float(lk.scale), float(lk.shift), a, b, outputs.x, outputs.y,
                   outputs.plan, status, steps, n, m, int(newton_steps), 0.5 * float(tol), float(trust),
                   float(armijo), BN=bn, BM=bm, HALVINGS=int(halvings), num_warps=1 if bn * bm <= 256 else 4)
    outputs.newton_steps.copy_(steps)
    most_iters, most_steps = torch.stack([iters.max(), steps.max()]).tolist()  # the one host sync
    outputs.max_iterations = int(most_iters)
    return int(most_steps)
