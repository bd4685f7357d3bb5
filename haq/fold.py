"""Fold every BatchNorm2d into the Conv2d that feeds it, before anything is quantized.

Integer accelerators run conv+BN as one conv with adjusted weights and bias, so the
weights that get quantized are the folded ones (HAWQ-V3 and HAQ do the same). Which BN
follows which conv is found by running the model once with hooks, so it works on any
module structure, not only ``nn.Sequential`` patterns.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def fold_batchnorm(model: nn.Module, input_shape: Sequence[int]) -> tuple[nn.Module, list[tuple[str, str]]]:
    """A copy of ``model`` (eval mode) with each BN that directly consumes a conv's output
    folded into that conv and replaced by ``nn.Identity``.

    Returns the folded copy and the list of (conv name, bn name) pairs folded. A BN whose
    input is not exactly a conv's output tensor (e.g. after an add) is left in place.
    """
    model = copy.deepcopy(model).eval()
    conv_out: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    keep: list[torch.Tensor] = []  # keep tensors alive so id() stays unique
    handles = []
    modules = dict(model.named_modules())

    def conv_hook(name: str):
        def fn(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            conv_out[id(out)] = name
            keep.append(out)

        return fn

    def bn_hook(name: str):
        def fn(_m: nn.Module, inp: tuple) -> None:
            src = conv_out.get(id(inp[0]))
            if src is not None and (src, name) not in pairs:
                pairs.append((src, name))

        return fn

    for name, m in modules.items():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook(name)))
        elif isinstance(m, nn.BatchNorm2d):
            handles.append(m.register_forward_pre_hook(bn_hook(name)))
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()

    convs_used = [c for c, _ in pairs]
    for conv_name, bn_name in pairs:
        if convs_used.count(conv_name) > 1:  # one conv feeding two BNs: cannot fold both
            continue
        conv, bn = modules[conv_name], modules[bn_name]
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        if bn.running_mean is None or bn.running_var is None:  # batch statistics even in eval
            continue
        with torch.no_grad():
            w, b = fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
            )
        conv.weight = nn.Parameter(w.detach().clone())
        conv.bias = nn.Parameter(b.detach().clone())
        _set_submodule(model, bn_name, nn.Identity())
    return model, pairs
