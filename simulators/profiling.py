"""Timing real CPU kernels per layer shape: the measurements behind ``cpu`` and ``haq profile``.

The GPU counterpart is :mod:`haq.simulators.gpu_profiling`.

CPU method (what :func:`profile_cpu` times, and why)
----------------------------------------------------
int8 backend: ``torch.ao.nn.quantized`` modules on PyTorch's x86 quantized engine (fbgemm,
which hands some shapes to oneDNN), not onnxruntime. The int8 model a user gets from PyTorch post-training quantization
(``prepare_fx``/``convert_fx``, :func:`end_to_end_int8`) runs exactly these modules, so a
per-layer time and an end-to-end time are two measurements of the same kernels; onnxruntime
would need an ONNX export and a second runtime to check the sum against. (torch 2.14 marks
``torch.ao.quantization`` deprecated in favour of torchao's pt2e flow; the fbgemm kernels
are the same, and only these two functions would change.)

Each layer is timed as the program a deployed model runs for it: the conv/linear module
with its bias (BatchNorm folded into it, as deployment and ``convert_fx`` do) followed by
the element-wise op nearly every CNN layer feeds, timed as an ``nn.ReLU6`` module call
(MobileNet's activation; ResNet's ReLU or residual add costs the same within a few µs, and
for small models the module call itself is a real share of the time):

| (w_bits, a_bits) | program timed |
|---|---|
| (32, 32) | ``relu6(conv(x))``: fp32 ``nn.Conv2d``/``nn.Linear`` (``F.conv2d``/``F.linear``) |
| (8, 8)   | ``relu6(qconv(qx))``: ``torch.ao.nn.quantized.Conv2d``/``Linear``, per-channel int8 weights, quint8 input and output (requantized in the kernel) |
| (8, 32)  | ``relu6(F.conv2d(x, w_q.dequantize(), b))``: weight-only int8 is not a CPU kernel; the weight is kept in int8 and dequantized per call, the math is fp32 |
| (32, 8)  | ``relu6(conv(dequantize(quantize(x))))``: 8-bit activations with float weights have no int8 kernel either; the layer pays the quantize/dequantize of its input, the math is fp32 |

So the mixed pairs are never cheaper than fp32 here: they buy size or accuracy, not speed.
Quantize/dequantize is not charged to w8a8 layers: a fully int8 model quantizes its input
once and dequantizes its output once. A policy that alternates int8 and float layers pays a
quantize/dequantize at every boundary, which the per-layer table does not see. The int8
input's zero point is part of the cost (:func:`input_zero_point`).

Every layer of the model is timed in execution order, one timed call per layer per pass,
``repeats`` passes after ``warmup`` passes, per bit pair; the median per shape is kept.
Timing the whole layer sequence (rather than one layer a thousand times, or each distinct
shape once) leaves the caches as the whole model leaves them: a layer's weights have been
evicted by all the others', and its input is a freshly written tensor. This matters: on a
2-core VM, ResNet-18's (3x64x64) fp32 convs timed in isolation sum to 5.4 ms, each distinct
shape once in sequence to 6.4 ms, every layer in sequence to 8.2 ms, against 9.0 ms for the
whole model. A cached shape keeps the time measured in the first model that had it.

Threads are pinned with ``torch.set_num_threads``. With one thread the clock is the
thread's CPU time (``time.thread_time_ns``: all the work runs on the calling thread, and on
a shared machine the time another process holds the core is not counted); with more
threads it is wall time (``time.perf_counter_ns``).

What the per-layer sum does not contain: pooling (ResNet's fp32 max-pool is 0.6 ms of
9 ms here), residual adds beyond one element-wise op per layer, the model's input quantize
and output dequantize, flatten and the Python glue between modules (nested
``nn.Sequential`` calls; the int8 model is timed with :func:`flat_module_calls`). ``benchmarks/cpu_profile_accuracy.py`` reports the sum against
:func:`end_to_end_fp32` / :func:`end_to_end_int8` per model.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule

from haq.errors import HardwareError, ModelError
from haq.fold import fold_batchnorm
from haq.layers import LayerSpec
from haq.simulators.profile_csv import GEOMETRY_COLUMNS, gemm_shape, geometry, shape_key

CPU_METHOD_VERSION = 2  #: bump when what profile_cpu times changes (invalidates cached profiles)
CPU_METHOD_DOC = __doc__.split("----\n", 1)[1].strip()
CPU_PAIRS: tuple[tuple[int, int], ...] = ((32, 32), (8, 8), (8, 32), (32, 8))
_ACT_SCALE = 0.05  # activation scale; kernel time does not depend on it
_ZERO_SIGNED = 64  # zero point of a signed input (the network's), see input_zero_point
Progress = Callable[[int, int, str], None]


@contextmanager
def pinned_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)``, restoring the old value after."""
    old = torch.get_num_threads()
    n = int(threads or old)
    if n < 1:
        raise HardwareError(f"threads={threads} is not a thread count; use 1 or more")
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)


