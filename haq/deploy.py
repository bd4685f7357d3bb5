"""From policy to deployed model: an ONNX QDQ export that ONNX Runtime runs as haq measured it.

``haq export RUN_DIR|policy.json --format onnx --out model.onnx`` (and :func:`export`) write
the BN-folded model as an ONNX graph with QuantizeLinear/DequantizeLinear (QDQ) pairs that
carry each layer's bits and the numbers of the policy's scheme, taken from :mod:`haq.quant`
(the evaluator's calibrated activation ranges, :func:`~haq.quant.quantizers.activation_params`
and :func:`~haq.quant.quantizers.weight_integers`), so the exported model computes what the
search's fake-quant evaluator computed. What is quantized, tensor by tensor:

* each quantized layer's **weight**: an integer initializer and a per-channel (or per-tensor)
  ``DequantizeLinear`` (scale, zero point) in front of the Conv/Gemm;
* each quantized layer's **input** (the activation it reads): ``QuantizeLinear`` then
  ``DequantizeLinear`` with the calibrated scale and zero point of that layer and bitwidth.
  Two layers reading one tensor at the same bits share one pair.
* each such layer's **bias**, when weight and input are both integers: int32 on the grid of
  ``input_scale * weight_scale`` with a ``DequantizeLinear`` (what ONNX Runtime would do to a
  float bias anyway - its WeightBiasQuantization pass - and what the evaluator adds, see
  :meth:`~haq.quant.evaluator.Evaluator.bias`).
* Nothing else: outputs of a layer, the operands of residual adds, pooling outputs and the
  classifier's logits stay float, as in the evaluator. ONNX Runtime runs a layer as an
  integer kernel (QLinearConv) where its output is quantized too, i.e. where the next
  quantized layer reads it through an activation that Q absorbs (ReLU, ReLU6 with the
  calibrated range inside [0, 6]); a conv feeding a residual add or the logits runs
  DequantizeLinear + fp32 Conv.

Containers, by bitwidth (``b``; ``32`` stays float, ``16`` is rounded to float16 and back):

| b | weight container | activation container |
|---|---|---|
| 8 | int8 (symmetric) / uint8 (asymmetric) | uint8 with zero point (asymmetric, unsigned) / int8 (symmetric) |
| 4 | int4 / uint4 (opset 21; int8 / uint8 with ``int4_weights=False``) | uint8 / int8 after a ``Clip`` |
| 1-3, 5-7 | int8 / uint8 holding values on the b-bit grid | uint8 / int8 after a ``Clip`` to the b-bit range |

A ``Clip`` in float, to ``[(qmin - z) * s, (qmax - z) * s]``, is put in front of a
``QuantizeLinear`` whenever the container's range is wider than the b-bit grid
(``QuantizeLinear`` saturates to the container: 0-255 for uint8), so every value a b-bit
activation takes is one of its ``2^b`` levels; symmetric 8-bit activations are clipped to
+-127 (int8 would allow -128). Weights need no clip: their integers are computed on the
grid. Checked with ONNX Runtime 1.32 (CPU): it runs int4/uint4 DequantizeLinear (and
QuantizeLinear) but has no int4 convolution, so a conv with int4 weights runs
DequantizeLinear + fp32 Conv, while 8-bit QDQ around a conv fuses into QLinearConv; and its
graph optimiser fails on ``Clip -> QuantizeLinear(uint4)`` (ClipQuantFusion reads the zero
point as 8-bit), which every ReLU6 network has - so 4-bit *activations* travel in uint8/int8
after a Clip, and only 4-bit weights use int4.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from haq.atomic import atomic_write_bytes
from haq.bits import FLOAT_BITS, HALF_BITS
from haq.data import DataSplits
from haq.errors import ConfigError, ModelError, PolicyError, RunDirError
from haq.layers import LayerSpec
from haq.policy import Policy, parse_policy
from haq.quant.evaluator import Evaluator
from haq.quant.graph import OUTPUT_BITS
from haq.quant.qlayer import quantize_bias
from haq.quant.quantizers import activation_params, weight_integers
from haq.simulators.profiling import ort_session as profiling_session

OPSET = 21  #: int4/uint4 QuantizeLinear/DequantizeLinear need opset 21
FORMATS = ("onnx",)
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass(frozen=True)
class QuantizedTensor:
    """One quantized tensor of the export: what it is, its bits, container and numbers."""

    tensor: str  #: the ONNX tensor name
    role: str  #: "weight" or "activation"
    layer: str  #: the layer (weight) or the first layer that reads it (activation)
    bits: int
    container: str  #: "int8", "uint8", "int4", "uint4" or "float16"
    clipped: bool = False  #: a Clip to the b-bit range precedes QuantizeLinear


@dataclass
class ExportResult:
    """What :func:`export` wrote."""

    path: Path
    policy: Policy
    model: str
    opset: int
    quantized: list[QuantizedTensor] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)  #: layers left in float (32 bits)
    bytes: int = 0

    def summary(self) -> dict[str, Any]:
        acts = [q for q in self.quantized if q.role == "activation"]
        wts = [q for q in self.quantized if q.role == "weight"]
        return {
            "path": str(self.path), "model": self.model, "opset": self.opset, "bytes": self.bytes,
            "quantized_weights": len(wts), "quantized_activations": len(acts),
            "quantized_outputs": len([q for q in self.quantized if q.role == "output"]),
            "containers": sorted({q.container for q in self.quantized}),
            "float_layers": list(self.float_layers),
        }


# ----------------------------------------------------------------------------- containers
def _container(bits: int, signed: bool, int4: bool = True) -> tuple[int, str, int, int]:
    """``(onnx dtype, name, lo, hi)`` of the integer type that holds ``bits``-bit values
    (``int4``: 4 bits in int4/uint4, otherwise in int8/uint8)."""
    from onnx import TensorProto

    if bits == 4 and int4:
        return (TensorProto.INT4, "int4", -8, 7) if signed else (TensorProto.UINT4, "uint4", 0, 15)
    return (TensorProto.INT8, "int8", -128, 127) if signed else (TensorProto.UINT8, "uint8", 0, 255)


def _int_tensor(name: str, values: np.ndarray, dtype: int) -> Any:
    from onnx import helper

    return helper.make_tensor(name, dtype, list(values.shape), values.astype(np.int64).flatten().tolist())


def _float_tensor(name: str, values: Any) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


# ----------------------------------------------------------------------------- the graph
def _float_graph(folded: nn.Module, input_shape: Sequence[int]) -> Any:
    """The folded float model as ONNX (TorchScript exporter, batch dimension dynamic), at
    :data:`OPSET`."""
    import onnx
    from onnx import version_converter

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            exporter: Any = torch.onnx.export  # the TorchScript exporter also writes to a BytesIO
            exporter(
                folded, (torch.zeros(1, *input_shape),), buf, dynamo=False, opset_version=17,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        except Exception as exc:  # noqa: BLE001 - any tracer failure is the model's
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"cannot export the model to ONNX ({first}); pass a traceable nn.Module") from None
    proto = onnx.load_from_string(buf.getvalue())
    return version_converter.convert_version(proto, OPSET)


def _qdq_nodes(graph: Any, tag: str, src: str, bits: int, params: tuple[float, float, float, float],
               where: str) -> tuple[list[Any], str, str, bool]:
    """``[Clip] -> QuantizeLinear -> DequantizeLinear`` of tensor ``src`` with the evaluator's
    ``(scale, zero, qmin, qmax)`` (its float32 scale, as :func:`~haq.quant.qlayer.pack_activation`
    has it): the nodes, the dequantized tensor, the container name, whether clipped."""
    from onnx import helper

    scale_, zero_, qmin, qmax = params
    s32 = float(np.float32(scale_))
    dtype, cname, clo, chi = _container(bits, qmin < 0, int4=False)
    clip = (qmin, qmax) != (clo, chi)
    graph.initializer.extend([_float_tensor(f"{tag}_scale", s32), _int_tensor(f"{tag}_zero_point", np.array(zero_), dtype)])
    nodes = []
    if clip:
        lo_f, hi_f = np.float32((qmin - zero_) * s32), np.float32((qmax - zero_) * s32)
        graph.initializer.extend([_float_tensor(f"{tag}_min", lo_f), _float_tensor(f"{tag}_max", hi_f)])
        nodes.append(helper.make_node("Clip", [src, f"{tag}_min", f"{tag}_max"], [f"{tag}_clipped"], name=f"{where}/Clip"))
        src = f"{tag}_clipped"
    nodes += [
        helper.make_node("QuantizeLinear", [src, f"{tag}_scale", f"{tag}_zero_point"], [f"{tag}_q"],
                         name=f"{where}/QuantizeLinear"),
        helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_scale", f"{tag}_zero_point"], [f"{tag}_dq"],
                         name=f"{where}/DequantizeLinear"),
    ]
    return nodes, f"{tag}_dq", cname, clip


def build_qdq_model(
    evaluator: Evaluator, policy: Policy, int4_weights: bool = True
) -> tuple[Any, list[QuantizedTensor], list[str]]:
    """The ONNX QDQ model of ``policy`` on the evaluator's model (see the module docstring).

    ``int4_weights``: store 4-bit weights as int4/uint4 (half the bytes; ONNX Runtime then
    runs DequantizeLinear + fp32 Conv), otherwise in int8/uint8 (a conv whose input and output
    are quantized can then fuse into QLinearConv). ``policy`` must be matched to ``evaluator.layers`` and use ``evaluator.scheme``. Returns the
    model proto, the quantized tensors and the names of the layers left in float.
    """
    from onnx import TensorProto, helper, numpy_helper

    scheme = evaluator.scheme
    layers = evaluator.layers
    proto = _float_graph(evaluator.folded_model(), evaluator.data.input_shape)
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    # the TorchScript exporter shares equal initializers through Identity nodes: follow them
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}

    def source(name: str) -> str:
        return alias.get(name, name)

    by_weight: dict[str, Any] = {}  # a layer's weight name -> the Conv/Gemm reading it
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 1:
            by_weight.setdefault(node.input[1], node)  # its own name (equal weights: an alias of another)
            by_weight.setdefault(source(node.input[1]), node)
    new_nodes: dict[int, list[Any]] = {}  # id(node) -> nodes to insert before it
    after: dict[int, list[Any]] = {}  # id(node) -> nodes to insert after it
    rewire: dict[str, str] = {}  # tensor -> its output-quantized version, for every reader
    layer_input: dict[int, str] = {}
    layer_input_q: dict[int, str] = {}
    plan = evaluator.residual_plan
    out_on = set(plan.quantized_outputs(policy.w_bits.tolist(), policy.a_bits.tolist()))
    quantized: list[QuantizedTensor] = []
    float_layers: list[str] = []
    shared: dict[tuple, str] = {}  # (tensor, bits, params) -> dequantized tensor name
    w_bits, a_bits = policy.w_bits.tolist(), policy.a_bits.tolist()
    for i, spec in enumerate(layers):
        wname = f"{spec.name}.weight"
        node = by_weight.get(wname)
        if node is None or source(wname) not in inits:
            raise ModelError(
                f"cannot export layer {spec.name}: the ONNX graph has no Conv/Gemm reading {wname}; "
                "export a model whose layers are nn.Conv2d/nn.Linear modules called once"
            )
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in node.attribute):
            raise ModelError(f"cannot export layer {spec.name}: its Gemm does not read the weight as (out, in)")
        before = new_nodes.setdefault(id(node), [])
        wb, ab = int(w_bits[i]), int(a_bits[i])
        if wb == FLOAT_BITS and ab == FLOAT_BITS:
            float_layers.append(spec.name)
        # --- weight
        if wb == HALF_BITS:
            w16 = evaluator.float_weight(i).detach().half().float().numpy()
            graph.initializer.append(_float_tensor(f"{wname}_fp16", w16))
            node.input[1] = f"{wname}_fp16"
            quantized.append(QuantizedTensor(wname, "weight", spec.name, wb, "float16"))
        elif wb < HALF_BITS:
            q, scale, zero = weight_integers(
                evaluator.float_weight(i), wb, scheme.weight_mode,
                per_channel=scheme.weight_granularity == "per-channel",
            )
            signed = not (scheme.weight_mode == "asymmetric" and wb > 1)
            dtype, cname, _, _ = _container(wb, signed, int4_weights)
            per_channel = scale.numel() > 1
            s = scale.numpy() if per_channel else scale.reshape(()).numpy()
            z = zero.numpy() if per_channel else zero.reshape(()).numpy()
            qname = f"{wname}_quantized"
            graph.initializer.extend([
                _int_tensor(qname, q.numpy(), dtype), _float_tensor(f"{wname}_scale", s),
                _int_tensor(f"{wname}_zero_point", z, dtype),
            ])
            kwargs: dict[str, Any] = {"axis": 0} if per_channel else {}
            before.append(helper.make_node(
                "DequantizeLinear", [qname, f"{wname}_scale", f"{wname}_zero_point"], [f"{wname}_dq"],
                name=f"{spec.name}/weight/DequantizeLinear", **kwargs,
            ))
            node.input[1] = f"{wname}_dq"
            quantized.append(QuantizedTensor(wname, "weight", spec.name, wb, cname))
        # --- input activation
        x = node.input[0]
        layer_input[i] = x
        if ab == FLOAT_BITS:
            continue
        if ab == HALF_BITS:
            key: tuple = (x, ab)
            if key not in shared:
                shared[key] = f"{x}_fp16"
                before += [
                    helper.make_node("Cast", [x], [f"{x}_to_fp16"], to=TensorProto.FLOAT16, name=f"{spec.name}/input/Cast16"),
                    helper.make_node("Cast", [f"{x}_to_fp16"], [shared[key]], to=TensorProto.FLOAT, name=f"{spec.name}/input/Cast32"),
                ]
                quantized.append(QuantizedTensor(x, "activation", spec.name, ab, "float16"))
            node.input[0] = shared[key]
            layer_input_q[i] = shared[key]
            continue
        lo, hi = evaluator.activation_range(i, ab)
        params = activation_params(lo, hi, ab, scheme.activation_mode)
        s32 = float(np.float32(params[0]))
        key = (x, ab, s32, *params[1:])
        if key not in shared:
            nodes_, shared[key], cname, clip = _qdq_nodes(graph, f"{x}_a{ab}_{len(shared)}", x, ab, params,
                                                          f"{spec.name}/input")
            before += nodes_
            quantized.append(QuantizedTensor(x, "activation", spec.name, ab, cname, clip))
        node.input[0] = shared[key]
        layer_input_q[i] = shared[key]
        # --- bias: int32 on the grid of input_scale * weight_scale, as the evaluator adds it
        if wb < HALF_BITS and len(node.input) > 2 and source(node.input[2]) in inits:
            bname = f"{spec.name}.bias"
            _, bq = quantize_bias(torch.from_numpy(numpy_helper.to_array(inits[source(node.input[2])]).copy()), s32,
                                  evaluator.weight_scale(i, wb))
            bscale = (torch.tensor(s32, dtype=torch.float32) * evaluator.weight_scale(i, wb)).expand_as(bq)
            graph.initializer.extend([
                _int_tensor(f"{bname}_quantized", bq.numpy(), TensorProto.INT32),
                _float_tensor(f"{bname}_scale", bscale.numpy()),
                _int_tensor(f"{bname}_zero_point", np.zeros(bq.shape[0]), TensorProto.INT32),
            ])
            before.append(helper.make_node(
                "DequantizeLinear", [f"{bname}_quantized", f"{bname}_scale", f"{bname}_zero_point"], [f"{bname}_dq"],
                name=f"{spec.name}/bias/DequantizeLinear", axis=0,
            ))
            node.input[2] = f"{bname}_dq"
            quantized.append(QuantizedTensor(bname, "bias", spec.name, 32, "int32"))
        # --- output feeding a residual add (haq.quant.graph): 8 bits while the layer is integer
        if i in out_on:
            y = node.output[0]
            nodes_, y_dq, cname, clip = _qdq_nodes(graph, f"{y}_out", y, OUTPUT_BITS, evaluator.output_params(i),
                                                   f"{spec.name}/output")
            after.setdefault(id(node), []).extend(nodes_)
            rewire[y] = y_dq
            quantized.append(QuantizedTensor(y, "output", spec.name, OUTPUT_BITS, cname, clip))
    nodes = list(graph.node)
    produced_by_qdq = {o for extra in after.values() for n in extra for o in n.output}
    readers = nodes + [n for extra in new_nodes.values() for n in extra]
    for node in readers:  # readers of an output-quantized tensor read its DequantizeLinear
        for k, name in enumerate(node.input):
            if name in rewire:
                node.input[k] = rewire[name]
    # skip connections: an add reads the quantized input of the layer that also reads it
    skip_sources = {layer_input[k]: layer_input_q[k] for k in plan.skips if k in layer_input_q}
    skipped = 0
    for node in nodes:
        if node.op_type == "Add":
            for k, name in enumerate(node.input):
                if name in skip_sources:
                    node.input[k] = skip_sources[name]
                    skipped += 1
    wanted = sum(1 for k in plan.skips if k in layer_input_q)
    if skipped != wanted:
        raise ModelError(
            f"cannot export the residual adds as the evaluator quantizes them ({skipped} of {wanted} skip "
            "connections found in the ONNX graph); please report the model"
        )
    del graph.node[:]
    for node in nodes:
        graph.node.extend(new_nodes.get(id(node), []))
        graph.node.append(node)
        graph.node.extend(after.get(id(node), []))
    assert produced_by_qdq.isdisjoint(rewire)  # no cycle: the Q reads the raw tensor
    _prune(graph)
    proto.producer_name = "haq"
    meta = {"policy": json.dumps(policy.to_dict()), "haq.quantized_tensors": str(len(quantized))}
    for mk, mv in meta.items():
        proto.metadata_props.add(key=mk, value=mv)
    return proto, quantized, float_layers


def _prune(graph: Any) -> None:
    """Drop nodes whose outputs nothing reads, then initializers nothing reads (the float
    weights and biases the quantized ones replaced, and the Identity nodes that shared them)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def check_model(proto: Any) -> None:
    """``onnx.checker`` (full check) and strict shape inference; a failure is haq's bug."""
    import onnx

    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)


