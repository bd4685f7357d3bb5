"""How well does the ``gpu-h100`` roofline predict shapes the H100 table lacks, and what does
the table say uniform fp32 / fp16 / int8 cost?

1. Held-out error of the per-precision roofline (5-fold, folds split by distinct shape):
   median, 90th percentile and max of |pred - measured| / measured.
2. Leave-one-model-out (full mode): fit on MobileNetV2's rows, predict ResNet-50's total, and
   the reverse, per precision and batch.
3. Uniform-precision latency of ResNet-50 and MobileNetV2 (224x224) at batch 1 and 64 from
   the ``gpu-h100`` cost table (GEMM columns; depthwise layers have no int8 kernel and run
   at fp16 in the "int8" row), with the number of layers the roofline filled in.

    python benchmarks/gpu_roofline.py [--quick]
"""

from __future__ import annotations

import argparse

import numpy as np
import torchvision

from haq.layers import describe
from haq.simulators import get_hardware
from haq.simulators.gpu_reference import GPU_COLUMNS, PRECISION_OF_BITS
from haq.simulators.roofline import fit_roofline

TARGET = 0.20  #: median held-out error per precision (tests/test_measured_hardware.py says why)


def held_out(hw) -> float:
    print("roofline held-out error (5-fold by shape)")
    print(f"{'family':<10} {'precision':<9} {'median':>7} {'p90':>7} {'max':>7} {'rows':>5}   fit")
    worst = 0.0
    for (family, precision), s in hw.holdout().items():
        r = hw.rooflines[(family, precision)]
        fit = (
            f"peak {r.peak_tflops:.1f} TFLOP/s, bw {r.bandwidth_gbs:.0f} GB/s, "
            f"K {r.depth_per_us:.0f}/us, overhead {r.overhead_ms * 1e3:.1f} us"
        )
        print(
            f"{family:<10} {precision:<9} {s['median']:>7.1%} {s['p90']:>7.1%} {s['max']:>7.1%} {s['n']:>5}   {fit}"
        )
        worst = max(worst, s["median"])
    return worst


def leave_one_model_out(hw) -> None:
    rows = hw.rows
    print("\nleave-one-model-out: total of the held-out model, roofline fitted on the other")
    print(f"{'model':<13} {'batch':>5} {'precision':<9} {'measured':>9} {'predicted':>9} {'error':>7}")
    for model in ("resnet50", "mobilenet_v2"):
        train = rows[rows.model != model]
        for family, columns in GPU_COLUMNS.items():
            is_dw = (train.kind == "depthwise") == (family == "depthwise")
            if is_dw.sum() < 3:
                continue  # ResNet-50 has no depthwise layer to learn MobileNetV2's from
            for bits, col in columns.items():
                precision = PRECISION_OF_BITS[bits]
                fit = fit_roofline(family, precision, train[is_dw][["M", "K", "N", "groups"]].to_numpy(),
                                   train[is_dw][col].to_numpy(dtype=float))  # fmt: skip
                for batch in (1, 64):
                    test = rows[(rows.model == model) & (rows.batch == batch)]
                    test = test[(test.kind == "depthwise") == (family == "depthwise")]
                    test = test[np.isfinite(test[col].to_numpy(dtype=float))]
                    if test.empty:
                        continue
                    meas = float(test[col].sum())
                    pred = float(fit.predict_ms(test[["M", "K", "N", "groups"]].to_numpy()).sum())
                    label = f"{precision}" + (" dw" if family == "depthwise" else "")
                    print(
                        f"{model:<13} {batch:>5} {label:<9} {meas:>9.3f} {pred:>9.3f} {pred / meas - 1:>+7.1%}"
                    )


def uniform(hw) -> None:
    print("\nuniform latency from gpu-h100, ms per batch (224x224)")
    print(
        f"{'model':<13} {'batch':>5} {'fp32':>8} {'fp16':>8} {'int8':>8} {'int8/fp16':>9}  roofline-filled int8 layers"
    )
    for name in ("resnet50", "mobilenet_v2"):
        layers = describe(getattr(torchvision.models, name)(), (3, 224, 224))
        for batch in (1, 64):
            table = hw.cost_table(layers, batch=batch)
            n = len(layers)
            lat = {}
            for bits in (32, 16, 8):
                b = np.array([bits if bits in hw.supported_bits(x.kind) else 16 for x in layers])
                lat[bits] = table.cost(b, b)[0]
            filled = sum(hw.lookup(x, batch, 8)[1] == "roofline" for x in layers if x.kind != "depthwise")
            print(
                f"{name:<13} {batch:>5} {lat[32]:>8.3f} {lat[16]:>8.3f} {lat[8]:>8.3f} {lat[8] / lat[16]:>8.2f}x  {filled} of {n}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the leave-one-model-out fits")
    args = ap.parse_args()
    hw = get_hardware("gpu-h100")
    worst = held_out(hw)
    if not args.quick:
        leave_one_model_out(hw)
    uniform(hw)
    if worst > TARGET:
        raise SystemExit(
            f"missed the target: a roofline's median held-out error is {worst:.1%} > {TARGET:.0%}"
        )


if __name__ == "__main__":
    main()
