"""Accuracy of a bit policy, fast: the thing every search method calls hundreds of times.

Built once per (model, data, scheme):

1. BatchNorm is folded into the convs (:mod:`haq.fold`).
2. Every Conv2d/Linear is wrapped in a :class:`~haq.quant.qlayer.QuantLayer` that
   fake-quantizes its input and runs with a swappable weight buffer.
3. Activation statistics are collected once over the calibration split and cached, in
   memory per model and data and on disk keyed by model weights and calibration images
   (:func:`haq.quant.calibration.cached_stats`).

Evaluating a policy then copies in cached quantized weights (computed once per layer and
bitwidth) for the layers whose bits changed, writes their activation parameters, and runs
one forward pass over the split, which is held in memory - eager, or compiled once by
``torch.compile`` (:mod:`haq.quant.runner`; a new policy never recompiles).

Example::

    ev = Evaluator(model, load_digits())             # compile="auto"
    ev.evaluate([8] * len(ev.layers), [8] * len(ev.layers))   # -> 0.99..
    ev.execution, ev.compile_count                    # -> ("eager", 0)
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from haq.bits import FLOAT_BITS, HALF_BITS, check_bits
from haq.data import DataSplits, Split
from haq.devices import resolve_device
from haq.errors import ConfigError
from haq.fold import fold_batchnorm
from haq.layers import LayerSpec, describe, unquantized_parameters
from haq.quant.calibration import ActivationStats, cached_stats, calibrate
from haq.quant.graph import OUTPUT_BITS, ResidualPlan, bind_skips, output_quantizers, plan_residuals
from haq.quant.qlayer import pack_activation, quantize_bias, wrap_layers
from haq.quant.quantizers import activation_params, quantize_weight, weight_integers
from haq.quant.runner import DEFAULT_COMPILE_COST_S, CompileOption, ForwardRunner
from haq.scheme import QuantScheme

Bits = Sequence[int] | np.ndarray  #: one bitwidth per layer, in execution order


SCHEME_CACHE_BYTES = 2 * 1024**3  #: weights the per-scheme evaluators of one model may hold, bytes


@dataclass
class _Shared:
    """What evaluators of the same model and data share across schemes."""

    folded: nn.Module  #: BN-folded float model (unwrapped), eval mode, on the CPU
    planned: nn.Module  #: ``folded`` with residual-add quantizers (off), see haq.quant.graph
    plan: ResidualPlan
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  #: where evaluations run
    #: each split's images and labels on ``device`` (only filled for a non-CPU device)
    on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    #: the fidelity set's images, part by part, on ``device`` (only filled for a non-CPU device)
    fidelity_on_device: list[torch.Tensor] | None = None
    #: indices of layers whose module the model bypasses (reads its weight itself): their
    #: weights are quantized, their inputs stay float; None until checked
    functional: frozenset[int] | None = None
    stats_model: nn.Module | None = None  #: float wrapped copy of ``planned`` that calibration hooks
    stats: dict[int | None, list[ActivationStats]] = field(default_factory=dict)
    stats_source: dict[int | None, str] = field(default_factory=dict)  #: "disk" | "collected"
    #: the evaluator of each scheme, least recently used first (see ``remember``)
    by_scheme: OrderedDict[QuantScheme, Evaluator] = field(default_factory=OrderedDict)
    #: log-softmax of the float model on each part of the fidelity set, (N_i, classes) float64
    fp32_log_probs: list[torch.Tensor] | None = None

    def remember(self, ev: Evaluator) -> None:
        """Keep ``ev`` for its scheme, dropping the least recently used when the evaluators
        would hold more than ``SCHEME_CACHE_BYTES`` (each ~4 copies of the weights: model,
        float and two or three cached bitwidths). Quantune cycles through 48 schemes: all of
        them stay for a small model, a few for ResNet-50."""
        weight_bytes = sum(p.numel() * p.element_size() for p in self.folded.parameters())
        capacity = int(min(64, max(2, SCHEME_CACHE_BYTES // max(1, 4 * weight_bytes))))
        self.by_scheme[ev.scheme] = ev
        while len(self.by_scheme) > capacity:
            self.by_scheme.popitem(last=False)

    def recall(self, scheme: QuantScheme) -> Evaluator | None:
        ev = self.by_scheme.get(scheme)
        if ev is not None:
            self.by_scheme.move_to_end(scheme)
        return ev


class Evaluator:
    """Measures the top-1 accuracy of bit policies on one model and data set.

    Args:
        model: a trained float model (not modified).
        data: the splits (see :mod:`haq.data`).
        scheme: the global quantization scheme bit policies are applied with.
        layers: the model's layer descriptions (computed when omitted).
        batch_size: images per forward pass.
        compile: ``"auto"`` (compile once the eager evaluations have taken
            ``compile_cost_s / 0.2`` s, when compiling would have paid for itself), True
            (compile on the first evaluation) or False (eager only). See
            :mod:`haq.quant.runner`; compiled and eager results are bit-identical.
        compile_cost_s: the compile time ``"auto"`` expects, s.
        channels_last: run in channels-last memory format; ``"auto"`` = when the model has
            depthwise layers (measured, 1 CPU thread, channels-last vs NCHW: MobileNetV2 at
            64x64 2.1x faster compiled, 1.6x eager; digits-mobilenet 1.9x and 1.3x;
            ResNet-18 at 64x64 1.2x and 1.1x slower, so it stays NCHW).
        device: where evaluation and calibration run (``cpu``, ``cuda``, ``cuda:N``,
            ``auto``; see :mod:`haq.devices`). On CUDA the wrapped model, the float and
            cached quantized weights and each split's images stay on the device, and a batch
            that does not fit in its memory is halved until it does.

    Attributes:
        execution: ``"eager"`` or ``"compiled"`` - the path the next evaluation takes.
        compile_count: graphs compiled by this evaluator (a policy change never adds one).
        compile_seconds: wall time of the compiling forward passes, s.
        compile_error: why the evaluator fell back to eager, or None.
        calibration_source: where the activation statistics came from: ``"collected"``
            (ran the model), ``"disk"`` (the on-disk cache), or None (not needed yet).
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSplits,
        scheme: QuantScheme | None = None,
        layers: Sequence[LayerSpec] | None = None,
        batch_size: int = 512,
        compile: CompileOption = "auto",
        compile_cost_s: float = DEFAULT_COMPILE_COST_S,
        channels_last: bool | Literal["auto"] = "auto",
        device: str | torch.device = "cpu",
        _shared: _Shared | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1")
        self.data = data
        self.scheme = scheme or QuantScheme()
        self.layers = list(layers) if layers is not None else describe(model, data.input_shape)
        self.batch_size = batch_size
        if _shared is None:
            folded, _ = fold_batchnorm(model, data.input_shape)
            for p in folded.parameters():
                p.requires_grad_(False)
            planned, plan = plan_residuals(folded, [s.name for s in self.layers])
            _shared = _Shared(folded, planned, plan, resolve_device(device))
        self._shared = _shared
        self.device = _shared.device
        if _shared.recall(self.scheme) is None:
            _shared.remember(self)
        self.qmodel = copy.deepcopy(_shared.planned).eval()
        self.qlayers = wrap_layers(self.qmodel, [s.name for s in self.layers])
        bind_skips(self.qmodel, self.qlayers)
        self._out_q = output_quantizers(self.qmodel)
        self._out_on: dict[int, bool] = dict.fromkeys(self._out_q, False)
        if _shared.functional is None:
            _shared.functional = _bypassed(self.qmodel, self.qlayers, data.input_shape)
            _warn_float_parts(_shared.folded, self.layers, _shared.functional)
        self._functional = _shared.functional
        self.qmodel.to(self.device)
        self._float_w = [q.inner.weight.detach().clone() for q in self.qlayers]
        self._float_b = [q.bias.detach().clone() for q in self.qlayers]
        if channels_last == "auto":
            channels_last = any(s.kind == "depthwise" for s in self.layers)
        self._runner = ForwardRunner(self.qmodel, compile, compile_cost_s, channels_last=bool(channels_last))
        self._w_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._a_cache: dict[tuple[int, int], tuple[tuple[float, float, float, float], torch.Tensor]] = {}
        self._b_cache: dict[tuple[int, int, int], torch.Tensor] = {}
        self._current_w = [FLOAT_BITS] * len(self.layers)
        self._current_a = [FLOAT_BITS] * len(self.layers)

    # ----- public ------------------------------------------------------------------------
    def with_scheme(self, scheme: QuantScheme) -> Evaluator:
        """An evaluator of the same model and data under another global scheme (shares the
        folded model, the calibration statistics and the compiled graph; the evaluators of
        recent schemes are kept, with their weight caches)."""
        ev = self._shared.recall(scheme)
        if ev is None:
            ev = Evaluator(
                self._shared.folded, self.data, scheme, self.layers, self.batch_size,
                compile=self._runner.mode, compile_cost_s=self._runner.compile_cost_s,
                channels_last=self._runner.memory_format == torch.channels_last, device=self.device,
                _shared=self._shared,
            )
        return ev

    def evaluate(self, w_bits: Bits, a_bits: Bits, split: str = "val") -> float:
        """Top-1 accuracy in [0, 1] on ``split`` with the given per-layer bitwidths."""
        self.apply(np.asarray(w_bits), np.asarray(a_bits))
        return self._accuracy(split)

    def accuracies(self, policies: Sequence[tuple[Bits, Bits, QuantScheme]], split: str = "val") -> list[float]:
        """Top-1 accuracy in [0, 1] on ``split`` of each ``(w_bits, a_bits, scheme)``, one
        after another (the :class:`haq.problem.Measures` protocol)."""
        out = []
        for w, a, scheme in policies:
            ev = self if scheme == self.scheme else self.with_scheme(scheme)
            out.append(ev.evaluate(w, a, split))
        return out

    def fidelity(self, w_bits: Bits, a_bits: Bits) -> tuple[float, float]:
        """How closely the quantized model follows the float one on the fidelity set (every
        image a search may see, never test; labels not needed): ``(kl, agreement)`` - the mean
        KL divergence ``KL(p_fp32 || p_quant)`` of the softmax outputs, in nats, and the share of
        images whose top-1 class is the float model's, in [0, 1]."""
        ref = self._fp32_log_probs()
        self.apply(np.asarray(w_bits), np.asarray(a_bits))
        kl, agree, n = 0.0, 0, 0
        for x, ref_lp in zip(self._fidelity_inputs(), ref, strict=True):
            lp = torch.log_softmax(self._runner.logits(x, self.batch_size).double(), dim=1)
            kl += float((ref_lp.exp() * (ref_lp - lp)).sum())
            agree += int((lp.argmax(1) == ref_lp.argmax(1)).sum())
            n += len(x)
        return kl / max(n, 1), agree / max(n, 1)

    def fidelities(self, policies: Sequence[tuple[Bits, Bits, QuantScheme]]) -> list[tuple[float, float]]:
        """:meth:`fidelity` of each ``(w_bits, a_bits, scheme)``."""
        return [(self if scheme == self.scheme else self.with_scheme(scheme)).fidelity(w, a) for w, a, scheme in policies]

    def split_size(self, split: str) -> int:
        """Images in ``split`` (``fidelity``: every part of the fidelity set)."""
        if split == "fidelity":
            return sum(len(p) for p in self.data.fidelity_parts())
        return len(self.data.split(split))

    def _fp32_log_probs(self) -> list[torch.Tensor]:
        if self._shared.fp32_log_probs is None:
            full = np.full(len(self.layers), FLOAT_BITS)
            self.apply(full, full)
            self._shared.fp32_log_probs = [
                torch.log_softmax(self._runner.logits(x, self.batch_size).double(), dim=1)
                for x in self._fidelity_inputs()
            ]
        return self._shared.fp32_log_probs

    @property
    def calibration_split(self) -> Split:
        """The calibration images and labels (activation ranges, Hessians; never val/test)."""
        return self.data.calib

    def logits(self, w_bits: Bits, a_bits: Bits, split: str = "val") -> torch.Tensor:
        """Model outputs ``(N, classes)`` on ``split`` with the given per-layer bitwidths."""
        self.apply(np.asarray(w_bits), np.asarray(a_bits))
        x, _ = self._split_tensors(split)
        return self._runner.logits(x, self.batch_size).cpu()

    def fp32_accuracy(self, split: str = "val") -> float:
        full = np.full(len(self.layers), FLOAT_BITS)
        return self.evaluate(full, full, split)

    def quantized_weight(self, index: int, bits: int) -> torch.Tensor:
        """Fake-quantized folded weight of layer ``index`` at ``bits``, on the CPU (cached on
        the evaluator's device; do not modify)."""
        return self._device_weight(index, bits).cpu()

    def _device_weight(self, index: int, bits: int) -> torch.Tensor:
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

    def weight_scale(self, index: int, bits: int) -> torch.Tensor:
        """Per-output-channel (or one) scale of layer ``index``'s ``bits``-bit weights (1-8)."""
        return weight_integers(
            self._float_w[index], int(bits), self.scheme.weight_mode,
            per_channel=self.scheme.weight_granularity == "per-channel",
        )[1]

    def bias(self, index: int, w_bits: int, a_bits: int) -> torch.Tensor:
        """The bias layer ``index`` adds at ``(w_bits, a_bits)``: with integer weights and
        input (1-8 bits both) rounded to the int32 grid of ``input_scale * weight_scale``,
        as an integer runtime adds it (:func:`~haq.quant.qlayer.quantize_bias`); else float."""
        w_bits, a_bits = int(w_bits), int(a_bits)
        if w_bits >= HALF_BITS or a_bits >= HALF_BITS or not self.qlayers[index].has_bias:
            return self._float_b[index]
        key = (index, w_bits, a_bits)
        b = self._b_cache.get(key)
        if b is None:
            (scale, _, _, _), _ = self._act_params(index, a_bits)
            b = quantize_bias(self._float_b[index], float(torch.tensor(scale, dtype=torch.float32)),
                              self.weight_scale(index, w_bits))[0]
            self._b_cache[key] = b
        return b

    def float_weight(self, index: int) -> torch.Tensor:
        """The BN-folded float weight of layer ``index`` (on the CPU)."""
        return self._float_w[index].cpu()

    def folded_model(self) -> nn.Module:
        """A float copy of the BN-folded model (for Hessians and other float analyses)."""
        return copy.deepcopy(self._shared.folded)

    def activation_range(self, index: int, bits: int) -> tuple[float, float]:
        """Calibrated (lo, hi) input range of layer ``index`` at ``bits`` under the scheme."""
        stats = self._stats()[index]
        return calibrate(stats, self.scheme.calibration, int(bits), self.scheme.activation_mode)

    @property
    def residual_plan(self) -> ResidualPlan:
        """Which layer outputs and skip connections feed residual adds quantized (see
        :mod:`haq.quant.graph`)."""
        return self._shared.plan

    def output_range(self, index: int) -> tuple[float, float]:
        """Calibrated (lo, hi) output range of layer ``index`` (one with an output quantizer)
        at :data:`~haq.quant.graph.OUTPUT_BITS`."""
        k = len(self.layers) + self._shared.plan.outputs.index(index)
        return calibrate(self._stats()[k], self.scheme.calibration, OUTPUT_BITS, self.scheme.activation_mode)

    def output_params(self, index: int) -> tuple[float, float, float, float]:
        """``(scale, zero, qmin, qmax)`` of layer ``index``'s output quantizer."""
        key = (-1 - index, OUTPUT_BITS)
        p = self._a_cache.get(key)
        if p is None:
            lo, hi = self.output_range(index)
            params = activation_params(lo, hi, OUTPUT_BITS, self.scheme.activation_mode)
            p = (params, pack_activation(params))
            self._a_cache[key] = p
        return p[0]

    @staticmethod
    def is_integer_layer(w_bits: int, a_bits: int) -> bool:
        """Whether a layer at these bits runs as an integer kernel (weights and input 1-8 bits)."""
        return int(w_bits) < HALF_BITS and int(a_bits) < HALF_BITS

    @property
    def memory_format(self) -> torch.memory_format:
        """The memory format images are evaluated in (``torch.channels_last`` or contiguous)."""
        return self._runner.memory_format

    @property
    def execution(self) -> str:
        return self._runner.path

    @property
    def compile_count(self) -> int:
        return self._runner.compile_count

    @property
    def compile_seconds(self) -> float:
        return self._runner.compile_seconds

    @property
    def compile_error(self) -> str | None:
        return self._runner.compile_error

    @property
    def calibration_source(self) -> str | None:
        return self._shared.stats_source.get(self.scheme.calibration_images)

    def worker_state(self) -> dict:
        """What another process needs to build an evaluator identical to this one
        (:meth:`from_worker_state`): the folded float model, the data splits, the layers,
        the scheme, the options and the calibration statistics collected so far. Put once
        in a Ray object store by :class:`haq.pool.RayPool`, never shipped per task."""
        self._stats()  # collected here once, not by every worker
        return {
            "folded": self._shared.folded,
            "data": self.data,
            "scheme": self.scheme,
            "layers": list(self.layers),
            "batch_size": self.batch_size,
            "compile": self._runner.mode,
            "compile_cost_s": self._runner.compile_cost_s,
            "channels_last": self._runner.memory_format == torch.channels_last,
            "stats": dict(self._shared.stats),
        }

    @classmethod
    def from_worker_state(cls, state: dict, device: str | torch.device = "cpu") -> Evaluator:
        """The evaluator :meth:`worker_state` describes, on ``device``."""
        planned, plan = plan_residuals(state["folded"], [s.name for s in state["layers"]])
        shared = _Shared(state["folded"], planned, plan, resolve_device(device))
        shared.stats.update(state["stats"])
        shared.stats_source.update({k: "driver" for k in state["stats"]})
        return cls(shared.folded, state["data"], state["scheme"], state["layers"], state["batch_size"],
                   compile=state["compile"], compile_cost_s=state["compile_cost_s"],
                   channels_last=state["channels_last"], _shared=shared)

    # ----- internals ---------------------------------------------------------------------
    def apply(self, w_bits: np.ndarray, a_bits: np.ndarray) -> None:
        """Load a policy into the wrapped model (only layers whose bits changed)."""
        if len(w_bits) != len(self.layers) or len(a_bits) != len(self.layers):
            raise ConfigError(f"policy has {len(w_bits)} layers, the model {len(self.layers)}")
        for i, (w, a) in enumerate(zip(w_bits.tolist(), a_bits.tolist(), strict=True)):
            q = self.qlayers[i]
            changed = w != self._current_w[i] or a != self._current_a[i]
            if w != self._current_w[i]:  # the cached weight lives on the evaluator's device
                q.weight.copy_(self._device_weight(i, check_bits(w)))
                self._current_w[i] = w
            if a != self._current_a[i]:
                if check_bits(a) == FLOAT_BITS or i in self._functional:  # see _bypassed
                    q.set_activation(None)
                elif a == HALF_BITS:  # float16, as the weights at 16 bits
                    q.set_activation("half")
                else:
                    q.set_activation(*self._act_params(i, a))
                self._current_a[i] = a
            if changed:
                q.bias.copy_(self.bias(i, w, a))
        on_now = set(self._shared.plan.quantized_outputs(self._current_w, self._current_a))
        for j, out in self._out_q.items():
            on = j in on_now
            if on != self._out_on[j]:
                if on:
                    self.output_params(j)
                    out.set_activation(*self._a_cache[(-1 - j, OUTPUT_BITS)])
                else:
                    out.set_activation(None)
                self._out_on[j] = on

    def _act_params(self, index: int, bits: int) -> tuple[tuple[float, float, float, float], torch.Tensor]:
        key = (index, bits)
        p = self._a_cache.get(key)
        if p is None:
            lo, hi = self.activation_range(index, bits)
            params = activation_params(lo, hi, bits, self.scheme.activation_mode)
            p = (params, pack_activation(params))
            self._a_cache[key] = p
        return p

    def _stats(self) -> list[ActivationStats]:
        n = self.scheme.calibration_images
        stats = self._shared.stats.get(n)
        if stats is None:
            images = self.data.calib.head(n).x
            if self._shared.stats_model is None:  # hooks on the wrapped layers: attention projections too
                model = copy.deepcopy(self._shared.planned).eval()
                wrap_layers(model, [s.name for s in self.layers])
                self._shared.stats_model = model
            names = [s.name for s in self.layers] + [ResidualPlan.output_name(j) for j in self._shared.plan.outputs]
            stats, source = cached_stats(self._shared.stats_model, names, images, device=self.device)
            self._shared.stats[n] = stats
            self._shared.stats_source[n] = source
        return stats

    def _split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of ``split`` on the evaluator's device (copied there once)."""
        part = self.data.split(split)
        if self.device.type == "cpu":
            return part.x, part.y
        held = self._shared.on_device.get(split)
        if held is None:
            held = (part.x.to(self.device), part.y.to(self.device))
            self._shared.on_device[split] = held
        return held

    def _fidelity_inputs(self) -> list[torch.Tensor]:
        """The fidelity set's images, part by part ``(N_i, C, H, W)``, on the evaluator's
        device (copied there once; the validation part is the one :meth:`_split_tensors` holds)."""
        parts = self.data.fidelity_parts()
        if self.device.type == "cpu":
            return [p.x for p in parts]
        if self._shared.fidelity_on_device is None:
            self._shared.fidelity_on_device = [
                self._split_tensors("val")[0] if p is self.data.val else p.x.to(self.device) for p in parts
            ]
        return self._shared.fidelity_on_device

    def _accuracy(self, split: str) -> float:
        x, y = self._split_tensors(split)
        correct = self._runner.count_correct(x, y, self.batch_size)
        return correct / max(len(x), 1)


