"""The compiled evaluator: one graph for every policy, the same accuracy as eager, and an
eager fallback when the compiler fails. Real ``torch.compile`` (inductor, C++ backend).

One compilation of the default model (~10-40 s on 2 CPU cores, less with inductor's disk
cache warm) is shared by the whole module.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from haq.data import DataSplits, Split
from haq.quant.evaluator import Evaluator
from haq.quant.runner import graphs_compiled
from haq.scheme import QuantScheme

pytestmark = pytest.mark.slow

BITS = np.array([2, 3, 4, 5, 6, 7, 8, 16, 32])


@pytest.fixture(scope="module")
def data(digits) -> DataSplits:
    # batches of 128: val 257 = 128 + 128 + 1 (a one-image batch), test 360 = 128 + 128 + 104
    return dataclasses.replace(digits, val=digits.val.head(257))


@pytest.fixture(scope="module")
def pair(mobilenet, data) -> tuple[Evaluator, Evaluator]:
    eager = Evaluator(mobilenet.module, data, batch_size=128, compile=False)
    compiled = Evaluator(mobilenet.module, data, batch_size=128, compile=True)
    n = len(compiled.layers)
    compiled.evaluate([8] * n, [8] * n)  # warm-up: compiles
    return eager, compiled


def random_policies(n_layers: int, count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.choice(BITS, n_layers), rng.choice(BITS, n_layers)) for _ in range(count)]


def test_the_compiled_path_is_active_after_warm_up(pair):
    _, compiled = pair
    assert compiled.execution == "compiled" and compiled.compile_error is None
    assert compiled.compile_seconds > 0


def test_new_policies_and_other_splits_never_recompile(pair):
    _, compiled = pair
    count, graphs = compiled.compile_count, graphs_compiled()
    with torch._dynamo.config.patch(error_on_recompile=True):  # a guard failure raises here
        for w, a in random_policies(len(compiled.layers), 12):
            for split in ("val", "test"):
                assert 0.0 <= compiled.evaluate(w, a, split) <= 1.0
    assert compiled.execution == "compiled" and compiled.compile_error is None
    assert compiled.compile_count == count and graphs_compiled() == graphs


def test_other_schemes_evaluate_compiled_like_eager(pair):
    """Quantune and HAGO switch schemes per trial. Since the evaluator's model is a torch.fx
    GraphModule (residual-add quantizers), each scheme's evaluator compiles its own graph once
    (fx generates a forward per instance) - a known cost, see README's known limits - and then
    never recompiles for a new policy; its accuracy equals the eager one's."""
    eager, compiled = pair
    n = len(compiled.layers)
    for scheme in (QuantScheme(calibration="minmax"), QuantScheme("power-of-two", "per-tensor", "symmetric", "mse")):
        other = compiled.with_scheme(scheme)
        assert other is not compiled and other.evaluate([4] * n, [6] * n) > 0.5
        assert other.execution == "compiled" and other.compile_error is None
        count = other.compile_count
        with torch._dynamo.config.patch(error_on_recompile=True):
            for w, a in random_policies(n, 3, seed=5):
                assert other.evaluate(w, a) == eager.with_scheme(scheme).evaluate(w, a)
        assert other.compile_count == count


def test_compiled_accuracy_equals_eager_accuracy_on_the_same_policy(pair, data):
    eager, compiled = pair
    n = len(eager.layers)
    for w, a in [*random_policies(n, 6, seed=1), (np.full(n, 4), np.full(n, 8)), (np.full(n, 32), np.full(n, 32))]:
        for split in ("val", "test"):
            e, c = eager.evaluate(w, a, split), compiled.evaluate(w, a, split)
            assert abs(e - c) * len(data.split(split)) <= 1 + 1e-9  # within one image (measured: equal)
    assert compiled.execution == "compiled"


def test_compiled_logits_match_eager_logits(pair):
    eager, compiled = pair
    n = len(eager.layers)
    w, a = np.full(n, 6), np.where(np.arange(n) % 2 == 0, 8, 16)  # integer and float16 inputs
    torch.testing.assert_close(compiled.logits(w, a, "val"), eager.logits(w, a, "val"), rtol=0, atol=1e-5)


def test_auto_switches_to_compiled_once_eager_time_reaches_the_compile_cost(mobilenet, data, pair):
    n = len(pair[0].layers)
    never = Evaluator(mobilenet.module, data, batch_size=128, compile="auto", compile_cost_s=1e9)
    at_once = Evaluator(mobilenet.module, data, batch_size=128, compile="auto", compile_cost_s=0.0)
    assert never.execution == at_once.execution == "eager"
    for ev in (never, at_once):
        ev.evaluate([8] * n, [8] * n)
    assert never.execution == "eager" and at_once.execution == "compiled"
    # same architecture and shapes as the module's compiled evaluator: its graph is reused
    w, a = np.full(n, 5), np.full(n, 7)
    assert at_once.evaluate(w, a) == never.evaluate(w, a)
    assert at_once.execution == "compiled" and at_once.compile_error is None


class _Tiny(nn.Module):
    """A model no other test compiles (so no cached graph can hide a compiler failure)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_falls_back_to_eager_when_the_compiler_fails():
    """A machine without a working C++ compiler: inductor cannot build its kernels."""
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(20, 1, 8, 8, generator=g), torch.randint(0, 10, (20,), generator=g))
    data = DataSplits("generated", (1, 8, 8), 10, split, split, split)
    model = _Tiny().eval()
    ev = Evaluator(model, data, compile=True)
    reference = Evaluator(model, data, compile=False)
    broken = {"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False, "compile_threads": 1}
    with torch._inductor.config.patch(broken):
        acc = ev.evaluate([4, 4], [8, 8])
    assert ev.execution == "eager" and ev.compile_error
    assert acc == reference.evaluate([4, 4], [8, 8])
    assert ev.evaluate([8, 8], [8, 8]) == reference.evaluate([8, 8], [8, 8])  # stays eager, keeps working
