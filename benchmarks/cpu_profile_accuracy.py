"""Does the ``cpu`` hardware model's per-layer sum predict the whole model's measured time?

Per model: the sum over layers of the profiled fp32 (w32a32) and int8 (w8a8) latencies
(ONNX Runtime kernels, :mod:`haq.simulators.profiling`) against the measured end-to-end
ONNX Runtime latency of the whole fp32 model and the whole uniform-int8 model, both as
``haq export`` writes them (BatchNorm folded; QDQ, fused into QLinearConv/QLinearAdd/QGemm),
their relative errors, the wall time of profiling the model from an empty cache, and the int8/fp32
speedup, measured and predicted. Design §6 asks for |error| <= 25%: the script exits 1 if
ResNet-18 3x64x64 or digits-mobilenet (the two models the test checks) miss it; the other
rows are information. Weights are random: kernel time does not depend on their values.
Batch 1, one thread by default (the thread CPU clock, robust on a shared machine; each
layer is a difference of two back-to-back runs, the fp32/int8 pairs interleaved, so a burst
of load hits every pair alike).

    python benchmarks/cpu_profile_accuracy.py [--quick] [--threads 1] [--repeats 30]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import onnxruntime
import torch
import torchvision

from haq.deploy import check_end_to_end
from haq.digits_models import DigitsMobileNet, DigitsResNet
from haq.simulators.measured import cpu_model_name

TARGET = 0.25  #: design §6: the per-layer sum predicts the whole model within 25%


def models(quick: bool) -> list[tuple[str, torch.nn.Module, tuple[int, int, int], bool]]:
    """(label, model, input shape, part of the claim): the claim is the two models the test checks."""
    out = [
        ("resnet18 3x64x64", torchvision.models.resnet18(), (3, 64, 64), True),
        ("digits-mobilenet 1x8x8", DigitsMobileNet(), (1, 8, 8), True),
    ]
    if not quick:
        out += [
            ("resnet18 3x112x112", torchvision.models.resnet18(), (3, 112, 112), False),
            ("mobilenet_v2 3x112x112", torchvision.models.mobilenet_v2(), (3, 112, 112), False),
            ("digits-resnet 1x8x8", DigitsResNet(), (1, 8, 8), False),
        ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two models, 10 repeats")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (1: thread CPU clock)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per layer and per model")
    args = ap.parse_args()
    repeats = args.repeats or (10 if args.quick else 30)
    torch.manual_seed(0)
    print(
        f"cpu: {cpu_model_name()}, onnxruntime {onnxruntime.__version__}, threads {args.threads}, repeats {repeats}, batch 1"
    )
    head = (
        f"{'model':<24} {'L':>3} {'fp32 sum':>9} {'fp32 e2e':>9} {'err':>7} "
        f"{'int8 sum':>9} {'int8 e2e':>9} {'err':>7} {'profile s':>9} {'speedup e2e':>11} {'pred':>6}"
    )
    print(head)
    worst = 0.0
    start = time.perf_counter()
    for name, model, shape, claim in models(args.quick):
        with tempfile.TemporaryDirectory() as cache:
            os.environ["HAQ_CACHE_DIR"] = cache  # an empty cache: profile_s is a real first profile
            r = check_end_to_end(model, shape, batch=1, threads=args.threads, repeats=repeats)
        if claim:
            worst = max(worst, abs(r.error_fp32), abs(r.error_int8))
        print(
            f"{name:<24} {r.n_layers:>3} {r.layers_fp32_ms:>9.3f} {r.model_fp32_ms:>9.3f} {r.error_fp32:>+7.1%} "
            f"{r.layers_int8_ms:>9.3f} {r.model_int8_ms:>9.3f} {r.error_int8:>+7.1%} {r.profile_s:>9.1f} "
            f"{r.model_fp32_ms / r.model_int8_ms:>10.2f}x {r.layers_fp32_ms / r.layers_int8_ms:>5.2f}x"
            + ("" if claim else "  (info)"),
            flush=True,
        )
    print(
        f"worst |error| of the claimed models {worst:.1%} (target <= 25%); total {time.perf_counter() - start:.0f} s; times in ms"
    )
    if worst > TARGET:
        raise SystemExit(f"missed the target: a per-layer sum is off by {worst:.1%} > {TARGET:.0%}")


if __name__ == "__main__":
    main()
