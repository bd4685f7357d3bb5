"""Forward passes of the fake-quantized model: eager, or compiled once by ``torch.compile``.

Why compile: eager, each activation fake-quant is four extra memory-bound passes over the
layer's input; compiled, inductor fuses them into the neighbouring element-wise ops
(ReLU6, residual adds). Measured (1 CPU thread, evaluation of a random mixed policy /
eager fp32 forward of the original model, ``benchmarks/eval_overhead.py``): digits-mobilenet
eager 0.93x, compiled 0.57x; ResNet-18 at 64x64 1.02x and 0.81x; MobileNetV2 at 64x64
0.74x and 0.41x.

How a new policy avoids recompiling: every policy-dependent value lives in a tensor
(:mod:`haq.quant.qlayer`), weights are overwritten in place, and the batch dimension is
marked dynamic, so the last partial batch and another split's size reuse the same graph.
A one-image batch is padded to two (dynamo specialises sizes 0 and 1).

Which path runs (``compile=``):

* ``False`` - eager, always.
* ``True`` - compiled from the first forward pass.
* ``"auto"`` - ski rental: run eager, and compile once the eager evaluations so far have
  taken ``compile_cost_s / EXPECTED_SAVING`` seconds (30 s / 0.2 = 150 s by default), i.e.
  once compiling from the start would have saved one compilation's worth of time.
  ``compile_cost_s`` is inductor's cold compile of a 20-50-layer CNN on 2 busy CPU cores
  (measured 25-55 s; 5 s with its disk cache warm); ``EXPECTED_SAVING`` the smallest
  fraction of an eager evaluation the compiled graph saved on the models above (ResNet-18:
  20 %; depthwise models ~40 %). Total time then stays within about twice that of the
  better choice made in hindsight, and short runs (tests, a few hundred evaluations of the
  digits model) never pay for a compilation. Compiled and eager results are bit-identical,
  so the switch never changes an accuracy.

If compiling or running the compiled graph raises anything, the runner falls back to eager
for good and keeps the reason in ``compile_error``; nothing is printed or logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal, TypeVar

import torch
from torch import nn

CompileOption = Literal["auto"] | bool
DEFAULT_COMPILE_COST_S = 30.0  #: expected cold compile time, s
EXPECTED_SAVING = 0.2  #: fraction of an eager evaluation the compiled graph saves (at least)

T = TypeVar("T")
_graphs_compiled = 0  # graphs compiled by _counting_inductor, process-wide


def graphs_compiled() -> int:
    """How many graphs haq's compile backend has compiled in this process (all evaluators)."""
    return _graphs_compiled


def _counting_inductor(gm: torch.fx.GraphModule, example_inputs: list) -> object:
    """Inductor, counting each graph it is handed (a recompilation is one more graph).

    One module-level backend, so evaluators of the same architecture share compiled code.
    Inductor's layout optimisation is off: it would re-layout every weight to channels-last
    on each call (slower on ResNet-18) and change the conv kernels, so compiled results would
    differ from eager ones in the last float bits. With it off, and the model already in the
    memory format the evaluator chose, compiled and eager logits are bit-identical.
    ``emulate_precision_casts`` keeps the float16 rounding of 16-bit activations, which
    inductor would otherwise elide as a no-op cast pair.
    """
    global _graphs_compiled
    _graphs_compiled += 1
    from torch._inductor.compile_fx import compile_fx

    patches = {"layout_optimization": False, "emulate_precision_casts": True}
    return compile_fx(gm, example_inputs, config_patches=patches)


