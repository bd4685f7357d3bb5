"""The wrapper that makes one Conv2d or Linear fake-quantized, with swappable parameters.

A :class:`QuantLayer` keeps every per-policy value in a place where changing it is cheap
*and* invisible to ``torch.compile`` guards:

* ``weight`` - a buffer of the wrapped layer's shape, overwritten in place (``copy_``) with
  the cached fake-quantized weight of the current bitwidth. (Re-binding the buffer to
  another tensor would trip a guard and recompile; an in-place copy does not.)
* ``a_params`` - a ``(6,)`` float32 buffer ``[1/scale, scale, zero, qmin, qmax, on]`` read
  by the compiled graph, so a new bitwidth changes tensor values only.
* plain Python numbers (``a_on``, ``a_scale``, ...) read by the eager path, which calls the
  fused ``torch.fake_quantize_per_tensor_affine`` kernel and skips float layers entirely.

Both paths compute ``(clamp(round(x * (1/scale)) + zero, qmin, qmax) - zero) * scale`` in
float32 with the same ``1/scale``, so they agree bit for bit on the quantized input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

#: index of each activation parameter in ``QuantLayer.a_params``
INV_SCALE, SCALE, ZERO, QMIN, QMAX, ON = range(6)


class QuantLayer(nn.Module):
    """A Conv2d or Linear whose input is fake-quantized (per tensor) and whose weight is
    swappable. Starts in float: input not quantized, weight = the wrapped layer's weight."""

    weight: torch.Tensor  #: (C_out, C_in/groups, kh, kw) or (out, in)
    a_params: torch.Tensor  #: (6,) see module docstring

    def __init__(self, layer: nn.Conv2d | nn.Linear) -> None:
        super().__init__()
        self.inner = layer
        self.register_buffer("weight", layer.weight.detach().clone())
        self.register_buffer("a_params", torch.tensor([1.0, 1.0, 0.0, 0.0, 255.0, 0.0]))
        # eager path: the same values as Python numbers (no tensor ops to read them)
        self.a_on = False
        self.a_scale = 1.0
        self.a_zero = 0
        self.a_qmin = 0
        self.a_qmax = 255

    def set_activation(self, params: tuple[float, float, float, float] | None, packed: torch.Tensor | None = None) -> None:
        """Quantize the input with ``(scale, zero, qmin, qmax)``, or leave it in float (None).

        ``packed`` is :func:`pack_activation` of ``params`` when the caller has it cached.
        """
        if params is None:
            self.a_on = False
            self.a_params[ON] = 0.0
            return
        packed = pack_activation(params) if packed is None else packed
        self.a_scale = float(packed[SCALE])  # the float32 value, as the fused kernel will see it
        self.a_zero, self.a_qmin, self.a_qmax = int(params[1]), int(params[2]), int(params[3])
        self.a_on = True
        self.a_params.copy_(packed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # traced once: every policy-dependent value is a tensor, so no guard on bits
            p = self.a_params
            q = torch.clamp(torch.round(x * p[INV_SCALE]) + p[ZERO], p[QMIN], p[QMAX])
            x = torch.where(p[ON] > 0, (q - p[ZERO]) * p[SCALE], x)
        elif self.a_on:
            x = torch.fake_quantize_per_tensor_affine(x, self.a_scale, self.a_zero, self.a_qmin, self.a_qmax)
        inner = self.inner
        if isinstance(inner, nn.Conv2d):
            return inner._conv_forward(x, self.weight, inner.bias)
        return F.linear(x, self.weight, inner.bias)


def pack_activation(params: tuple[float, float, float, float]) -> torch.Tensor:
    """``(scale, zero, qmin, qmax)`` as the ``(6,)`` float32 ``a_params`` row (quantizing on)."""
    scale, zero, qmin, qmax = params
    s = torch.tensor(scale, dtype=torch.float32)
    return torch.tensor([float(1.0 / s), float(s), zero, qmin, qmax, 1.0], dtype=torch.float32)


def wrap_layers(model: nn.Module, names: Sequence[str]) -> list[QuantLayer]:
    """Replace each named Conv2d/Linear of ``model`` (in place) by a :class:`QuantLayer`."""
    wrapped = []
    for name in names:
        parent_path, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        q = QuantLayer(getattr(parent, attr))
        setattr(parent, attr, q)
        wrapped.append(q)
    return wrapped
