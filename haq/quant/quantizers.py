"""Linear quantizers: weights (once per layer and bitwidth) and activation parameters.

Weights, symmetric (the default, design §4)::

    scale_c = max|W_c| / (2^(b-1) - 1)          # per output channel c (or per tensor)
    W_q     = clamp(round(W / scale), -(2^(b-1)-1), 2^(b-1)-1) * scale

so the error of every in-range value is at most scale/2. ``b = 32`` returns ``W`` itself;
``b = 1`` is sign(W) * mean|W_c| (binary weights, as bit-serial hardware runs them).
Activations are fake-quantized with ``y = (clamp(round(x/s) + z, qmin, qmax) - z) * s``;
:func:`activation_params` turns a calibrated range into ``(s, z, qmin, qmax)``.
"""

from __future__ import annotations

import math

import torch

from haq.bits import FLOAT_BITS, HALF_BITS


def _channel_view(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``w`` as ``(C_out, -1)`` for per-channel statistics, or ``(1, -1)`` per tensor."""
    return w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)


def quantize_weight(w: torch.Tensor, bits: int, mode: str = "symmetric", per_channel: bool = True) -> torch.Tensor:
    """Fake-quantized copy of a weight tensor ``(C_out, C_in/groups, kh, kw)`` or ``(out, in)``."""
    if bits >= FLOAT_BITS:
        return w.detach().clone()
    if bits == HALF_BITS:
        return w.detach().half().float()
    q, scale, zero = weight_integers(w, bits, mode, per_channel)
    flat = q.reshape(scale.shape[0], -1)
    return ((flat - zero[:, None]) * scale[:, None]).reshape(w.shape)


def weight_integers(
    w: torch.Tensor, bits: int, mode: str = "symmetric", per_channel: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The integers behind :func:`quantize_weight` (1-8 bits): ``(q, scale, zero)``.

    ``q`` has ``w``'s shape and holds integers (as float32); ``scale`` and ``zero`` have one
    entry per output channel (or one, per tensor), and ``quantize_weight(w) == (q - zero) *
    scale`` exactly - it is computed that way. Symmetric and power-of-two: ``zero = 0``,
    ``q`` in ``[-(2^(b-1)-1), 2^(b-1)-1]``; asymmetric: ``q`` in ``[0, 2^b - 1]``; 1 bit:
    ``q = +-1`` with ``scale = mean|W_c|``. (What an ONNX export stores, :mod:`haq.deploy`.)
    """
    flat = _channel_view(w.detach(), per_channel)
    if bits == 1:
        alpha = flat.abs().mean(dim=1, keepdim=True)
        q = torch.where(flat >= 0, 1.0, -1.0)
        return q.reshape(w.shape), alpha.reshape(-1), torch.zeros(flat.shape[0], device=flat.device)
    if mode == "asymmetric":
        lo = flat.min(dim=1, keepdim=True).values.clamp(max=0)
        hi = flat.max(dim=1, keepdim=True).values.clamp(min=0)
        levels = 2**bits - 1
        scale = ((hi - lo) / levels).clamp(min=1e-12)
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(flat / scale) + zero, 0, levels)
        return q.reshape(w.shape), scale.reshape(-1), zero.reshape(-1)
    qmax = 2 ** (bits - 1) - 1
    scale = (flat.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)
    if mode == "power-of-two":
        scale = torch.pow(2.0, torch.ceil(torch.log2(scale)))
    q = torch.clamp(torch.round(flat / scale), -qmax, qmax)
    return q.reshape(w.shape), scale.reshape(-1), torch.zeros(flat.shape[0], device=flat.device)


def activation_params(lo: float, hi: float, bits: int, mode: str = "asymmetric") -> tuple[float, float, float, float]:
    """``(scale, zero_point, qmin, qmax)`` of a per-tensor activation quantizer.

    ``lo, hi`` is the calibrated range. Modes: asymmetric (range widened to include 0,
    integer zero point), symmetric (signed, +-max|x|), unsigned (zero point 0, [0, hi]:
    negatives clip to 0) and power-of-two (symmetric, or unsigned when ``lo >= 0``, with a
    2^k scale).
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if mode == "asymmetric":
        levels = 2**bits - 1
        scale = max((hi - lo) / levels, 1e-12)
        zero = float(min(max(round(-lo / scale), 0), levels))
        return scale, zero, 0.0, float(levels)
    if mode == "unsigned" or (mode == "power-of-two" and lo >= 0):
        levels = 2**bits - 1
        scale = max(hi / levels, 1e-12)
        if mode == "power-of-two":
            scale = 2.0 ** math.ceil(math.log2(scale))
        return scale, 0.0, 0.0, float(levels)
    qmax = 2 ** (bits - 1) - 1 if bits > 1 else 1
    scale = max(max(abs(lo), abs(hi)) / qmax, 1e-12)
    if mode == "power-of-two":
        scale = 2.0 ** math.ceil(math.log2(scale))
    return scale, 0.0, float(-qmax), float(qmax)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: torch.Tensor, qmax: torch.Tensor) -> torch.Tensor:
    """Per-tensor fake quantization with every parameter a 0-d tensor, so that changing a
    bitwidth changes tensor values only (no recompilation under ``torch.compile``)."""
    q = torch.clamp(torch.round(x / scale) + zero, qmin, qmax)
    return (q - zero) * scale