# ----------------------------------------------------------------------------- running it
def ort_session(model: Any, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session of ``model`` (a proto, bytes or a path): the session the
    ``cpu`` hardware model times layers with (:func:`haq.simulators.profiling.ort_session`)."""
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else (
        Path(model).read_bytes() if isinstance(model, str | os.PathLike) else model
    )
    return profiling_session(data, threads)


def ort_logits(session: Any, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Outputs ``(N, classes)`` of an ONNX Runtime session on images ``x`` ``(N, C, H, W)``."""
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: x[i : i + batch_size].numpy().astype(np.float32)})[0]
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class Agreement:
    """Exported model vs the evaluator's fake quant on one split."""

    images: int
    agreement: float  #: fraction of images whose top-1 class is the same
    ort_accuracy: float
    fake_quant_accuracy: float

    @property
    def accuracy_gap_images(self) -> int:
        return round(abs(self.ort_accuracy - self.fake_quant_accuracy) * self.images)


def agreement(evaluator: Evaluator, policy: Policy, proto: Any, split: str = "test") -> Agreement:
    """Run ``proto`` in ONNX Runtime and the evaluator's fake quant on ``split``; compare."""
    part = evaluator.data.split(split)
    fq = evaluator.logits(policy.w_bits, policy.a_bits, split).argmax(1).numpy()
    ort_pred = ort_logits(ort_session(proto), part.x).argmax(1)
    y = part.y.numpy()
    n = len(y)
    return Agreement(n, float((fq == ort_pred).mean()), float((ort_pred == y).mean()), float((fq == y).mean()))