@contextmanager
def quiet_quantization() -> Iterator[None]:
    """Silence torch.ao's deprecation and observer warnings (the library never prints)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*(quantize_per_tensor|reduce_range|quantized tensor).*")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\..*")
        yield


@contextmanager
def x86_engine() -> Iterator[None]:
    """Run the block with the x86 quantized engine (fbgemm/oneDNN), restoring the old one after."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = "x86"
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def clock_for(threads: int) -> Callable[[], int]:
    """Nanosecond clock: the thread's CPU time with one thread, wall time with more."""
    return time.thread_time_ns if threads == 1 else time.perf_counter_ns


# --------------------------------------------------------------------------- per-layer programs


def input_zero_point(layer: LayerSpec) -> int:
    """Zero point of a layer's quint8 input in the int8 model.

    fbgemm's kernels have a fast path for a zero-point-0 input (a ReLU output: 0.19 ms
    against 1.7 ms for a 512x512 3x3 conv on 4x4 here), so this is part of the layer's
    cost. The first layer reads the signed network input; the others are taken to read an
    activation output, as in a ReLU network whose ReLUs ``convert_fx`` fuses.
    """
    return _ZERO_SIGNED if layer.index == 0 else 0


class _LayerPrograms:
    """The four timed programs of one layer shape (see the module docstring), random weights."""

    def __init__(self, layer: LayerSpec, batch: int, gen: torch.Generator) -> None:
        self.layer = layer
        self.zero_point = input_zero_point(layer)
        lin = layer.kind == "linear"
        cin, cout = layer.in_channels, layer.out_channels
        self.fp: nn.Module
        self.q: nn.Module
        if lin:
            self.x = torch.randn(batch * layer.in_hw[0], cin, generator=gen)
            self.fp = nn.Linear(cin, cout, bias=True).eval()
            self.q = torch.ao.nn.quantized.Linear(cin, cout)
        else:
            self.x = torch.randn(batch, cin, *layer.in_hw, generator=gen)
            args = (cin, cout, layer.kernel, layer.stride, layer.padding)
            self.fp = nn.Conv2d(*args, groups=layer.groups, bias=True).eval()
            self.q = torch.ao.nn.quantized.Conv2d(*args, groups=layer.groups)
        self.act = nn.ReLU6()  # the element-wise op after the layer, a module call as in the model
        assert self.fp.bias is not None  # built with bias=True above
        w, b = self.fp.weight.detach(), self.fp.bias.detach()
        scales = w.abs().flatten(1).amax(1).clamp_min(1e-8) / 127
        self.w_q = torch.quantize_per_channel(w, scales, torch.zeros(cout, dtype=torch.long), 0, torch.qint8)
        self.q.set_weight_bias(self.w_q, b)
        self.q.scale, self.q.zero_point = _ACT_SCALE, 0
        if lin:
            self.fp_w8 = lambda x: F.linear(x, self.w_q.dequantize(), b)
        else:
            s, p, g = layer.stride, layer.padding, layer.groups
            self.fp_w8 = lambda x: F.conv2d(x, self.w_q.dequantize(), b, s, p, 1, g)

    def input_for(self, pair: tuple[int, int]) -> torch.Tensor:
        """A freshly written input (untimed): what the previous layer just produced."""
        if pair == (8, 8):
            return torch.quantize_per_tensor(self.x, _ACT_SCALE, self.zero_point, torch.quint8)
        return self.x.clone()

    def run(self, pair: tuple[int, int], x: torch.Tensor) -> torch.Tensor:
        act = self.act
        if pair == (32, 32):
            return act(self.fp(x))
        if pair == (8, 8):
            return act(self.q(x))
        if pair == (8, 32):
            return act(self.fp_w8(x))
        xq = torch.quantize_per_tensor(x, _ACT_SCALE, self.zero_point, torch.quint8).dequantize()
        return act(self.fp(xq))


