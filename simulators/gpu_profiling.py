"""Measuring a GPU profile when a GPU is present: ``haq profile --hardware gpu``.

The columns and timing of ``shared/reference/measure_h100.py``: every layer as its real
``nn.Conv2d``/``nn.Linear`` module in fp32 (tf32 off) and fp16, and lowered to its implicit
GEMM (M, K, N padded to multiples of 16, M at least 32) as fp32, tf32, fp16, bf16, int8
(``torch._int_mm``) and fp8 e4m3 (``torch._scaled_mm``), each the median of
``triton.testing.do_bench(warmup=25, rep=100)`` (25 ms of warm-up, 100 ms of runs). A kernel
that refuses a shape is recorded as NaN; depthwise layers get module timings only.

Without CUDA every entry point raises :class:`HardwareError` with one line
(:data:`NO_CUDA_MESSAGE`); the shipped H100 table (``gpu-h100``) is the fallback.
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from haq.atomic import atomic_write_text
from haq.errors import HardwareError
from haq.layers import LayerSpec
from haq.simulators.gpu_reference import GPU_REFERENCE_COLUMNS, parse_gpu_reference
from haq.simulators.profile_csv import gemm_shape

Progress = Callable[[int, int, str], None]

NO_CUDA_MESSAGE = (
    "no CUDA device: cannot measure a GPU profile on this machine; "
    "use the reference table gpu-h100 or run on a machine with a GPU"
)


def _pad16(x: int) -> int:
    return (x + 15) // 16 * 16


def gpu_layer_row(
    layer: LayerSpec,
    batch: int,
    bench: Callable[[Callable[[], object]], float],
    model_name: str = "model",
    dev: str = "cuda",
) -> dict:
    """One row of measure_h100.py's table for ``layer``, each kernel timed with ``bench`` (ms).

    ``dev`` is ``cuda`` in :func:`profile_gpu`; any other device only exercises the code.
    """
    m, k, n, g = gemm_shape(layer, batch)
    row: dict = {"model": model_name, "batch": batch, "layer": layer.name, "kind": layer.kind,
                 "M": m, "K": k, "N": n, "groups": g, "macs": m * k * n}  # fmt: skip
    if layer.kind == "linear":
        mod: nn.Module = nn.Linear(layer.in_channels, layer.out_channels, bias=layer.bias_params > 0)
        x32 = torch.randn(batch * layer.in_hw[0], layer.in_channels, device=dev)
    else:
        mod = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.padding,
                        groups=layer.groups, bias=layer.bias_params > 0)  # fmt: skip
        x32 = torch.randn(batch, layer.in_channels, *layer.in_hw, device=dev)
    mod = mod.to(dev).eval()
    with torch.no_grad():
        row["module_fp32_ms"] = bench(lambda: mod(x32))
        mod16, x16 = copy.deepcopy(mod).half(), x32.half()
        row["module_fp16_ms"] = bench(lambda: mod16(x16))
    nan = float("nan")
    for col in (
        "gemm_fp32_ms",
        "gemm_tf32_ms",
        "gemm_fp16_ms",
        "gemm_bf16_ms",
        "gemm_int8_ms",
        "gemm_fp8_ms",
    ):
        row[col] = nan
    if layer.kind == "depthwise":
        return row
    mp, kp, np_ = max(_pad16(m), 32), _pad16(k), _pad16(n)
    a32, b32 = torch.randn(mp, kp, device=dev), torch.randn(kp, np_, device=dev)
    row["gemm_fp32_ms"] = bench(lambda: a32 @ b32)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        row["gemm_tf32_ms"] = bench(lambda: a32 @ b32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    a16, b16 = a32.half(), b32.half()
    row["gemm_fp16_ms"] = bench(lambda: a16 @ b16)
    ab, bb = a32.bfloat16(), b32.bfloat16()
    row["gemm_bf16_ms"] = bench(lambda: ab @ bb)
    a8 = torch.randint(-128, 127, (mp, kp), device=dev, dtype=torch.int8)
    b8 = torch.randint(-128, 127, (kp, np_), device=dev, dtype=torch.int8)
    try:
        row["gemm_int8_ms"] = bench(lambda: torch._int_mm(a8, b8))
    except RuntimeError:
        pass  # the kernel refused the shape: NaN, as in the reference table
    try:
        af = a32.to(torch.float8_e4m3fn)
        bf = b32.t().contiguous().to(torch.float8_e4m3fn).t()
        one = torch.tensor(1.0, device=dev)
        row["gemm_fp8_ms"] = bench(
            lambda: torch._scaled_mm(af, bf, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        )
    except (RuntimeError, AttributeError):
        pass
    return row


def gpu_description() -> str:
    """One line naming this machine's GPU, torch and CUDA versions (``#`` header of a GPU profile)."""
    if not torch.cuda.is_available():
        raise HardwareError(NO_CUDA_MESSAGE)
    return f"gpu: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, triton do_bench median"


def profile_gpu(
    layers: Sequence[LayerSpec], batch: int = 1, model_name: str = "model", progress: Progress | None = None
) -> pd.DataFrame:
    """Measure ``layers`` on this machine's GPU: the columns of ``measure_h100.py``.

    Returns a DataFrame in the GPU reference format (:data:`~haq.simulators.gpu_reference.
    GPU_REFERENCE_COLUMNS`), one row per layer; write it with :func:`write_gpu_profile` and
    use it with ``--hardware table:PATH``. Raises :class:`HardwareError` without CUDA.
    """
    if not torch.cuda.is_available():
        raise HardwareError(NO_CUDA_MESSAGE)
    from triton.testing import do_bench

    def bench(fn: Callable[[], object]) -> float:
        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))

    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    try:
        for i, layer in enumerate(layers):
            rows.append(gpu_layer_row(layer, batch, bench, model_name))
            if progress is not None:
                progress(i + 1, len(layers), layer.name)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    return gpu_profile_frame(rows)


def gpu_profile_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Rows of GPU timings as a DataFrame in the reference column order; a missing column is an error."""
    for i, row in enumerate(rows):
        missing = [c for c in GPU_REFERENCE_COLUMNS if c not in row]
        if missing:
            raise HardwareError(
                f"GPU timings row {i} ({row.get('layer', '?')}) lacks {', '.join(missing)}; measure every column"
            )
    return pd.DataFrame(list(rows), columns=list(GPU_REFERENCE_COLUMNS))


def write_gpu_profile(df: pd.DataFrame, path: str | os.PathLike, machine_description: str) -> Path:
    """Write a GPU profile atomically (``#`` description lines, then the reference columns)."""
    out = io.StringIO()
    for line in machine_description.splitlines() or [""]:
        out.write(f"# {line}".rstrip() + "\n")
    gpu_profile_frame(df.to_dict("records")).to_csv(out, index=False, lineterminator="\n", na_rep="nan")
    parse_gpu_reference(out.getvalue(), source=str(path))  # never write a file we would refuse to read
    return atomic_write_text(path, out.getvalue())