def _bypassed(model: nn.Module, qlayers: Sequence[nn.Module], input_shape: Sequence[int]) -> frozenset[int]:
    """Indices of wrapped layers whose forward does not run in a forward pass of ``model``:
    their parent reads ``layer.weight``/``layer.bias`` itself (Swin's window attention), so
    the quantized weight is used but the input cannot be fake-quantized."""
    ran: set[int] = set()
    handles = [q.register_forward_pre_hook(lambda *_a, i=i: ran.add(i)) for i, q in enumerate(qlayers)]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return frozenset(set(range(len(qlayers))) - ran)


def _warn_float_parts(model: nn.Module, layers: Sequence[LayerSpec], bypassed: frozenset[int]) -> None:
    """One warning line naming what stays float whatever the policy, with its share of MACs
    (inputs of bypassed layers) and of parameters (parameters no layer covers, norms aside)."""
    parts = []
    if bypassed:
        total = sum(s.macs for s in layers) or 1
        share = sum(layers[i].macs for i in bypassed) / total
        first = layers[min(bypassed)].name
        parts.append(f"the inputs of {len(bypassed)} layers used through the functional API (e.g. {first}; "
                     f"{100 * share:.1f}% of MACs; their weights are quantized)")
    loose = unquantized_parameters(model, layers)
    if loose:
        total_p = sum(p.numel() for p in model.parameters()) or 1
        names = ", ".join(sorted(loose)[:3]) + (", ..." if len(loose) > 3 else "")
        parts.append(f"{len(loose)} parameters outside any layer ({names}; "
                     f"{100 * sum(loose.values()) / total_p:.2f}% of parameters)")
    if parts:
        warnings.warn("haq: stay float: " + "; ".join(parts), stacklevel=3)