def profile_cpu(
    layers: Sequence[LayerSpec],
    batch: int = 1,
    repeats: int = 30,
    warmup: int = 3,
    threads: int | None = None,
    progress: Progress | None = None,
    only: Sequence[LayerSpec] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Time every distinct layer shape of ``layers`` at every pair of :data:`CPU_PAIRS`.

    ``layers`` is a whole model in execution order: every layer runs in every pass, so each
    is timed in the cache state the model leaves it (see the module docstring); a shape's
    latency is the median over all its samples (every layer with that shape, every pass).
    ``only``: report just these layers' shapes (the others still run, as context).

    Returns one row per shape and pair in the shape-keyed profile format (``layer`` is the
    first layer with that shape), ready for :func:`~haq.simulators.profile_csv.write_profile`.
    ``progress(done, total, what)`` is called after every pass over the layers.
    """
    if repeats < 1 or warmup < 0:
        raise HardwareError(f"repeats={repeats}, warmup={warmup}: use repeats >= 1 and warmup >= 0")
    keys = [shape_key(layer, batch, True) for layer in layers]
    wanted = {shape_key(x, batch, True) for x in (layers if only is None else only)}
    first: dict[tuple, LayerSpec] = {}
    for key, layer in zip(keys, layers, strict=True):
        first.setdefault(key, layer)
    gen = torch.Generator().manual_seed(seed)
    samples: dict[tuple, dict[tuple[int, int], list[int]]] = {k: {p: [] for p in CPU_PAIRS} for k in first}
    total, done = len(CPU_PAIRS) * (warmup + repeats), 0
    with pinned_threads(threads) as n, x86_engine(), quiet_quantization(), torch.inference_mode():
        programs = [_LayerPrograms(layer, batch, gen) for layer in layers]
        clock = clock_for(n)
        for pair in CPU_PAIRS:
            for rep in range(warmup + repeats):
                for key, prog in zip(keys, programs, strict=True):
                    x = prog.input_for(pair)
                    t0 = clock()
                    prog.run(pair, x)
                    t1 = clock()
                    if rep >= warmup:
                        samples[key][pair].append(t1 - t0)
                done += 1
                if progress is not None:
                    progress(done, total, f"w{pair[0]}a{pair[1]}")
    rows = []
    for key, layer in first.items():
        if key not in wanted:
            continue
        m, k, nn_, g = gemm_shape(layer, batch)
        base = {"layer": layer.name, "kind": layer.kind, "M": m, "K": k, "N": nn_, "groups": g}
        base.update(zip(GEOMETRY_COLUMNS, geometry(layer), strict=True))
        for w, a in CPU_PAIRS:
            ms = statistics.median(samples[key][(w, a)]) / 1e6
            rows.append({**base, "w_bits": w, "a_bits": a, "batch": batch, "latency_ms": ms})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- end to end


def _trace_error(what: str, exc: Exception) -> ModelError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ModelError(
        f"cannot {what}: torch.fx could not trace the model ({first}); pass a traceable nn.Module"
    )


def quantize_int8(
    model: nn.Module, input_shape: Sequence[int], batch: int = 1, calibration_batches: int = 4, seed: int = 0
) -> GraphModule:
    """The int8 model PyTorch post-training quantization makes of ``model`` (x86/fbgemm).

    ``prepare_fx`` with the x86 default qconfig mapping (per-channel int8 weights, quint8
    activations, conv+bn(+relu) fused), calibrated on ``calibration_batches`` random batches
    (the values do not change kernel time), then ``convert_fx``.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(batch, *input_shape, generator=gen)
    with x86_engine(), quiet_quantization():
        try:
            prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (example,))
        except Exception as exc:
            raise _trace_error("quantize the model to int8 with prepare_fx", exc) from None
        with torch.no_grad():
            for _ in range(calibration_batches):
                prepared(torch.randn(batch, *input_shape, generator=gen))
        return convert_fx(prepared)


def flat_module_calls(gm: GraphModule) -> GraphModule:
    """``gm`` with every submodule it calls registered at its top level (same modules, same ops).

    ``convert_fx`` writes a call to ``features.1.conv.0.0`` as
    ``getattr(getattr(getattr(self.features, "1").conv, "0"), "0")(x)``: four
    ``nn.Module.__getattr__`` calls, about 2 µs of Python per layer that no eager model (whose
    ``nn.Sequential`` iterates its children) or deployed model pays, 16% of digits-mobilenet's
    int8 time. After this, each call is ``self.features_1_conv_0_0(x)``, as in eager code.
    """
    for node in gm.graph.nodes:
        if node.op == "call_module" and "." in node.target:
            flat = node.target.replace(".", "_")
            while hasattr(gm, flat):
                flat += "_"
            gm.add_module(flat, gm.get_submodule(node.target))
            node.target = flat
    gm.recompile()
    return gm


def time_forward(
    model: nn.Module,
    input_shape: Sequence[int],
    batch: int = 1,
    repeats: int = 30,
    warmup: int = 3,
    threads: int | None = None,
) -> float:
    """Median latency (ms) of ``model(x)`` for one random batch, same clock as :func:`profile_cpu`."""
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    times = []
    with pinned_threads(threads) as n, quiet_quantization(), torch.inference_mode():
        clock = clock_for(n)
        for rep in range(warmup + repeats):
            t0 = clock()
            model(x)
            t1 = clock()
            if rep >= warmup:
                times.append(t1 - t0)
    return statistics.median(times) / 1e6


def end_to_end_fp32(
    model: nn.Module,
    input_shape: Sequence[int],
    batch: int = 1,
    repeats: int = 30,
    warmup: int = 3,
    threads: int | None = None,
) -> float:
    """Measured latency (ms) of the whole fp32 model, BatchNorm folded (as deployed)."""
    return time_forward(fold_batchnorm(model, input_shape)[0], input_shape, batch, repeats, warmup, threads)


def end_to_end_int8(
    model: nn.Module,
    input_shape: Sequence[int],
    batch: int = 1,
    repeats: int = 30,
    warmup: int = 3,
    threads: int | None = None,
) -> float:
    """Measured latency (ms) of the whole int8 model, quantize/dequantize included.

    The model is :func:`quantize_int8`'s, with :func:`flat_module_calls` applied.
    """
    qmodel = flat_module_calls(quantize_int8(model, input_shape, batch))
    with x86_engine():
        return time_forward(qmodel, input_shape, batch, repeats, warmup, threads)
