"""Quantization numerics against a float reference, with stated tolerances (design §4).

Everything here runs eager (``compile=False``); the compiled path is pinned to the eager
one in ``test_evaluator_compile.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from haq.data import DataSplits, Split
from haq.fold import fold_batchnorm
from haq.quant.calibration import ActivationStats, calibrate, collect_stats
from haq.quant.evaluator import Evaluator
from haq.quant.qlayer import QuantLayer
from haq.quant.quantizers import activation_params, quantize_weight
from haq.scheme import QuantScheme


@pytest.fixture(scope="module")
def ev(mobilenet, digits):
    return Evaluator(mobilenet.module, digits, compile=False)


def uniform(ev: Evaluator, w: int, a: int, split: str = "val") -> float:
    n = len(ev.layers)
    return ev.evaluate([w] * n, [a] * n, split)


# ----- the bits matter, in the right order ------------------------------------------------
@pytest.mark.parametrize("split", ["val", "test"])
def test_w8a8_loses_at_most_half_a_point_against_fp32(ev, split):
    # one-sided: on ~360 images W8A8 may also land an image or two above fp32
    assert uniform(ev, 8, 8, split) >= ev.fp32_accuracy(split) - 0.005


def sqnr_db(ev: Evaluator, w: int, a: int) -> float:
    """Signal-to-quantization-noise ratio of the logits on val against the float model, dB."""
    n = len(ev.layers)
    ref, out = ev.logits([32] * n, [32] * n), ev.logits([w] * n, [a] * n)
    return float(10 * torch.log10(ref.pow(2).mean() / (out - ref).pow(2).mean()))


def test_fewer_weight_bits_cost_accuracy_w8_over_w4_over_w3_over_w2(ev):
    """Accuracy on val and test pooled (719 images; the widened default model is robust:
    measured w8a8 99.4, w4a8 98.1, w3a8 97.2, w2a8 13.5 %)."""

    def pooled(w: int) -> float:
        return (uniform(ev, w, 8, "val") + uniform(ev, w, 8, "test")) / 2

    w8, w4, w3, w2 = (pooled(b) for b in (8, 4, 3, 2))
    assert w2 < 0.5 < w3 < w4 < w8


def test_fewer_bits_lower_the_logit_sqnr_clearly(ev):
    """torchao-style SQNR thresholds (measured: w8a8 32 dB, w4a8 12.6, w3a8 7.7, w32a4 13)."""
    s88, s48, s38 = sqnr_db(ev, 8, 8), sqnr_db(ev, 4, 8), sqnr_db(ev, 3, 8)
    assert s88 >= 25.0
    assert s48 <= s88 - 10.0
    assert s38 <= s48 - 3.0
    assert sqnr_db(ev, 32, 4) <= sqnr_db(ev, 32, 8) - 10.0  # activation bits matter too


def test_all_32_bits_is_the_float_model(ev, mobilenet, digits):
    with torch.no_grad():
        ref = int((mobilenet.module(digits.val.x).argmax(1) == digits.val.y).sum()) / len(digits.val)
    assert uniform(ev, 32, 32) == ref


# ----- quantizers -------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_error_is_at_most_half_a_step(bits, per_channel):
    w = torch.randn(16, 8, 3, 3) * torch.linspace(0.1, 3.0, 16)[:, None, None, None]
    q = quantize_weight(w, bits, per_channel=per_channel)
    flat = w.reshape(16, -1) if per_channel else w.reshape(1, -1)
    scale = flat.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
    err = (q - w).reshape(flat.shape).abs()
    assert torch.all(err <= scale / 2 * (1 + 1e-5))
    levels = torch.round(q.reshape(flat.shape) / scale)
    assert levels.abs().max() <= 2 ** (bits - 1) - 1


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("mode", ["asymmetric", "symmetric", "unsigned"])
def test_activation_error_is_at_most_half_a_step_inside_the_range(bits, mode):
    lo, hi = (0.0, 6.0) if mode == "unsigned" else (-2.0, 5.0)
    x = torch.linspace(lo, hi, 10_001)
    s, z, qmin, qmax = activation_params(lo, hi, bits, mode)
    y = torch.fake_quantize_per_tensor_affine(x, s, int(z), int(qmin), int(qmax))
    assert torch.all((y - x).abs() <= s / 2 * (1 + 1e-4))


@pytest.mark.parametrize("mode", ["asymmetric", "symmetric", "unsigned"])
def test_quant_layer_quantizes_as_quantize_dequantize_linear_and_is_the_identity_in_float(mode):
    conv = nn.Conv2d(3, 4, 3, padding=1)
    q = QuantLayer(conv)
    x = torch.randn(2, 3, 5, 5) * 3
    with torch.no_grad():
        assert torch.equal(q(x), conv(x))
        for bits in (2, 4, 8):
            s, z, qmin, qmax = activation_params(-4.0, 7.0, bits, mode)
            q.set_activation((s, z, qmin, qmax))
            s32 = float(torch.tensor(s, dtype=torch.float32))
            # ONNX QuantizeLinear then DequantizeLinear: divide by the float32 scale, round half to even
            ref = (torch.clamp(torch.round(x / s32) + z, qmin, qmax) - z) * s32
            assert torch.equal(q(x), conv._conv_forward(ref, q.weight, conv.bias))
        q.set_activation("half")  # 16 bits: float16, as half-precision hardware runs it
        assert torch.equal(q(x), conv(x.half().float()))
        q.set_activation(None)
        assert torch.equal(q(x), conv(x))


def test_16_bits_is_float16_and_costs_nothing_on_accuracy(ev):
    assert uniform(ev, 16, 16) == pytest.approx(ev.fp32_accuracy(), abs=0.003)
    w = ev.float_weight(0)
    assert torch.equal(ev.quantized_weight(0, 16), w.half().float())


def test_weight_bits_32_is_the_identity():
    w = torch.randn(8, 4, 3, 3)
    assert torch.equal(quantize_weight(w, 32), w)


def test_per_channel_beats_per_tensor_when_channel_ranges_differ():
    w = torch.randn(32, 16, 3, 3) * torch.logspace(-2, 0, 32)[:, None, None, None]
    for bits in (4, 8):
        e_ch = (quantize_weight(w, bits, per_channel=True) - w).pow(2).mean()
        e_t = (quantize_weight(w, bits, per_channel=False) - w).pow(2).mean()
        assert e_ch < 0.5 * e_t


def test_per_tensor_weight_scheme_uses_one_scale_per_tensor_and_still_works(mobilenet, digits, ev):
    pt = ev.with_scheme(QuantScheme(weight_granularity="per-tensor"))
    assert pt is not ev and pt.with_scheme(ev.scheme) is ev  # one evaluator per scheme
    w8 = pt.quantized_weight(0, 8)
    step = w8.abs().max() / 127
    assert torch.allclose(w8 / step, torch.round(w8 / step), atol=1e-3)  # one grid for all channels
    assert abs(uniform(pt, 8, 8) - ev.fp32_accuracy()) <= 0.02


# ----- calibrators ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stats(ev) -> list[ActivationStats]:
    return ev._stats()


def test_every_calibrator_gives_a_range_inside_the_observed_one(stats):
    for st in stats:
        for method in ("minmax", "avg-minmax", "percentile:99.9", "entropy", "mse"):
            lo, hi = calibrate(st, method, 4, "asymmetric")
            assert st.min - 1e-6 <= lo <= hi <= st.max * (1 + 1e-3) + 1e-6, (method, lo, hi, st.min, st.max)
            assert hi > 0


def test_percentile_is_no_wider_than_minmax_and_shrinks_with_p(stats):
    for st in stats:
        lo_m, hi_m = calibrate(st, "minmax", 8, "asymmetric")
        _, hi_999 = calibrate(st, "percentile:99.9", 8, "asymmetric")
        _, hi_99 = calibrate(st, "percentile:99", 8, "asymmetric")
        assert hi_99 <= hi_999 <= hi_m


def test_entropy_and_mse_clip_at_4_bits(stats):
    """At 4 bits both trade clipping for resolution: never wider than minmax, and
    narrower on at least half of the layers."""
    for method in ("entropy", "mse"):
        widths = []
        for st in stats:
            lo, hi = calibrate(st, method, 4, "asymmetric")
            widths.append((hi - lo) / (st.max - st.min))
        assert max(widths) <= 1 + 1e-3, method
        assert np.median(widths) < 1.0, method


def test_collect_stats_uses_the_torch_observer_range():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 1))
    x = torch.randn(10, 1, 6, 6)
    st = collect_stats(model, [model[0], model[2]], x, batch_size=4)
    assert st[0].min == pytest.approx(float(x.min())) and st[0].max == pytest.approx(float(x.max()))
    assert st[1].min == 0.0 and len(st[1].batch_mins) == 3
    assert st[0].hist.sum() == x.numel()


def test_calibration_statistics_are_collected_once_and_reused_from_disk(mobilenet, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("HAQ_CACHE_DIR", str(tmp_path))
    first = Evaluator(mobilenet.module, digits, compile=False)
    r1 = first.activation_range(3, 4)
    assert first.calibration_source == "collected"
    files = list((tmp_path / "calibration").glob("*.npz"))
    assert len(files) == 1
    second = Evaluator(mobilenet.module, digits, compile=False)  # new process, in effect
    assert second.activation_range(3, 4) == r1
    assert second.calibration_source == "disk"
    files[0].write_bytes(b"not an npz")  # a corrupt cache is recomputed, never trusted
    third = Evaluator(mobilenet.module, digits, compile=False)
    assert third.activation_range(3, 4) == r1 and third.calibration_source == "collected"
    with np.load(files[0], allow_pickle=False) as f:
        assert len(f.files) == 5 * (len(first.layers) + len(first.residual_plan.outputs))  # + residual-add outputs
    other = copy.deepcopy(mobilenet.module)
    with torch.no_grad():
        next(other.parameters()).mul_(1.5)
    Evaluator(other, digits, compile=False).activation_range(0, 8)  # other weights, other key
    assert len(list((tmp_path / "calibration").glob("*.npz"))) == 2


# ----- BatchNorm folding -----------------------------------------------------------------
def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name", ["digits-mobilenet", "resnet18"])
def test_batchnorm_folding_preserves_fp32_outputs(name, mobilenet):
    if name == "resnet18":
        model, shape = _randomise_bn(torchvision.models.resnet18(num_classes=10)), (3, 32, 32)
    else:
        model, shape = mobilenet.module, (1, 8, 8)
    folded, pairs = fold_batchnorm(model, shape)
    assert len(pairs) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_evaluator_on_a_torchvision_model_with_generated_data():
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))

    data = DataSplits("generated", (3, 32, 32), 10, split(16), split(20), split(20))
    model = _randomise_bn(torchvision.models.resnet18(num_classes=10))
    ev = Evaluator(model, data, compile=False, batch_size=8)  # partial last batch: 20 = 8 + 8 + 4
    with torch.no_grad():
        ref = (model(data.val.x).argmax(1) == data.val.y).float().mean().item()
    assert ev.fp32_accuracy() == pytest.approx(ref)
    n = len(ev.layers)
    assert 0.0 <= ev.evaluate([4] * n, [4] * n) <= 1.0 and ev.execution == "eager"