# ----------------------------------------------------------------------------- tensor by tensor
@dataclass(frozen=True)
class TensorDiff:
    """One quantized activation of the export (a ``QuantizeLinear``) against the evaluator's
    integers of the same quantizer, over a split: how many elements differ and by how many
    integer steps."""

    tensor: str  #: the QuantizeLinear node, e.g. ``layer1.0.conv1/input`` or ``.../output``
    elements: int
    differing: int
    max_steps: int  #: largest |ONNX Runtime - evaluator|, integer steps

    @property
    def fraction(self) -> float:
        return self.differing / max(self.elements, 1)


@dataclass(frozen=True)
class TensorComparison:
    """:func:`compare_tensors`: top-1 agreement and every quantized tensor, in graph order."""

    forced: bool  #: each evaluator quantizer was fed ONNX Runtime's integers (differences are local)
    images: int
    agreement: float  #: top-1, evaluator vs ONNX Runtime, under this comparison
    tensors: list[TensorDiff]

    @property
    def first_differing(self) -> str | None:
        return next((t.tensor for t in self.tensors if t.differing), None)

    @property
    def fraction(self) -> float:
        """Share of all quantized elements whose integer differs."""
        return sum(t.differing for t in self.tensors) / max(sum(t.elements for t in self.tensors), 1)

    @property
    def max_steps(self) -> int:
        return max((t.max_steps for t in self.tensors), default=0)


