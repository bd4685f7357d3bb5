"""Where tensors live: ``--device auto|cpu|cuda|cuda:N``.

Evaluation, calibration and Hessian traces run on the device :func:`resolve_device` returns.
Results on the CPU never depend on the option; on CUDA, float reductions may differ from the
CPU in the last bits (as any two devices do), so a run records which device it used.

On CUDA haq computes float32 as IEEE float32: TF32, which PyTorch enables for cuDNN
convolutions by default, rounds their inputs to 10 mantissa bits. That moved Hessian traces
by up to 2.6 % from the CPU's on an H200, and it is not what the exported model (ONNX
Runtime, float32) computes. :func:`resolve_device` switches TF32 off when it returns a GPU.
"""

from __future__ import annotations

import torch

from haq.errors import ConfigError

DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The :class:`torch.device` of ``spec``: ``auto``/None -> ``cuda`` when a GPU is present,
    else ``cpu``; ``cpu``; ``cuda`` or ``cuda:N`` (a GPU must be present, N below the count)."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index = text.partition(":")[2]
        if index and not index.isdigit():
            raise ConfigError(f"--device {spec!r}: the GPU index must be a number, e.g. cuda:0")
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: no CUDA device is available to torch here; use --device cpu (or auto)")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise ConfigError(f"--device {spec}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
        ieee_fp32()
        return torch.device(text)
    raise ConfigError(f"--device {spec!r} is not a device: use {DEVICE_HELP}")


def ieee_fp32() -> None:
    """Make CUDA float32 convolutions and matrix products IEEE float32 (no TF32), process-wide:
    evaluation must compute what the CPU and the deployed model compute."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
