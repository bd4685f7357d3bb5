"""Timing real CPU kernels per layer shape: the measurements behind ``cpu`` and ``haq profile``.

The GPU counterpart is :mod:`haq.simulators.gpu_profiling`.

CPU method (what :func:`profile_cpu` times, and why)
----------------------------------------------------
Runtime: ONNX Runtime's CPU execution provider, the runtime ``haq export`` targets
(:mod:`haq.deploy`), so a per-layer time and the end-to-end time of an exported policy are
two measurements of the same kernels (``haq verify`` and ``benchmarks/deploy_fidelity.py``
put them side by side). Each layer shape is one tiny ONNX model, built with the ``onnx``
helper API, that holds the program an exported model runs for that layer: the Conv (or
Gemm) with its bias (BatchNorm folded into it) followed by the element-wise op nearly every
CNN layer feeds (ReLU6, a ``Clip``):

| (w_bits, a_bits) | program timed | what ONNX Runtime runs |
|---|---|---|
| (32, 32) | ``Clip(Conv(x, W, b))`` | fp32 Conv (MLAS) + Clip |
| (8, 8)   | ``Q(Clip(Conv(DQ(x_u8), DQ(W_i8), DQ(b_i32))))``, uint8 in and out | QLinearConv (Gemm: QGemm): Clip absorbed by the output's QuantizeLinear |
| (8, 32)  | ``Clip(Conv(x, DQ(W_i8), b))`` | weight DequantizeLinear + fp32 Conv: no int8 kernel takes a float input |
| (32, 8)  | ``Clip(Conv(DQ(Q(x)), W, b))`` | QuantizeLinear/DequantizeLinear of the input + fp32 Conv |

Each convolution's output then feeds a 1x1 max-pool with the output's size as its stride (one
pixel per channel): ONNX Runtime computes float convolutions in its blocked NCHWc layout and
int8 ones in NHWC, and converts back to NCHW where a model's output needs it; a whole model
does that once, at its end, so the timed program keeps the convolution's output in its
layout and converts only the pooled pixels (the (8, 32) program runs in NCHW and has none;
an output under :data:`SINK_BYTES` neither: converting it costs less than the extra node).
Without it every layer was charged a full-size layout conversion (MobileNetV2 at 112x112:
per-layer sum 34 % above the whole model, 12 % with it, ``benchmarks/deploy_fidelity.py``).

So the mixed pairs are never cheaper than fp32 here: they buy size or accuracy, not speed.
Quantize/dequantize is not charged to w8a8 layers: a fully int8 model quantizes its input
once and dequantizes its output once, and between two int8 layers the QuantizeLinear of
the next one is fused into the kernel. A policy that alternates int8 and float layers pays
a quantize/dequantize at every boundary, which the per-layer table does not see. The int8
input's zero point is part of the cost (:func:`input_zero_point`).

Every layer of the model is timed in execution order, one timed ``run`` per layer per pass,
``repeats`` passes after ``warmup`` passes, the four pairs interleaved within each pass (so
a burst of load on a shared machine hits every pair alike); the median per shape is kept.
Timing the whole layer sequence (rather than one layer a thousand times) leaves the caches
as the whole model leaves them. A cached shape keeps the time measured in the first model
that had it. A layer's time is a difference: the run of a model holding two copies of its
program (own weights, one input) minus the run of a model holding one, back to back; so the
fixed cost of an ``InferenceSession.run`` call (~5-10 us: argument binding, executor
set-up), which a whole model pays once and not once per layer, cancels out. Inputs and
outputs are bound once (IOBinding). A small layer (fp32 input, output and weights within
:data:`HOT_BYTES`) is timed right after an untimed run of its two models: its time is then
the executor's work, as inside a model, not the cold start of a session that ran last a
whole pass ago (which doubled digits-mobilenet's per-layer sum). So is every layer of a
model whose data at that pair's precision (weights and activations of all its layers) fits
in half this machine's last-level cache (:func:`llc_bytes`; the other half for the
runtime's buffers and whatever else runs): run after run, such a model's weights stay in
that cache, while the profile's many programs (four pairs, three copies per layer) would
evict them (MobileNetV2 at 112x112: int8 per-layer sum +15 % over the whole model when
timed cold, -7 % hot). A large layer of a larger model is timed with its weights
evicted by the other layers', as in that model, but its input read just before (inside a
model the layer before has just written it).

Threads are pinned with ``SessionOptions.intra_op_num_threads`` (inter-op 1, sequential
execution). With one thread ONNX Runtime computes on the calling thread and the clock is
that thread's CPU time (``time.thread_time_ns``: on a shared machine the time another
process holds the core is not counted); with more threads it is wall time.

Switches. Where an 8-bit layer reads a float layer's output, ONNX Runtime quantizes the
tensor and transposes it to NHWC; where a float layer reads an 8-bit one, it transposes back
and dequantizes. :func:`profile_switches` times both per input shape (same clock, same
two-copy difference) and the cost table charges them to the reading layer whenever the
policy switches there (:meth:`haq.costs.CostTable.switches`), the model's input counting as
float: a uniform int8 model pays one, at its input.

What the per-layer sum does not contain: pooling, residual adds beyond one element-wise op
per layer, flatten, the output dequantize.
``benchmarks/cpu_profile_accuracy.py`` reports the sum against the measured whole model
(fp32, and haq's uniform-int8 export) per model.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from haq.errors import HardwareError
from haq.layers import LayerSpec
from haq.simulators.profile_csv import GEOMETRY_COLUMNS, gemm_shape, geometry, shape_key

CPU_METHOD_VERSION = 8  #: bump when what profile_cpu times changes (invalidates cached profiles)
CPU_METHOD_DOC = __doc__.split("----\n", 1)[1].strip()
CPU_PAIRS: tuple[tuple[int, int], ...] = ((32, 32), (8, 8), (8, 32), (32, 8))
_ACT_SCALE = 0.05  # input activation scale; kernel time does not depend on it
_OUT_SCALE = 6.0 / 255  # output scale: [0, 6] in uint8, so the ReLU6 Clip is absorbed
_ZERO_SIGNED = 64  # zero point of a signed input (the network's), see input_zero_point
OPSET = 21
HOT_BYTES = 256 * 1024  #: a layer whose fp32 data fits in this is timed right after an untimed run
SINK_BYTES = 64 * 1024  #: a conv output (fp32 bytes) at least this large is kept in the kernel's layout
_MIN_NS = 10.0  # floor of a layer's time (a difference of two noisy times can come out <= 0), ns
Progress = Callable[[int, int, str], None]


def clock_for(threads: int) -> Callable[[], int]:
    """Nanosecond clock: the thread's CPU time with one thread, wall time with more."""
    return time.thread_time_ns if threads == 1 else time.perf_counter_ns