def _quantizer_nodes(proto: Any, evaluator: Evaluator) -> tuple[dict[str, str], dict[int, str], dict[int, str]]:
    """The exported model's QuantizeLinear outputs and which evaluator quantizer each is:
    ``({node name: output tensor}, {layer: node of its input}, {layer: node of its output})``."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    q_nodes = {n.name: n.output[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    by_weight = {}
    for n in graph.node:
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 1:
            w = n.input[1]  # the layer's own weight name (or its quantized/fp16 version)
            for suffix in ("_dq", "_fp16"):
                w = w.removesuffix(suffix)
            by_weight[w] = n
    inputs, outputs = {}, {}
    for i, spec in enumerate(evaluator.layers):
        node = by_weight.get(f"{spec.name}.weight")
        dq = producer.get(node.input[0]) if node is not None else None
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            inputs[i] = q.name
        if f"{spec.name}/output/QuantizeLinear" in q_nodes:
            outputs[i] = f"{spec.name}/output/QuantizeLinear"
    return q_nodes, inputs, outputs


def compare_tensors(evaluator: Evaluator, policy: Policy, proto: Any, split: str = "test", forced: bool = True,
                    batch_size: int = 128) -> TensorComparison:
    """Every quantized activation of the exported model ``proto`` (ONNX Runtime) against the
    evaluator's integers of the same quantizer, element by element, on ``split``.

    ``forced``: each evaluator quantizer (layer inputs, layer outputs, skip connections) is
    fed ONNX Runtime's integers of that tensor, so a tensor's differences are made by the
    ops between it and the quantized tensors before it only - a systematic mismatch (a
    scale, zero point, clip, rounding rule, bias) shows as many differing elements in the
    first tensor it touches, float summation order as rare one-step differences. Otherwise
    both run free, and differences accumulate through the network. The evaluator runs eager
    (its forward hooks), with the weights and parameters :meth:`Evaluator.apply` loads."""
    import onnx

    from haq.quant.graph import SkipQuant, output_quantizers
    from haq.quant.qlayer import ActivationQuantizer

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    q_nodes, inputs, outputs = _quantizer_nodes(probe, evaluator)
    zero_points = {t.name: t for t in probe.graph.initializer}
    node_zero = {}
    for n in probe.graph.node:
        if n.op_type == "QuantizeLinear":
            zp = zero_points[n.input[2]]
            probe.graph.output.append(onnx.helper.make_tensor_value_info(n.output[0], zp.data_type, None))
            node_zero[n.name] = int(onnx.numpy_helper.to_array(zp).astype(np.int64))
    names = list(q_nodes)
    session = ort_session(probe)
    evaluator.apply(np.asarray(policy.w_bits), np.asarray(policy.a_bits))
    model = evaluator.qmodel
    current: dict[str, np.ndarray] = {}
    counts = {name: [0, 0, 0] for name in names}  # elements, differing, max steps

    def hook(node: str, quantizer: ActivationQuantizer, record: bool = True) -> Any:
        def pre(_module: nn.Module, args: tuple) -> tuple | None:
            if quantizer.a_mode != "int" or node not in current:
                return None
            x = args[0]
            theirs = current[node]
            if record:  # the evaluator's own integers of this tensor
                ours = torch.round(quantizer.quantize(x) / quantizer.a_scale).cpu().numpy().astype(np.int64)
                d = np.abs(theirs - ours)
                c = counts[node]
                c[0], c[1], c[2] = c[0] + d.size, c[1] + int(np.count_nonzero(d)), max(c[2], int(d.max(initial=0)))
            if not forced:
                return None
            return (torch.from_numpy(theirs.astype(np.float32)).to(x.device) * quantizer.a_scale, *args[1:])
        return pre

    handles = []
    for i, node in inputs.items():
        handles.append(evaluator.qlayers[i].register_forward_pre_hook(hook(node, evaluator.qlayers[i])))
    for j, out in output_quantizers(model).items():
        if j in outputs:
            handles.append(out.register_forward_pre_hook(hook(outputs[j], out)))
    for m in model.modules():
        if isinstance(m, SkipQuant) and m.index in inputs:
            # the same tensor as the layer's input: forced alike, counted once (by the layer)
            handles.append(m.register_forward_pre_hook(hook(inputs[m.index], evaluator.qlayers[m.index], False)))
    part = evaluator.data.split(split)
    agree = 0
    fmt = evaluator.memory_format
    try:
        with torch.inference_mode():
            for k in range(0, len(part), batch_size):
                x = part.x[k : k + batch_size]
                outs = session.run(None, {session.get_inputs()[0].name: x.numpy().astype(np.float32)})
                current.clear()
                current.update({n: o.astype(np.int64) - node_zero[n] for n, o in zip(names, outs[1:], strict=True)})
                ours = model(x.to(evaluator.device).contiguous(memory_format=fmt)).cpu().numpy()
                agree += int((ours.argmax(1) == outs[0].argmax(1)).sum())
    finally:
        for h in handles:
            h.remove()
    rows = [TensorDiff(n.removesuffix("/QuantizeLinear"), *counts[n]) for n in names if counts[n][0]]
    return TensorComparison(forced, len(part), agree / max(len(part), 1), rows)


# ----------------------------------------------------------------------------- the entry point
def resolve_policy_source(source: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(policy.json path, the run's config or {})`` of a run directory or a policy file."""
    p = Path(source)
    if p.is_dir():
        pol = p / "policy.json"
        if not pol.is_file():
            raise RunDirError(f"{p} holds no policy.json (is the search finished?); pass a finished run directory or a policy.json")
        cfg: dict[str, Any] = {}
        cfg_path = p / "config.json"
        if cfg_path.is_file():
            try:
                cfg = json.loads(cfg_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                cfg = {}
        return pol, cfg
    if not p.is_file():
        raise PolicyError(f"{p} is neither a run directory nor a policy file; pass RUN_DIR or policy.json")
    return p, {}


def check_out_path(out: str | Path) -> Path:
    """Refuse, before any work, an ``--out`` that cannot be written."""
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory; give a file name such as {path / 'model.onnx'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"--out {path}: folder {parent} does not exist; create it or choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"--out {path} is not writable; choose another --out")
    return path


def _load(model: str | None, weights: str | Path | None, data: str | None, input_size: int | None,
          cfg: dict[str, Any], policy_model: str) -> tuple[str, Any, DataSplits, list[LayerSpec]]:
    from haq.api import load_model_and_data

    name = model or cfg.get("model") or policy_model
    if not name:
        raise ConfigError("which model? pass --model (the policy names none)")
    if weights is None and model is None:
        weights = cfg.get("weights")
    if data is None and model is None:
        data = cfg.get("data")
    if input_size is None and model is None:
        input_size = cfg.get("input_size")
    loaded, splits, layers = load_model_and_data(name, weights, data, input_size)
    return name, loaded, splits, layers


def export(
    source: str | Path,
    out: str | Path,
    model: str | None = None,
    weights: str | Path | None = None,
    data: str | None = None,
    input_size: int | None = None,
    format: str = "onnx",
    int4_weights: bool = True,
) -> ExportResult:
    """Export the policy of a run directory or ``policy.json`` (or a shorthand ``uniform:8``)
    applied to ``model`` as an ONNX QDQ model at ``out`` (written atomically, checked).

    ``model`` defaults to the run's model (its config.json) or the policy's ``model`` field;
    ``weights``, ``data`` and ``input_size`` to the run's when the model is not given.
    """
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r} is not supported: use {', '.join(FORMATS)}")
    path = check_out_path(out)
    spec = str(source)
    cfg: dict[str, Any] = {}
    policy_model = ""
    if not spec.startswith("uniform:"):
        pol_path, cfg = resolve_policy_source(source)
        spec = str(pol_path)
        policy_model = Policy.load(pol_path).model
    name, loaded, splits, layers = _load(model, weights, data, input_size, cfg, policy_model)
    try:
        policy = parse_policy(spec, layers, model=name)
    except PolicyError as exc:
        if policy_model and policy_model != name:
            raise PolicyError(f"the policy is for model {policy_model}, not {name}: {exc}") from None
        raise
    evaluator = Evaluator(loaded.module, splits, policy.quant, layers, compile=False)
    proto, quantized, float_layers = build_qdq_model(evaluator, policy, int4_weights)
    check_model(proto)
    blob = proto.SerializeToString()
    try:
        atomic_write_bytes(path, blob)
    except OSError as exc:
        raise ConfigError(f"--out {path} cannot be written ({exc.strerror or exc}); choose another --out") from None
    return ExportResult(path, policy, name, OPSET, quantized, float_layers, len(blob))


# ----------------------------------------------------------------------------- measured latency
def generated_data(input_shape: Sequence[int], classes: int = 10, images: int = 64, seed: int = 0,
                   test: int = 8) -> DataSplits:
    """Random normal images (and labels) for models without data: enough to calibrate an
    export whose accuracy nobody reads (kernel time does not depend on the values);
    ``images`` calibration images, 8 validation and ``test`` test images."""
    from haq.data import Split

    g = torch.Generator().manual_seed(seed)
    shape = tuple(int(v) for v in input_shape)

    def split(n: int) -> Split:
        return Split(torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g))

    return DataSplits("generated", (shape[0], shape[1], shape[2]), classes, calib=split(images), val=split(8),
                      test=split(test))


