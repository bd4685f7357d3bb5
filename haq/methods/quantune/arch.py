"""The 8 architecture features Quantune gives its surrogate, and where each number comes from.

Quantune (Lee et al., 2022, §4) appends a description of the network to every
configuration so a surrogate trained on some models transfers to another. The released
code (leejaymin/qaunt_xgboost) merges them from a spreadsheet that is not published, so we
derive them ourselves, the same way for every model, with :func:`architecture_features`:

=============  ===========================================================================
feature        how it is counted (one ``torch.fx`` trace of the model in eval mode)
=============  ===========================================================================
nodes          nodes of the traced graph (inputs, calls, output)
conv           ``nn.Conv2d`` calls
bn             ``nn.BatchNorm2d`` calls
act            activation calls: ReLU/ReLU6/Hardswish/SiLU/GELU/(Hard)Sigmoid modules,
               ``F.relu``/``F.relu6``/``torch.relu`` and ``.relu()``
skip           residual additions (``+``, ``torch.add``, ``.add``)
depthwise      convs with ``groups == in_channels > 1``
pointwise      1x1 convs with ``groups == 1``
size_mb        parameters x 4 bytes / 10^6 (fp32 model size, MB)
=============  ===========================================================================

A residual-free model such as ShuffleNetV2 (concat-and-shuffle, no additions) gets
``skip = 0``; GoogLeNet's inception concatenations are not skips either.

:data:`REFERENCE_ARCHITECTURES` holds the features of the six ImageNet models of the
Quantune table (``quantune_measured_configs.csv``), computed by this function on these
torchvision 0.29 definitions (random weights; counts do not depend on weights):

==================  ==================================================================
table name          torchvision definition
==================  ==================================================================
MobileNet           ``mobilenet_v2()`` (the paper's MobileNetV2, fp32 71.81%)
ShuffleNet          ``shufflenet_v2_x1_0()`` - the nearest torchvision has; the paper's
                    ShuffleNet (fp32 63.96%) is not in torchvision
SqueezeNet          ``squeezenet1_0()``
googlenet_slim_v4   ``googlenet(aux_logits=False, init_weights=False)`` (GoogLeNet without
                    the auxiliary heads: "slim")
resnet18            ``resnet18()``
resnet50            ``resnet50()``
==================  ==================================================================

``tests/test_quantune.py`` recomputes them from torchvision, so a drift fails a test.
"""

from __future__ import annotations

import operator
from dataclasses import astuple, dataclass, fields

import numpy as np
import torch
from torch import nn

from haq.errors import ModelError

_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Hardsigmoid)
_ACTIVATION_FUNCTIONS = (torch.relu, nn.functional.relu, nn.functional.relu6)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


@dataclass(frozen=True)
class ArchFeatures:
    """Architecture of one network, as counts (see the module docstring for each rule).

    Attributes:
        nodes: nodes of the traced graph.
        conv: Conv2d layers.
        bn: BatchNorm2d layers.
        act: activation calls.
        skip: residual additions.
        depthwise: depthwise convs (groups == in_channels > 1).
        pointwise: 1x1 convs with groups == 1.
        size_mb: fp32 size of the parameters, MB (10^6 bytes).
    """

    nodes: float
    conv: float
    bn: float
    act: float
    skip: float
    depthwise: float
    pointwise: float
    size_mb: float

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def vector(self) -> np.ndarray:
        """Shape ``(8,)``, float64, in the order of :meth:`names` (NaN = unknown)."""
        return np.array(astuple(self), dtype=np.float64)

    @classmethod
    def unknown(cls) -> ArchFeatures:
        """All NaN: what a model we cannot trace gets (XGBoost treats NaN as missing)."""
        return cls(*([float("nan")] * 8))


REFERENCE_ARCHITECTURES: dict[str, ArchFeatures] = {
    # name in the table: ArchFeatures(nodes, conv, bn, act, skip, depthwise, pointwise, size_mb)
    "MobileNet": ArchFeatures(155, 52, 52, 35, 10, 17, 34, 14.02),  # mobilenet_v2()
    "ShuffleNet": ArchFeatures(369, 56, 56, 37, 0, 19, 36, 9.11),  # shufflenet_v2_x1_0()
    "SqueezeNet": ArchFeatures(68, 26, 0, 26, 0, 0, 17, 4.99),  # squeezenet1_0()
    "googlenet_slim_v4": ArchFeatures(199, 57, 57, 57, 0, 0, 37, 26.50),  # googlenet(aux_logits=False)
    "resnet18": ArchFeatures(71, 20, 20, 17, 8, 0, 3, 46.76),  # resnet18()
    "resnet50": ArchFeatures(177, 53, 53, 49, 16, 0, 36, 102.23),  # resnet50()
}

#: The torchvision constructor behind each entry of :data:`REFERENCE_ARCHITECTURES`.
REFERENCE_TORCHVISION: dict[str, tuple[str, dict[str, object]]] = {
    "MobileNet": ("mobilenet_v2", {}),
    "ShuffleNet": ("shufflenet_v2_x1_0", {}),
    "SqueezeNet": ("squeezenet1_0", {}),
    "googlenet_slim_v4": ("googlenet", {"aux_logits": False, "init_weights": False}),
    "resnet18": ("resnet18", {}),
    "resnet50": ("resnet50", {}),
}


def architecture_features(model: nn.Module) -> ArchFeatures:
    """Count the 8 features of ``model`` from one ``torch.fx`` symbolic trace.

    Raises :class:`ModelError` when the model cannot be traced symbolically (data-dependent
    control flow); callers that can do without features use :meth:`ArchFeatures.unknown`.
    """
    was_training = model.training
    model.eval()
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # torch.fx raises many types (TraceError, TypeError, ...)
        raise ModelError(
            f"cannot trace {type(model).__name__} with torch.fx to count its architecture features ({exc}); "
            "give the features explicitly"
        ) from exc
    finally:
        model.train(was_training)
    modules = dict(model.named_modules())
    n = dict.fromkeys(ArchFeatures.names()[:-1], 0)
    for node in graph.nodes:
        n["nodes"] += 1
        if node.op == "call_module":
            mod = modules[str(node.target)]
            if isinstance(mod, nn.Conv2d):
                n["conv"] += 1
                n["depthwise"] += int(mod.groups > 1 and mod.groups == mod.in_channels)
                n["pointwise"] += int(tuple(mod.kernel_size) == (1, 1) and mod.groups == 1)
            elif isinstance(mod, nn.BatchNorm2d):
                n["bn"] += 1
            elif isinstance(mod, _ACTIVATION_MODULES):
                n["act"] += 1
        elif node.op == "call_function":
            n["act"] += int(node.target in _ACTIVATION_FUNCTIONS)
            n["skip"] += int(node.target in _ADD_FUNCTIONS)
        elif node.op == "call_method":
            n["act"] += int(node.target in ("relu", "relu_"))
            n["skip"] += int(node.target in ("add", "add_"))
    size_mb = sum(p.numel() for p in model.parameters()) * 4 / 1e6
    return ArchFeatures(**{k: float(v) for k, v in n.items()}, size_mb=round(size_mb, 2))