def check_threads(threads: int | None) -> int:
    """``threads`` as a count (None: 1), refusing nonsense with one line."""
    n = 1 if threads is None else int(threads)
    if n < 1:
        raise HardwareError(f"threads={threads} is not a thread count; use 1 or more")
    return n


def ort_session(model: bytes, threads: int) -> Any:
    """An ONNX Runtime CPU session: ``threads`` intra-op threads, sequential, full optimisation."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- per-layer programs


def input_zero_point(layer: LayerSpec) -> int:
    """Zero point of a layer's uint8 input in the int8 model.

    The first layer reads the signed network input (a zero point inside the range); the
    others read an activation output (ReLU/ReLU6: zero point 0).
    """
    return _ZERO_SIGNED if layer.index == 0 else 0


def layer_model(
    layer: LayerSpec, batch: int, pair: tuple[int, int], seed: int = 0, copies: int = 1
) -> tuple[bytes, np.ndarray]:
    """The ONNX model timed for ``layer`` at ``pair`` (module docstring) and its input
    (random values; uint8 for (8, 8)): ``copies`` independent copies of the layer program
    (own weights), all reading the one input."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    inits: list[Any] = []
    outputs = []
    for c in range(copies):
        n, i, out, x_shape, x_type = _layer_program(layer, batch, pair, rng, f"c{c}_")
        nodes += n
        inits += i
        outputs.append(out)
    graph = helper.make_graph(
        nodes, f"{layer.name}_w{pair[0]}a{pair[1]}x{copies}",
        [helper.make_tensor_value_info("x", x_type, x_shape)], outputs, inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="haq-profile")
    model.ir_version = 10
    x = rng.standard_normal(x_shape).astype(np.float32)
    if x_type == TensorProto.UINT8:
        x = np.clip(np.round(x / _ACT_SCALE) + input_zero_point(layer), 0, 255).astype(np.uint8)
    return model.SerializeToString(), x


