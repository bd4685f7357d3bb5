"""Where tensors live: ``--device auto|cpu|cuda|cuda:N``.

Evaluation, calibration and Hessian traces run on the device :func:`resolve_device` returns.
Results on the CPU never depend on the option; on CUDA, float reductions may differ from the
CPU in the last bits (as any two devices do), so a run records which device it used.
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
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
        return torch.device(text)
    raise ConfigError(f"--device {spec!r} is not a device: use {DEVICE_HELP}")
