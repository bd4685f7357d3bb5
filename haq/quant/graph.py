"""The tensors an integer runtime quantizes besides the layer inputs: layer outputs read in
float, and residual adds.

haq quantizes each Conv/Linear's input (:class:`~haq.quant.qlayer.QuantLayer`). An integer
runtime (ONNX Runtime running the QDQ model :mod:`haq.deploy` exports) runs a layer as an
integer kernel (QLinearConv) only when its output is quantized too, and a residual add as
an integer add (QLinearAdd) only when both operands are. A layer output read only by
integer layers is quantized by their input quantizers (a ReLU/ReLU6 between them is
absorbed: clamping at 0 and 6 is what a [0, hi <= 6] grid does anyway). What is left:

* the output of an integer layer (weights and input 1-8 bits) that something other than an
  integer layer reads - a residual add (ResNet's conv2 and downsample, MobileNetV2's
  projection; BatchNorm folded, so the add reads the conv), a pool, a layer kept in
  float - gets an **output quantizer** (:class:`OutputQuant`, right after the layer): 8
  bits (the integer kernel's output container), range calibrated on the layer's output;
  which ones are on depends on the policy (:meth:`ResidualPlan.quantized_outputs`);
* an add operand that is a tensor some quantized layer also reads (the skip connection: the
  block input that the block's first conv reads) is replaced by that layer's quantized
  input (:class:`SkipQuant`), as the exported graph feeds the add the same DequantizeLinear.

The logits stay float (ONNX Runtime's QGemm writes float). :func:`plan_residuals` finds all
of this with ``torch.fx``; a model fx cannot trace keeps the layer-input placement only
(its export is then checked against the evaluator all the same: the agreement tests).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from haq.quant.qlayer import FLOAT_MODE, ActivationQuantizer, QuantLayer

_ADDS = (operator.add, operator.iadd, torch.add)
_ACTIVATIONS = (nn.Identity, nn.ReLU, nn.ReLU6, nn.Hardtanh)
_ACTIVATION_FNS = (torch.relu, nn.functional.relu, nn.functional.relu6, nn.functional.hardtanh)
OUTPUT_BITS = 8  #: bits of a layer output that feeds a residual add (the int8 kernel's output)


class OutputQuant(ActivationQuantizer):
    """Fake-quantizes the output of layer ``index`` (identity while off)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize(x)