def _quiet_import_cpp_extension() -> None:
    """Inductor imports ``torch.utils.cpp_extension``, which logs a warning on machines
    without a CUDA runtime; import it once with that logger silenced (the library never
    prints)."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        log.setLevel(level)


class ForwardRunner:
    """Counts correct top-1 predictions of ``module`` over a split, eager or compiled.

    With ``channels_last`` the module's 4-d weights and every input batch are put in
    channels-last memory format (oneDNN's fast layout for depthwise convs).

    Attributes:
        path: ``"eager"`` or ``"compiled"`` - what the next forward pass runs.
        compile_count: graphs compiled for this runner (1 after warm-up; a policy change
            must never add one).
        compile_seconds: wall time of the forward passes that compiled, s.
        compile_error: why compilation was abandoned (then ``path`` is ``"eager"``), or None.
        eager_seconds: wall time spent in eager evaluations so far, s (the ``auto`` meter).
    """

    def __init__(
        self,
        module: nn.Module,
        compile: CompileOption = "auto",
        compile_cost_s: float = DEFAULT_COMPILE_COST_S,
        channels_last: bool = False,
    ) -> None:
        if compile not in ("auto", True, False):
            from haq.errors import ConfigError

            raise ConfigError(f"compile={compile!r} is not an option: use 'auto', True or False")
        self.module = module
        self.mode = compile
        self.compile_cost_s = float(compile_cost_s)
        self.path: Literal["eager", "compiled"] = "compiled" if compile is True else "eager"
        self.compile_count = 0
        self.compile_seconds = 0.0
        self.compile_error: str | None = None
        self.eager_seconds = 0.0
        self.batch_limit: int | None = None  #: largest batch that fit in device memory, or None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            module.to(memory_format=torch.channels_last)  # 4-d weights and buffers, in place
        self._compiled: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def auto_threshold_s(self) -> float:
        """Eager time after which ``auto`` compiles, s."""
        return self.compile_cost_s / EXPECTED_SAVING

    def count_correct(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
        """Correct predictions on images ``x`` ``(N, C, H, W)`` with labels ``y`` ``(N,)``; NaN
        when an output is NaN or infinite (an argmax over them would count garbage as hits)."""
        def hits_of(s: int, out: torch.Tensor) -> float:
            if not bool(torch.isfinite(out).all()):
                return float("nan")
            return float((out.argmax(1) == y[s : s + len(out)]).sum())

        return float(sum(self._map_batches(x, batch_size, hits_of)))

    def logits(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Outputs ``(N, classes)`` on images ``x`` ``(N, C, H, W)`` (an ordinary tensor)."""
        outs = self._map_batches(x, batch_size, lambda s, out: out)
        return torch.cat(outs)  # outside inference mode: a normal tensor, usable anywhere

    def _map_batches(self, x: torch.Tensor, batch_size: int, fn: Callable[[int, torch.Tensor], T]) -> list[T]:
        """``fn(start, outputs)`` of every batch, in inference mode; meters eager time for auto.

        On a GPU, a batch that runs out of device memory is halved (and stays halved for
        later calls) until it fits; the results do not depend on the batch size."""
        start_path, t0 = self.path, time.perf_counter()
        while True:
            step = min(batch_size, self.batch_limit or batch_size)
            try:
                results = []
                with torch.inference_mode():
                    for start in range(0, len(x), step):
                        xb = x[start : start + step].contiguous(memory_format=self.memory_format)
                        results.append(fn(start, self.forward(xb)))
                break
            except torch.OutOfMemoryError:
                if step <= 1 or x.device.type == "cpu":
                    raise
                self.batch_limit = step // 2
                torch.cuda.empty_cache()
        if start_path == "eager" and self.path == "eager":
            self.eager_seconds += time.perf_counter() - t0
            if self.mode == "auto" and self.compile_error is None and self.eager_seconds >= self.auto_threshold_s:
                self.path = "compiled"
        return results

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.path == "compiled":
            try:
                return self._forward_compiled(x)
            except Exception as exc:  # any compiler failure: eager from now on
                self.compile_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
                self.path = "eager"
                self._compiled = None
        return self.module(x)

    def _forward_compiled(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is None:
            _quiet_import_cpp_extension()
            self._compiled = torch.compile(self.module, backend=_counting_inductor, dynamic=None)
        n = x.shape[0]
        if n == 1:  # a size-1 dimension would be specialised: pad, then drop the copy
            x = torch.cat([x, x])
        torch._dynamo.maybe_mark_dynamic(x, 0)
        before, t0 = _graphs_compiled, time.perf_counter()
        out = self._compiled(x)
        if _graphs_compiled != before:
            self.compile_count += _graphs_compiled - before
            self.compile_seconds += time.perf_counter() - t0
        return out[:n]