def set_batchnorm_statistics(model: nn.Module, x: torch.Tensor) -> None:
    """Set ``model``'s BatchNorm running statistics to those of images ``x`` (in place), as
    training would: a randomly initialised network then normalises its activations like a
    trained one (at initialisation MobileNetV2's logits are ~1e-9 apart, every top-1 a
    float tie; with its activations normalised they are O(1))."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def random_network(arch: str, test_images: int, input_size: int = 64) -> tuple[Evaluator, list[LayerSpec]]:
    """A torchvision classifier with random weights (torch seed 0) at ``input_size``, its
    BatchNorm statistics set from 32 generated calibration images, ``test_images`` generated
    test images, 1000 classes: the evaluator and layers the agreement checks use for models
    nobody has weights or data for here."""
    from haq.layers import describe
    from haq.models import load_model

    torch.manual_seed(0)
    loaded = load_model(arch, input_size=input_size)
    data = generated_data(loaded.input_shape, classes=1000, images=32, seed=1, test=test_images)
    set_batchnorm_statistics(loaded.module, data.calib.x)
    layers = describe(loaded.module, loaded.input_shape)
    return Evaluator(loaded.module, data, None, layers, compile=False), layers


def float_noise_floor(evaluator: Evaluator, policy: Policy, split: str = "test") -> tuple[float, float]:
    """Top-1 agreement of the evaluator's fake quant with itself run in the other memory format
    and in float64: what two float implementations of the same fake quant agree on (the floor
    for any comparison with an integer runtime)."""
    import copy

    ref = evaluator.logits(policy.w_bits, policy.a_bits, split).argmax(1)
    x = evaluator.data.split(split).x
    other = torch.contiguous_format if evaluator.memory_format == torch.channels_last else torch.channels_last
    with torch.inference_mode():
        fmt = copy.deepcopy(evaluator.qmodel).to(memory_format=other)(x.contiguous(memory_format=other)).argmax(1)
        f64 = copy.deepcopy(evaluator.qmodel).double()(x.double()).argmax(1)
    return float((fmt == ref).float().mean()), float((f64 == ref).float().mean())


def latency_ms(model: Any, input_shape: Sequence[int], batch: int = 1, threads: int = 1, repeats: int = 30,
               warmup: int = 5) -> float:
    """Median end-to-end ONNX Runtime latency (ms) of ``model`` on one random batch, the
    clock and threads of the ``cpu`` hardware model (:mod:`haq.simulators.profiling`)."""
    from haq.simulators.profiling import time_session

    session = ort_session(model, threads)
    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    return time_session(session, {session.get_inputs()[0].name: x}, repeats, warmup, threads)


@dataclass(frozen=True)
class EndToEndCheck:
    """Sum of per-layer profiled times (the ``cpu`` hardware model) against the measured
    whole exported model, fp32 and uniform int8, one model; ms for one batch."""

    layers_fp32_ms: float
    layers_int8_ms: float
    model_fp32_ms: float
    model_int8_ms: float
    profile_s: float
    n_layers: int

    @property
    def error_fp32(self) -> float:
        return self.layers_fp32_ms / self.model_fp32_ms - 1

    @property
    def error_int8(self) -> float:
        return self.layers_int8_ms / self.model_int8_ms - 1


def check_end_to_end(model: nn.Module, input_shape: Sequence[int], batch: int = 1, threads: int = 1,
                     repeats: int = 30) -> EndToEndCheck:
    """Profile ``model``'s layers with the ``cpu`` hardware model and time its fp32 and
    uniform-8 exports end to end in ONNX Runtime (mean of a measurement before and after
    profiling, so drifting load hits both sides alike)."""
    import time

    from haq.layers import describe
    from haq.simulators.measured import CpuProfileHardware

    layers = describe(model, input_shape)
    ev = Evaluator(model, generated_data(input_shape), None, layers, compile=False)
    fp32, _, _ = build_qdq_model(ev, Policy.uniform(layers, FLOAT_BITS))
    int8, _, _ = build_qdq_model(ev, Policy.uniform(layers, 8))

    def whole() -> tuple[float, float]:
        return (latency_ms(fp32, input_shape, batch, threads, repeats),
                latency_ms(int8, input_shape, batch, threads, repeats))

    before = whole()
    start = time.perf_counter()
    table = CpuProfileHardware(threads=threads, repeats=repeats).cost_table(layers, batch)
    profile_s = time.perf_counter() - start
    after = whole()
    n = len(layers)
    return EndToEndCheck(
        layers_fp32_ms=table.cost(np.full(n, 32), np.full(n, 32))[0],
        layers_int8_ms=table.cost(np.full(n, 8), np.full(n, 8))[0],
        model_fp32_ms=(before[0] + after[0]) / 2, model_int8_ms=(before[1] + after[1]) / 2,
        profile_s=profile_s, n_layers=n,
    )


# ----------------------------------------------------------------------------- haq verify
@dataclass(frozen=True)
class VerifyRow:
    """One model of ``haq verify``: measured and predicted end-to-end latency, accuracy."""

    label: str  #: "policy", "uniform int8" or "fp32"
    measured_ms: float  #: ONNX Runtime, this machine
    predicted_ms: float | None  #: the ``cpu`` hardware model of this machine (None: bits it has no kernel for)
    searched_ms: float | None  #: what the search reported (the policy row, when it searched on cpu)
    ort_accuracy: float  #: ONNX Runtime, test split
    fake_quant_accuracy: float  #: the evaluator, test split


@dataclass(frozen=True)
class VerifyResult:
    model: str
    run_hardware: str | None
    threads: int
    rows: list[VerifyRow]
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "run_hardware": self.run_hardware, "threads": self.threads, "note": self.note,
                "rows": [r.__dict__ for r in self.rows]}


def verify(source: str | Path, model: str | None = None, weights: str | Path | None = None, data: str | None = None,
           input_size: int | None = None, threads: int | None = None, repeats: int = 50) -> VerifyResult:
    """Export the policy of a run (or policy.json), uniform int8 and fp32 of the same model;
    measure each end to end in ONNX Runtime on this CPU; put them beside the latency the
    ``cpu`` hardware model predicts (and the search reported, when it searched on ``cpu``)
    and the ONNX Runtime accuracy on the test split."""
    from haq.costs import CostModel
    from haq.simulators.measured import CpuProfileHardware

    pol_path, cfg = resolve_policy_source(source)
    stored = Policy.load(pol_path)
    name, loaded, splits, layers = _load(model, weights, data, input_size, cfg, stored.model)
    policy = parse_policy(str(pol_path), layers, model=name)
    evaluator = Evaluator(loaded.module, splits, policy.quant, layers, compile=False)
    hw = CpuProfileHardware(threads=threads)
    costs = CostModel(layers, hw.cost_table(layers, 1))
    run_hw = cfg.get("hardware") or policy.hardware
    rows = []
    for label, pol in (("policy", policy), ("uniform int8", Policy.uniform(layers, 8, quant=policy.quant)),
                       ("fp32", Policy.uniform(layers, FLOAT_BITS, quant=policy.quant))):
        proto, _, _ = build_qdq_model(evaluator, pol)
        agree = agreement(evaluator, pol, proto, "test")
        measured = latency_ms(proto, splits.input_shape, 1, hw.threads, repeats)
        lat = costs.cost(pol.w_bits, pol.a_bits).latency_ms
        pred = float("nan") if lat is None else float(lat)
        searched = policy.metrics.get("latency_ms") if label == "policy" and run_hw == "cpu" else None
        rows.append(VerifyRow(label, measured, pred if np.isfinite(pred) else None,
                              None if searched is None else float(searched), agree.ort_accuracy, agree.fake_quant_accuracy))
    note = ("the run searched on this CPU's cpu model" if run_hw == "cpu" else
            f"the run's hardware is {run_hw or 'not recorded'}, not this CPU: predicted = this CPU's cpu model")
    return VerifyResult(name, run_hw, hw.threads, rows, note)