def _layer_program(
    layer: LayerSpec, batch: int, pair: tuple[int, int], rng: np.random.Generator, p: str
) -> tuple[list[Any], list[Any], Any, list[int], int]:
    """Nodes, initializers, output value info, input shape and type of one copy of the
    program of ``layer`` at ``pair``, every name prefixed with ``p`` (input: ``x``)."""
    from onnx import TensorProto, helper, numpy_helper

    lin = layer.kind == "linear"
    cin, cout = layer.in_channels, layer.out_channels
    if lin:
        x_shape: list[int] = [batch * layer.in_hw[0], cin]
        w = (rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
        y_shape = [batch * layer.in_hw[0], cout]
    else:
        x_shape = [batch, cin, *layer.in_hw]
        w = rng.standard_normal((cout, cin // layer.groups, *layer.kernel)).astype(np.float32)
        y_shape = [batch, cout, *layer.out_hw]
    b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    w_scale = (np.abs(w.reshape(cout, -1)).max(1) / 127).astype(np.float32)
    w_q = np.clip(np.round(w / w_scale.reshape(-1, *([1] * (w.ndim - 1)))), -127, 127).astype(np.int8)
    zp = input_zero_point(layer)
    inits: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr, p + name))
        return p + name

    def node(op: str, ins: list[str], outs: list[str], **attrs: Any) -> Any:
        return helper.make_node(op, [i if i == "x" else p + i for i in ins], [p + o for o in outs], **attrs)

    const("x_scale", np.array(_ACT_SCALE, np.float32))
    const("x_zero", np.array(zp, np.uint8))
    w_int, a_int = pair[0] == 8, pair[1] == 8
    x_in = "x"
    if a_int and w_int:  # the int8 path: uint8 in, uint8 out
        nodes.append(node("DequantizeLinear", ["x", "x_scale", "x_zero"], ["x_dq"]))
        x_in = "x_dq"
    elif a_int:
        nodes += [node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
                  node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"])]
        x_in = "x_dq"
    if w_int:
        const("w_q", w_q)
        const("w_scale", w_scale)
        const("w_zero", np.zeros(cout, np.int8))
        nodes.append(node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0))
    else:
        const("w", w)
    if w_int and a_int:
        b_scale = (w_scale * np.float32(_ACT_SCALE)).astype(np.float32)
        const("b_q", np.round(b / b_scale).astype(np.int32))
        const("b_scale", b_scale)
        const("b_zero", np.zeros(cout, np.int32))
        nodes.append(node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b"], axis=0))
    else:
        const("b", b)
    if lin:
        nodes.append(node("Gemm", [x_in, "w", "b"], ["z"], transB=1))
    else:
        ph, pw = layer.padding
        nodes.append(node(
            "Conv", [x_in, "w", "b"], ["z"], kernel_shape=list(layer.kernel), strides=list(layer.stride),
            pads=[ph, pw, ph, pw], group=layer.groups,
        ))
    const("lo", np.array(0.0, np.float32))
    const("hi", np.array(6.0, np.float32))
    y_type = TensorProto.FLOAT
    if w_int and a_int:
        const("y_scale", np.array(_OUT_SCALE, np.float32))
        const("y_zero", np.array(0, np.uint8))
        nodes += [node("Clip", ["z", "lo", "hi"], ["r"]),
                  node("QuantizeLinear", ["r", "y_scale", "y_zero"], ["y"])]
        y_type = TensorProto.UINT8
    else:
        nodes.append(node("Clip", ["z", "lo", "hi"], ["y"]))
    x_type = TensorProto.UINT8 if (w_int and a_int) else TensorProto.FLOAT
    oh, ow = layer.out_hw
    small = 4 * batch * cout * oh * ow < SINK_BYTES  # converting it costs less than one more node
    if lin or (w_int and not a_int) or small:  # Gemm and the weight-dequantizing conv run in NCHW
        return nodes, inits, helper.make_tensor_value_info(p + "y", y_type, y_shape), x_shape, x_type
    # The output stays in the layout ONNX Runtime computes these convolutions in (NCHWc for
    # float, NHWC for int8): a 1x1 max-pool that keeps one pixel per channel reads it there,
    # so only that tiny result is converted back to NCHW. Without it every timed layer paid a
    # full-size layout conversion that a whole model pays once, at its end (+34 % on
    # MobileNetV2 at 112x112).
    nodes.append(node("MaxPool", ["y"], ["sink"], kernel_shape=[1, 1], strides=[oh, ow]))
    return nodes, inits, helper.make_tensor_value_info(p + "sink", y_type, [batch, cout, 1, 1]), x_shape, x_type


def working_set_bytes(layer: LayerSpec, batch: int, pair: tuple[int, int] = (32, 32)) -> int:
    """Bytes of a layer's input, output and weights at ``batch``: 4 per value at 32 bits,
    1 at 8 (``pair`` = weight bits, activation bits; the bias stays 4)."""
    h, w = layer.in_hw
    oh, ow = layer.out_hw
    wb, ab = (1 if b == 8 else 4 for b in pair)
    acts = batch * (layer.in_channels * h * w + layer.out_channels * oh * ow)
    return ab * acts + wb * layer.params + 4 * layer.bias_params


def stays_in_cache(layers: Sequence[LayerSpec], batch: int, pair: tuple[int, int], llc: int | None) -> bool:
    """Whether a whole model's data at ``pair`` (every layer's weights, input and output)
    fits in half a last-level cache of ``llc`` bytes (None: unknown, so no)."""
    return llc is not None and sum(working_set_bytes(x, batch, pair) for x in layers) <= llc // 2


def llc_bytes() -> int | None:
    """Size of this machine's last-level data cache in bytes (Linux sysfs), or None if unknown."""
    best: tuple[int, int] | None = None
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level, kind = int((d / "level").read_text()), (d / "type").read_text().strip()
            size = (d / "size").read_text().strip().upper()
            nbytes = int(size.rstrip("KMG")) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and (best is None or level > best[0]):
            best = (level, nbytes)
    return None if best is None else best[1]


def bound_run(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], None]:
    """``session`` run with its inputs and outputs bound once (IOBinding, outputs written
    into preallocated buffers): what a run costs inside a model, without Python allocating
    and converting the outputs on every call."""
    binding = session.io_binding()
    keep = []
    for name, value in feed.items():
        binding.bind_cpu_input(name, value)
        keep.append(value)
    for out in session.get_outputs():
        binding.bind_output(out.name, "cpu")
    session.run_with_iobinding(binding)  # learn the output shapes once
    values = binding.copy_outputs_to_cpu()
    binding.clear_binding_outputs()
    for out, value in zip(session.get_outputs(), values, strict=True):
        buf = np.empty_like(value)
        keep.append(buf)
        binding.bind_output(out.name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)

    def run() -> None:
        session.run_with_iobinding(binding)

    run.keep = keep  # type: ignore[attr-defined]  # the buffers live as long as the closure
    return run


def _touch(x: np.ndarray) -> None:
    """Read every byte of ``x`` (bring it into the caches, as far as it fits)."""
    np.bitwise_or.reduce(x.view(np.uint8), axis=None)


def second_copy_ns(program: Sequence[Any], clock: Callable[[], int], hot: bool) -> int:
    """One timed sample of ``program`` = ``(one, x1, two, x2)``, bound runs of a model with one
    and with two copies and their inputs: the run of two minus the run of one (ns), so the
    fixed cost of a ``run`` call cancels out. ``hot``: run both untimed first (the executor's
    code and tables hot, as inside a model). Each input is read just before its run: inside
    a model the layer before has just written it."""
    one, x1, two, x2 = program
    if hot:
        one()
        two()
    _touch(x1)
    t0 = clock()
    one()
    t1 = clock()
    _touch(x2)
    t2 = clock()
    two()
    t3 = clock()
    return (t3 - t2) - (t1 - t0)


def _overhead_model() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "overhead",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model.SerializeToString()


def run_overhead_ns(threads: int, repeats: int = 300) -> float:
    """Median time of one ``InferenceSession.run(None, feed)`` of a one-element Identity
    model, ns: what any model's run costs besides its nodes."""
    sess = ort_session(_overhead_model(), threads)
    x = np.zeros(1, np.float32)
    clock = clock_for(threads)
    times = []
    for _ in range(repeats + 20):
        t0 = clock()
        sess.run(None, {"x": x})
        times.append(clock() - t0)
    return float(statistics.median(times[20:]))


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
    n = check_threads(threads)
    keys = [shape_key(layer, batch, True) for layer in layers]
    wanted = {shape_key(x, batch, True) for x in (layers if only is None else only)}
    first: dict[tuple, LayerSpec] = {}
    for key, layer in zip(keys, layers, strict=True):
        first.setdefault(key, layer)
    samples: dict[tuple, dict[tuple[int, int], list[int]]] = {k: {p: [] for p in CPU_PAIRS} for k in first}
    programs = []
    for i, layer in enumerate(layers):
        per_pair = {}
        for pair in CPU_PAIRS:
            sessions: list[Any] = []
            for copies in (1, 2):
                blob, x = layer_model(layer, batch, pair, seed=seed + i, copies=copies)
                sessions += [bound_run(ort_session(blob, n), {"x": x}), x]
            per_pair[pair] = sessions
        programs.append(per_pair)
    clock = clock_for(n)
    llc = llc_bytes()
    fits = {pair: stays_in_cache(layers, batch, pair, llc) for pair in CPU_PAIRS}
    small = {key: working_set_bytes(layer, batch) <= HOT_BYTES for key, layer in first.items()}
    total = warmup + repeats
    for rep in range(total):
        for key, per_pair in zip(keys, programs, strict=True):
            for pair in CPU_PAIRS:
                ns = second_copy_ns(per_pair[pair], clock, small[key] or fits[pair])
                if rep >= warmup:
                    samples[key][pair].append(ns)
        if progress is not None:
            progress((rep + 1) * len(CPU_PAIRS), total * len(CPU_PAIRS), "layers")
    rows = []
    for key, layer in first.items():
        if key not in wanted:
            continue
        m, k, nn_, g = gemm_shape(layer, batch)
        base = {"layer": layer.name, "kind": layer.kind, "M": m, "K": k, "N": nn_, "groups": g}
        base.update(zip(GEOMETRY_COLUMNS, geometry(layer), strict=True))
        for w, a in CPU_PAIRS:
            ms = max(statistics.median(samples[key][(w, a)]), _MIN_NS) / 1e6
            rows.append({**base, "w_bits": w, "a_bits": a, "batch": batch, "latency_ms": ms})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- switches


def producers(layers: Sequence[LayerSpec]) -> np.ndarray:
    """``(L,)`` index of the layer whose output each layer reads, -1 for the model's input.

    Layers run in execution order, so a layer reads the one before it, except that layers
    sharing an input (equal ``input_group``: a ResNet block's first conv and its downsample)
    all read what the first of them reads. Residual adds and pooling sit in between as float
    or integer element-wise ops; what crosses precisions is the tensor between two layers."""
    out = np.full(len(layers), -1, dtype=np.int64)
    first_of: dict[int, int] = {}
    for i, layer in enumerate(layers):
        j = first_of.setdefault(layer.input_group, i)
        out[i] = out[j] if j != i else i - 1
    return out


def switch_model(layer: LayerSpec, batch: int, direction: str, copies: int = 1) -> tuple[bytes, np.ndarray]:
    """The ONNX model timed for a precision switch at ``layer``'s input, and its input.

    ``enter``: the float NCHW tensor quantized to uint8 and transposed to NHWC, what ONNX
    Runtime runs in front of a QLinearConv whose producer is float; ``leave``: the uint8 NHWC
    tensor transposed back and dequantized, in front of a float layer whose producer is
    integer. A linear layer's input is 2-d: quantize or dequantize only. ``copies``
    independent copies read the one input (for the two-copy difference, as per layer)."""
    from onnx import TensorProto, helper, numpy_helper

    lin = layer.kind == "linear"
    nchw = [batch * layer.in_hw[0], layer.in_channels] if lin else [batch, layer.in_channels, *layer.in_hw]
    nhwc = nchw if lin else [nchw[0], nchw[2], nchw[3], nchw[1]]
    inits = [numpy_helper.from_array(np.array(_ACT_SCALE, np.float32), "s"),
             numpy_helper.from_array(np.array(input_zero_point(layer), np.uint8), "z")]
    nodes, outputs = [], []
    for c in range(copies):
        if direction == "enter":
            if lin:
                nodes.append(helper.make_node("QuantizeLinear", ["x", "s", "z"], [f"y{c}"]))
            else:
                nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], [f"q{c}"]),
                          helper.make_node("Transpose", [f"q{c}"], [f"y{c}"], perm=[0, 2, 3, 1])]
            outputs.append(helper.make_tensor_value_info(f"y{c}", TensorProto.UINT8, nhwc))
        else:
            if lin:
                nodes.append(helper.make_node("DequantizeLinear", ["x", "s", "z"], [f"y{c}"]))
            else:
                nodes += [helper.make_node("Transpose", ["x"], [f"t{c}"], perm=[0, 3, 1, 2]),
                          helper.make_node("DequantizeLinear", [f"t{c}", "s", "z"], [f"y{c}"])]
            outputs.append(helper.make_tensor_value_info(f"y{c}", TensorProto.FLOAT, nchw))
    x_type, x_shape = (TensorProto.FLOAT, nchw) if direction == "enter" else (TensorProto.UINT8, nhwc)
    graph = helper.make_graph(nodes, f"{layer.name}_{direction}x{copies}",
                              [helper.make_tensor_value_info("x", x_type, x_shape)], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="haq-profile")
    model.ir_version = 10
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    if direction == "leave":
        x = np.clip(np.round(x / _ACT_SCALE), 0, 255).astype(np.uint8)
    return model.SerializeToString(), x


