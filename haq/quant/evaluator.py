"""Accuracy of a bit policy, fast: the thing every search method calls hundreds of times.

Built once per (model, data, scheme):

1. BatchNorm is folded into the convs (:mod:`haq.quant.fold`).
2. Every Conv2d/Linear is wrapped in a :class:`QuantLayer` that fake-quantizes its input
   with parameters held in 0-d tensors, and runs with a weight buffer.
3. Activation statistics are collected once over the calibration split (and cached on
   disk, keyed by model weights and data).

Evaluating a policy then swaps in cached quantized weights (computed once per layer and
bitwidth), writes each layer's activation scale/zero point/clamp bounds, and runs one
forward pass over the split, which is held in memory.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from haq.bits import FLOAT_BITS, check_bits
from haq.data import DataSplits
from haq.errors import ConfigError
from haq.layers import LayerSpec, describe
from haq.quant.calibration import ActivationStats, calibrate, collect_stats
from haq.quant.fold import fold_batchnorm
from haq.quant.quantizers import activation_params, fake_quantize, quantize_weight
from haq.quant.scheme import QuantScheme


class QuantLayer(nn.Module):
    """A Conv2d or Linear whose input is fake-quantized and whose weight is swappable.

    Buffers (all 0-d except ``weight``): ``a_scale``, ``a_zero``, ``a_qmin``, ``a_qmax``
    and ``a_on`` (1.0 = quantize the input, 0.0 = leave it in float). ``weight`` has the
    wrapped layer's shape and holds the (fake-)quantized weight of the current policy.
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear) -> None:
        super().__init__()
        self.inner = layer
        self.is_conv = isinstance(layer, nn.Conv2d)
        self.register_buffer("weight", layer.weight.detach().clone())
        for name, value in (("a_scale", 1.0), ("a_zero", 0.0), ("a_qmin", 0.0), ("a_qmax", 255.0), ("a_on", 0.0)):
            self.register_buffer(name, torch.tensor(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = fake_quantize(x, self.a_scale, self.a_zero, self.a_qmin, self.a_qmax)
        x = x + self.a_on * (xq - x)
        if self.is_conv:
            return self.inner._conv_forward(x, self.weight, self.inner.bias)
        return F.linear(x, self.weight, self.inner.bias)


def _wrap_layers(model: nn.Module, names: Sequence[str]) -> list[QuantLayer]:
    wrapped = []
    for name in names:
        parent_path, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        q = QuantLayer(getattr(parent, attr))
        setattr(parent, attr, q)
        wrapped.append(q)
    return wrapped


@dataclass
class _Shared:
    """What evaluators of the same model and data share across schemes."""

    folded: nn.Module  #: BN-folded float model (unwrapped), eval mode
    stats: dict[int | None, list[ActivationStats]] = field(default_factory=dict)


class Evaluator:
    """Measures the top-1 accuracy of bit policies on one model and data set.

    Args:
        model: a trained float model (not modified).
        data: the splits (see :mod:`haq.data`).
        scheme: the global quantization scheme bit policies are applied with.
        layers: the model's layer descriptions (computed when omitted).
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSplits,
        scheme: QuantScheme | None = None,
        layers: Sequence[LayerSpec] | None = None,
        batch_size: int = 512,
        _shared: _Shared | None = None,
    ) -> None:
        self.data = data
        self.scheme = scheme or QuantScheme()
        self.layers = list(layers) if layers is not None else describe(model, data.input_shape)
        self.batch_size = batch_size
        if _shared is None:
            folded, _ = fold_batchnorm(model, data.input_shape)
            _shared = _Shared(folded)
        self._shared = _shared
        self.qmodel = copy.deepcopy(_shared.folded).eval()
        for p in self.qmodel.parameters():
            p.requires_grad_(False)
        self.qlayers = _wrap_layers(self.qmodel, [s.name for s in self.layers])
        self._float_w = [q.inner.weight.detach().clone() for q in self.qlayers]
        self._w_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._a_cache: dict[tuple[int, int], tuple[float, float, float, float]] = {}
        self._current_w = np.full(len(self.layers), FLOAT_BITS)
        self._current_a = np.full(len(self.layers), -1)

    # ----- public ------------------------------------------------------------------------
    def with_scheme(self, scheme: QuantScheme) -> Evaluator:
        """An evaluator of the same model and data under another global scheme (shares the
        folded model and the calibration statistics)."""
        return Evaluator(self._shared.folded, self.data, scheme, self.layers, self.batch_size, _shared=self._shared)

    def evaluate(self, w_bits: Sequence[int], a_bits: Sequence[int], split: str = "val") -> float:
        """Top-1 accuracy in [0, 1] on ``split`` with the given per-layer bitwidths."""
        self.apply(np.asarray(w_bits), np.asarray(a_bits))
        return self._accuracy(split)

    def evaluate_policy(self, policy, split: str = "val") -> float:  # noqa: ANN001 - Policy
        if policy.quant != self.scheme:
            return self.with_scheme(policy.quant).evaluate(policy.w_bits, policy.a_bits, split)
        return self.evaluate(policy.w_bits, policy.a_bits, split)

    def fp32_accuracy(self, split: str = "val") -> float:
        full = np.full(len(self.layers), FLOAT_BITS)
        return self.evaluate(full, full, split)

    def quantized_weight(self, index: int, bits: int) -> torch.Tensor:
        """Fake-quantized folded weight of layer ``index`` at ``bits`` (cached)."""
        key = (index, int(bits))
        w = self._w_cache.get(key)
        if w is None:
            w = quantize_weight(
                self._float_w[index],
                int(bits),
                self.scheme.weight_mode,
                per_channel=self.scheme.weight_granularity == "per-channel",
            )
            self._w_cache[key] = w
        return w

    def float_weight(self, index: int) -> torch.Tensor:
        """The BN-folded float weight of layer ``index``."""
        return self._float_w[index]

    def folded_model(self) -> nn.Module:
        """A float copy of the BN-folded model (for Hessians and other float analyses)."""
        return copy.deepcopy(self._shared.folded)

    def activation_range(self, index: int, bits: int) -> tuple[float, float]:
        """Calibrated (lo, hi) input range of layer ``index`` at ``bits`` under the scheme."""
        stats = self._stats()[index]
        return calibrate(stats, self.scheme.calibration, int(bits), self.scheme.activation_mode)

    # ----- internals ---------------------------------------------------------------------
    def apply(self, w_bits: np.ndarray, a_bits: np.ndarray) -> None:
        """Load a policy into the wrapped model (only layers whose bits changed)."""
        if len(w_bits) != len(self.layers) or len(a_bits) != len(self.layers):
            raise ConfigError(f"policy has {len(w_bits)} layers, the model {len(self.layers)}")
        for i, (w, a) in enumerate(zip(w_bits.tolist(), a_bits.tolist())):
            q = self.qlayers[i]
            if w != self._current_w[i]:
                q.weight.copy_(self.quantized_weight(i, check_bits(w)))
                self._current_w[i] = w
            if a != self._current_a[i]:
                if check_bits(a) >= 16:
                    q.a_on.fill_(0.0)
                else:
                    s, z, lo, hi = self._act_params(i, a)
                    q.a_scale.fill_(s)
                    q.a_zero.fill_(z)
                    q.a_qmin.fill_(lo)
                    q.a_qmax.fill_(hi)
                    q.a_on.fill_(1.0)
                self._current_a[i] = a

    def _act_params(self, index: int, bits: int) -> tuple[float, float, float, float]:
        key = (index, bits)
        p = self._a_cache.get(key)
        if p is None:
            lo, hi = self.activation_range(index, bits)
            p = activation_params(lo, hi, bits, self.scheme.activation_mode)
            self._a_cache[key] = p
        return p

    def _stats(self) -> list[ActivationStats]:
        n = self.scheme.calibration_images
        stats = self._shared.stats.get(n)
        if stats is None:
            images = self.data.calib.head(n).x
            floats = copy.deepcopy(self._shared.folded).eval()
            modules = [floats.get_submodule(s.name) for s in self.layers]
            stats = collect_stats(floats, modules, images)
            self._shared.stats[n] = stats
        return stats

    @torch.no_grad()
    def _accuracy(self, split: str) -> float:
        part = self.data.split(split)
        correct = 0
        for start in range(0, len(part), self.batch_size):
            logits = self.qmodel(part.x[start : start + self.batch_size])
            correct += int((logits.argmax(1) == part.y[start : start + self.batch_size]).sum())
        return correct / max(len(part), 1)
