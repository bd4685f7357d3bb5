"""``--device auto|cpu|cuda|cuda:N``: where evaluation, calibration and Hessian traces run.
Asking for CUDA where there is none is one line and exit 2; on the CPU nothing changes; on
a GPU (tests skipped without one) the evaluator agrees with the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from haq.devices import resolve_device
from haq.errors import ConfigError
from haq.quant.evaluator import Evaluator
from haq.quant.quantizers import quantize_weight, weight_integers
from tests.conftest import run_cli

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def test_auto_is_cuda_when_present_else_cpu():
    assert resolve_device("auto") == torch.device("cuda" if CUDA else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("CPU") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu:0"])
def test_a_device_that_is_no_device_is_refused_with_the_choices(spec):
    with pytest.raises(ConfigError, match="auto .*cpu.*cuda|GPU index"):
        resolve_device(spec)


@pytest.mark.skipif(CUDA, reason="checks a machine without CUDA")
def test_asking_for_cuda_without_it_is_one_line_and_exit_2(tmp_path):
    r = run_cli("search", "--method", "random", "--max-evaluations", "2", "--device", "cuda", "--quiet",
                "--out", str(tmp_path / "run"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no CUDA device" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_evaluating_on_the_cpu_device_changes_nothing(mobilenet, digits, mobilenet_evaluator):
    ev = Evaluator(mobilenet.module, digits, device="cpu")
    L = len(ev.layers)
    rng = np.random.default_rng(1)
    for _ in range(3):
        w, a = rng.integers(2, 9, L), rng.integers(2, 9, L)
        assert ev.evaluate(w, a) == mobilenet_evaluator.evaluate(w, a)


@needs_cuda
def test_cuda_evaluation_agrees_with_the_cpu_and_keeps_everything_on_the_device(mobilenet, digits,
                                                                                 mobilenet_evaluator):
    ev = Evaluator(mobilenet.module, digits, device="cuda")
    L = len(ev.layers)
    rng = np.random.default_rng(2)
    for _ in range(3):
        w, a = rng.integers(2, 9, L), rng.integers(2, 9, L)
        assert abs(ev.evaluate(w, a) - mobilenet_evaluator.evaluate(w, a)) <= 2 / len(digits.val)
    assert all(q.weight.is_cuda for q in ev.qlayers)
    assert ev._device_weight(0, 4).is_cuda and not ev.quantized_weight(0, 4).is_cuda


def test_weights_are_quantized_on_the_device_they_live_on():
    # the meta device stands in for a GPU: any tensor made on the CPU by mistake fails here
    w = torch.randn(8, 3, 3, 3, device="meta")
    for bits in (1, 4, 8):
        for mode in ("symmetric", "asymmetric", "power-of-two"):
            assert quantize_weight(w, bits, mode).device == w.device
            assert all(t.device == w.device for t in weight_integers(w, bits, mode))


@needs_cuda
def test_fidelity_on_cuda_matches_the_cpu(mobilenet, digits, mobilenet_evaluator):
    ev = Evaluator(mobilenet.module, digits, device="cuda")
    w = np.array([4, 8, 6] * 6)[: len(ev.layers)]
    kl, agree = ev.fidelity(w, w)
    kl_cpu, agree_cpu = mobilenet_evaluator.fidelity(w, w)
    assert kl == pytest.approx(kl_cpu, rel=1e-2, abs=1e-5)
    assert abs(agree - agree_cpu) <= 2 / ev.split_size("fidelity")


@needs_cuda
def test_cuda_computes_ieee_float32_not_tf32():
    resolve_device("cuda")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


@needs_cuda
def test_hessian_traces_on_cuda_match_the_cpu(mobilenet_evaluator):
    from haq.methods.hawq.hessian import TraceSettings, layer_traces

    calib = mobilenet_evaluator.calibration_split
    names = [s.name for s in mobilenet_evaluator.layers]
    s = TraceSettings(1, 32, 4, 1e-9, 0)
    cpu = layer_traces(mobilenet_evaluator.folded_model(), names, calib.x, calib.y, s, use_cache=False)
    gpu = layer_traces(mobilenet_evaluator.folded_model(), names, calib.x, calib.y, s, use_cache=False, device="cuda")
    np.testing.assert_allclose(gpu.traces, cpu.traces, rtol=1e-3)