SWITCH_COLUMNS = ("kind", "in_channels", "in_h", "in_w", "batch", "enter_ms", "leave_ms")


def switch_key(layer: LayerSpec, batch: int) -> tuple:
    """What a switch's cost depends on: the input tensor's shape (and 2-d or 4-d)."""
    return ("linear" if layer.kind == "linear" else "conv", layer.in_channels, *layer.in_hw, int(batch))


def profile_switches(
    layers: Sequence[LayerSpec], batch: int = 1, repeats: int = 30, warmup: int = 3, threads: int | None = None,
) -> pd.DataFrame:
    """Time the precision switches (:func:`switch_model`) at every distinct input shape of
    ``layers``, both directions, with the clock and two-copy difference of :func:`profile_cpu`.
    Returns one row per shape, columns :data:`SWITCH_COLUMNS`."""
    if repeats < 1 or warmup < 0:
        raise HardwareError(f"repeats={repeats}, warmup={warmup}: use repeats >= 1 and warmup >= 0")
    n = check_threads(threads)
    first: dict[tuple, LayerSpec] = {}
    for layer in layers:
        first.setdefault(switch_key(layer, batch), layer)
    runs = {}
    for key, layer in first.items():
        for direction in ("enter", "leave"):
            pair = []
            for copies in (1, 2):
                blob, x = switch_model(layer, batch, direction, copies)
                pair += [bound_run(ort_session(blob, n), {"x": x}), x]
            runs[key, direction] = pair
    clock = clock_for(n)
    samples: dict[tuple, list[int]] = {k: [] for k in runs}
    for rep in range(warmup + repeats):
        for k, run in runs.items():
            ns = second_copy_ns(run, clock, hot=True)
            if rep >= warmup:
                samples[k].append(ns)
    rows = []
    for key in first:
        enter, leave = (max(statistics.median(samples[key, d]), _MIN_NS) / 1e6 for d in ("enter", "leave"))
        rows.append(dict(zip(SWITCH_COLUMNS, (*key, enter, leave), strict=True)))
    return pd.DataFrame(rows, columns=list(SWITCH_COLUMNS))


# --------------------------------------------------------------------------- end to end


def time_session(session: Any, feed: dict[str, np.ndarray], repeats: int = 30, warmup: int = 3, threads: int = 1) -> float:
    """Median latency (ms) of ``session.run(None, feed)``, same clock as :func:`profile_cpu`."""
    clock = clock_for(threads)
    times = []
    for rep in range(warmup + repeats):
        t0 = clock()
        session.run(None, feed)
        t1 = clock()
        if rep >= warmup:
            times.append(t1 - t0)
    return statistics.median(times) / 1e6