class SkipQuant(nn.Module):
    """Feeds an add the quantized input of layer ``index`` (what that layer reads)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self._source: list[ActivationQuantizer] = []  # not a submodule: the layer lives elsewhere

    def bind(self, layer: ActivationQuantizer) -> None:
        self._source[:] = [layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._source[0].quantize(x) if self._source else x


@dataclass
class ResidualPlan:
    """Where outputs and residual adds are quantized: layer indices, in execution order."""

    outputs: list[int] = field(default_factory=list)  #: layers with an output quantizer
    skips: list[int] = field(default_factory=list)  #: layers whose quantized input feeds an add
    traced: bool = True
    #: per output-quantized layer: whether something other than layers reads it (an add, a
    #: pool), and the layers that read it (through ReLU/ReLU6/Identity)
    always: dict[int, bool] = field(default_factory=dict)
    consumers: dict[int, list[int]] = field(default_factory=dict)

    def quantized_outputs(self, w_bits: Sequence[int], a_bits: Sequence[int]) -> list[int]:
        """Layers whose output is quantized under a policy: an integer layer (weights and
        input 1-8 bits) whose output something other than a layer reads, or a layer that
        reads it in float (16/32 bits). (A layer output read only by integer layers is
        quantized by their input quantizers, the ReLU between absorbed.)"""
        out = []
        for j in self.outputs:
            if int(w_bits[j]) < 16 and int(a_bits[j]) < 16 and (
                self.always[j] or any(int(a_bits[k]) >= 16 for k in self.consumers[j])
            ):
                out.append(j)
        return out

    @staticmethod
    def output_name(index: int) -> str:
        return f"haq_output_{index}"


def _is_identity(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.Identity)


def plan_residuals(model: nn.Module, layer_names: Sequence[str]) -> tuple[nn.Module, ResidualPlan]:
    """``model`` (float, BN folded) as an fx GraphModule with an :class:`OutputQuant` after
    each layer whose output feeds an add and a :class:`SkipQuant` in front of each add
    operand that a quantized layer also reads; and where they are. Untraceable: ``model``
    itself and an empty plan (``traced=False``)."""
    index = {name: i for i, name in enumerate(layer_names)}

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return qualname in index or isinstance(m, QuantLayer) or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - dynamic control flow etc.: keep the layer-input placement
        return model, ResidualPlan(traced=False)
    gm = fx.GraphModule(model, graph)
    layer_of: dict[fx.Node, int] = {
        n: index[str(n.target)] for n in gm.graph.nodes if n.op == "call_module" and str(n.target) in index
    }

    def resolve(node: fx.Node) -> fx.Node:
        while _is_identity(gm, node) and isinstance(node.args[0], fx.Node):
            node = node.args[0]
        return node

    def transparent(node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(gm.get_submodule(str(node.target)), _ACTIVATIONS)
        return node.op == "call_function" and node.target in _ACTIVATION_FNS

    outputs: dict[int, fx.Node] = {}
    always: dict[int, bool] = {}
    consumers: dict[int, list[int]] = {}
    for src, j in layer_of.items():  # who reads each layer's output, through activations
        readers: list[int] = []
        other = False
        todo = list(src.users)
        while todo:
            u = todo.pop()
            if u in layer_of:
                readers.append(layer_of[u])
            elif transparent(u):
                todo.extend(u.users)
            elif u.op != "output":
                other = True
        if other or readers:
            outputs[j] = src
            always[j] = other
            consumers[j] = sorted(set(readers))
    skips: list[tuple[fx.Node, int, int]] = []  # (add node, arg position, layer)
    for node in list(gm.graph.nodes):
        is_add = (node.op == "call_function" and node.target in _ADDS) or (
            node.op == "call_method" and node.target in ("add", "add_")
        )
        if not is_add:
            continue
        for pos, arg in enumerate(node.args[:2]):
            if not isinstance(arg, fx.Node):
                continue
            src = resolve(arg)
            if src in layer_of:
                continue
            readers = sorted(layer_of[u] for u in src.users if u in layer_of)
            if readers:
                skips.append((node, pos, readers[0]))
    for j, src in outputs.items():
        name = ResidualPlan.output_name(j)
        gm.add_submodule(name, OutputQuant(j))
        with gm.graph.inserting_after(src):
            q = gm.graph.call_module(name, (src,))
        for user in list(src.users):
            if user is not q:
                user.replace_input_with(src, q)
    for k, (add, pos, layer) in enumerate(skips):
        name = f"haq_skip_{k}"
        gm.add_submodule(name, SkipQuant(layer))
        with gm.graph.inserting_before(add):
            q = gm.graph.call_module(name, (add.args[pos],))
        args = list(add.args)
        args[pos] = q
        add.args = tuple(args)
    gm.graph.lint()
    gm.recompile()
    order = sorted(outputs)
    return gm, ResidualPlan(order, [layer for _, _, layer in skips], True, {j: always[j] for j in order},
                            {j: consumers[j] for j in order})


def output_quantizers(model: nn.Module) -> dict[int, OutputQuant]:
    return {m.index: m for m in model.modules() if isinstance(m, OutputQuant)}


def bind_skips(model: nn.Module, layers: Sequence[ActivationQuantizer]) -> None:
    """Point every :class:`SkipQuant` of ``model`` at its (wrapped) layer."""
    for m in model.modules():
        if isinstance(m, SkipQuant):
            m.bind(layers[m.index])


def is_off(q: ActivationQuantizer) -> bool:
    return bool(q.a_params[-1] == FLOAT_MODE)
