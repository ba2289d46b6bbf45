"""Where a number came from: the hardware, the library versions and the determinism settings of a trial.

Float arithmetic differs between CPUs (AVX2 vs AVX-512 kernels, another reduction order) and GPUs, and training
amplifies a last-digit difference into another model within a few steps (docs/REPRODUCIBILITY.md). So every trial
run records, from its rank-0 worker, as MLflow tags:

- ``env.cpu`` (model name), ``env.cpu_capability`` (the SIMD level PyTorch's CPU kernels use), ``env.llvm_cpu`` (the
  CPU numba compiles the OT kernels for), ``env.gpu`` (name x count, or ``none``);
- ``env.torch``, ``env.cuda``, ``env.cudnn``, ``env.ray``, ``env.mlflow``, ``env.numba``, ``env.pot``,
  ``env.python``;
- ``env.deterministic`` (the spec's switch), ``env.threads`` (intra-op threads of a worker);
- ``env.hardware``: one line naming the hardware a result depends on, and ``env.fingerprint``: a short digest of
  all of the above but the thread count, so that runs that should agree bit for bit can be grouped by it.

:func:`apply_determinism` sets the deterministic kernels (``deterministic: true`` in a spec).
"""

from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata

# CUDA's cuBLAS needs a fixed workspace configuration for deterministic results (PyTorch's reproducibility notes);
# it must be in the environment before the CUDA context exists, so the trial driver puts it in the workers' env.
CUBLAS_WORKSPACE = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
VERSIONS = {"torch": "torch", "ray": "ray", "mlflow": "mlflow", "numba": "numba", "pot": "pot"}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def apply_determinism(deterministic: bool) -> None:
    """``deterministic``: PyTorch's deterministic algorithms (``warn_only``: an operation without a deterministic
    implementation warns instead of stopping the trial), cuDNN deterministic without autotuning, and the cuBLAS
    workspace setting; ``False`` leaves PyTorch's defaults (cuDNN may autotune: fastest, not bit-reproducible)."""
    import torch

    if deterministic:
        os.environ.update(CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def environment(device=None) -> dict[str, str]:
    """The ``env.*`` tags of this process (``device``: the trial's torch device, for the GPU's name)."""
    import torch

    tags = {"env.cpu": cpu_model(), "env.cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "env.python": platform.python_version()}
    try:
        import llvmlite.binding

        tags["env.llvm_cpu"] = llvmlite.binding.get_host_cpu_name()
    except ImportError:
        tags["env.llvm_cpu"] = "none"
    on_gpu = device is not None and getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available()
    if on_gpu:
        tags["env.gpu"] = f"{torch.cuda.get_device_name(device)} x {torch.cuda.device_count()}"
    else:
        tags["env.gpu"] = "none"
    tags["env.cuda"] = torch.version.cuda or "none"
    tags["env.cudnn"] = str(torch.backends.cudnn.version()) if on_gpu else "none"
    tags.update({f"env.{name}": _version(package) for name, package in VERSIONS.items()})
    tags["env.deterministic"] = str(torch.are_deterministic_algorithms_enabled()).lower()
    tags["env.threads"] = str(torch.get_num_threads())
    gpu = f" + {tags['env.gpu']}" if on_gpu else ""
    tags["env.hardware"] = f"{tags['env.cpu']} ({tags['env.cpu_capability']}){gpu}"
    stable = sorted((k, v) for k, v in tags.items() if k != "env.threads")
    tags["env.fingerprint"] = hashlib.sha1(repr(stable).encode()).hexdigest()[:10]
    return tags
