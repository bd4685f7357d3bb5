"""Top-1 agreement of the exported model (ONNX Runtime) with the search's fake-quant evaluator.

Issue 11's goals: >= 99.5 % agreement and accuracy within one image on the embedded models'
test split (uniform 8, uniform 4, a searched mixed policy); >= 99 % on torchvision ResNet-18
and MobileNetV2 with random weights and generated data (64x64 random normal images,
BatchNorm statistics set from them, 1000 classes; uniform 8 and a mixed 4/6/8-bit weights,
6/8-bit activations policy). Printed per model and policy (:func:`haq.deploy.compare_tensors`):

* ``free``: top-1 agreement of the two running independently, and the share of all
  quantized activation elements whose integer differs;
* ``forced``: the same with every evaluator quantizer fed ONNX Runtime's integers of that
  tensor, so each difference is local to the ops in front of it: the evaluator and the
  deployed integer graph compute the same thing when forced agreement is 100 % and every
  local difference is one step on a rare element (float summation order at a rounding
  boundary), not a systematic mismatch (scale, zero point, clip, rounding rule, bias);
* the **float noise floor** of the random networks: the evaluator against itself run in the
  other memory format (NCHW vs channels-last: another summation order) and in float64 - what
  any two float implementations of the same fake quant agree on.

Exit 1 when a target is missed: embedded free agreement >= 99.5 % and accuracy gap <= 1
image; every forced agreement >= 99 % with local differences of one step on <= 1e-4 of the
elements; torchvision free disagreement within 2x the worse noise floor (+1 image). The 99 %
free-running goal on the random torchvision networks is printed as met or missed, with the
floor beside it (it is below 99 %: see the README's "Ship it").

    python benchmarks/deploy_agreement.py [--quick]     # quick: 100 instead of 300 images
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import haq
from haq.data import load_digits
from haq.deploy import (
    agreement,
    build_qdq_model,
    compare_tensors,
    float_noise_floor,
    ort_logits,
    ort_session,
    random_network,
)
from haq.layers import describe
from haq.models import load_model
from haq.policy import Policy
from haq.quant.evaluator import Evaluator

EMBEDDED_TARGET, RANDOM_GOAL, FORCED_TARGET, LOCAL_FRACTION = 0.995, 0.99, 0.99, 1e-4


def mixed_policy(layers: list) -> Policy:
    rng = np.random.default_rng(0)
    n = len(layers)
    return Policy.from_bits(layers, rng.choice([4, 6, 8], n), rng.choice([6, 8], n))


def ort_unoptimised(proto: object, x: torch.Tensor) -> np.ndarray:
    """Logits of ``proto`` in ONNX Runtime with graph optimisations off (every QDQ pair run
    as QuantizeLinear/DequantizeLinear around an fp32 Conv: no integer kernels)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    return ort_logits(session, x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 generated images instead of 300")
    args = ap.parse_args()
    torch.set_num_threads(1)
    images = 100 if args.quick else 300
    start = time.perf_counter()
    print(f"{'model':<24} {'policy':<10} {'images':>6} {'free':>7} {'forced':>7} {'elements differing':>22} "
          f"{'max step':>8} {'floor NCHW/NHWC, fp64':>22} {'ORT / fq acc':>15}")
    print(f"{'':<24} {'':<10} {'':>6} {'top-1':>7} {'top-1':>7} {'free / forced':>22} {'forced':>8}")
    failures: list[str] = []
    goal_missed: list[str] = []

    def row(model: str, label: str, ev: Evaluator, policy: Policy, random: bool) -> None:
        proto, _, _ = build_qdq_model(ev, policy)
        free = compare_tensors(ev, policy, proto, "test", forced=False)
        forced = compare_tensors(ev, policy, proto, "test", forced=True)
        acc = agreement(ev, policy, proto, "test")
        floor = float_noise_floor(ev, policy) if random else None
        floor_s = f"{100 * floor[0]:.1f} / {100 * floor[1]:.1f} %" if floor else "-"
        print(f"{model:<24} {label:<10} {free.images:>6} {100 * free.agreement:>6.1f}% {100 * forced.agreement:>6.1f}% "
              f"{free.fraction:>10.1e} / {forced.fraction:.1e} {forced.max_steps:>8} {floor_s:>22} "
              f"{100 * acc.ort_accuracy:>6.2f}/{100 * acc.fake_quant_accuracy:.2f}", flush=True)
        if random:
            x = ev.data.test.x
            fq = ev.logits(policy.w_bits, policy.a_bits, "test")
            top2 = fq.topk(2, 1).values
            margin = ((top2[:, 0] - top2[:, 1]) / fq.std(1)).numpy()
            ort_pred = ort_logits(ort_session(proto), x).argmax(1)
            changed = fq.argmax(1).numpy() != ort_pred
            self_agree = float((ort_unoptimised(proto, x).argmax(1) == ort_pred).mean())
            first = next((t for t in free.tensors if t.differing), free.tensors[0])
            later = free.tensors[free.tensors.index(first) + 1 :]
            step = max(1, len(later) // 4)
            depth = [first, *later[step - 1 :: step]]
            if depth[-1] is not free.tensors[-1]:
                depth.append(free.tensors[-1])
            print(f"{'':<24}   ORT vs ORT without optimiser {100 * self_agree:.1f} %; top-1 margin / logit std: median "
                  f"{np.median(margin):.2f}, on changed images max {margin[changed].max(initial=0):.2f}; free "
                  "elements differing by depth, from the first that differs: " + ", ".join(f"{t.tensor} {t.fraction:.0e}" for t in depth))
        name = f"{model} {label}"
        if forced.agreement < FORCED_TARGET or forced.max_steps > 1 or forced.fraction > LOCAL_FRACTION:
            failures.append(f"{name}: forced {forced.agreement:.3f}, max step {forced.max_steps}, "
                            f"{forced.fraction:.1e} of elements differ locally")
        if not random:
            if free.agreement < EMBEDDED_TARGET or acc.accuracy_gap_images > 1:
                failures.append(f"{name}: free agreement {free.agreement:.3f}, gap {acc.accuracy_gap_images} images")
            return
        worse = 1 - min(floor)  # type: ignore[arg-type]
        if 1 - free.agreement > 2 * worse + 1 / free.images:
            failures.append(f"{name}: free disagreement {1 - free.agreement:.3f} > 2x the noise floor {worse:.3f}")
        if free.agreement < RANDOM_GOAL:
            goal_missed.append(name)

    digits = load_digits()
    for name in ("digits-mobilenet", "digits-resnet"):
        loaded = load_model(name)
        layers = describe(loaded.module, loaded.input_shape)
        ev = Evaluator(loaded.module, digits, None, layers, compile=False)
        searched = haq.search(model=name, hardware="bitfusion", method="random", max_evaluations=6, seed=0,
                              budget=("latency=0.7",)).best_policy.matched_to(layers)
        for label, pol in (("uniform 8", Policy.uniform(layers, 8)), ("uniform 4", Policy.uniform(layers, 4)),
                           ("searched", searched)):
            row(name, label, ev, pol, random=False)
    for arch in ("resnet18", "mobilenet_v2"):
        ev, layers = random_network(arch, images)
        for label, pol in (("uniform 8", Policy.uniform(layers, 8)), ("mixed", mixed_policy(layers))):
            row(f"{arch} 64x64 random", label, ev, pol, random=True)
    print(f"\ntargets: embedded free >= {100 * EMBEDDED_TARGET:.1f} % and accuracy within one image; forced >= "
          f"{100 * FORCED_TARGET:.0f} % with one-step local differences on <= {LOCAL_FRACTION:.0e} of elements; "
          "random nets' free disagreement <= 2x the worse noise floor")
    print(f"goal >= {100 * RANDOM_GOAL:.0f} % free-running on the random torchvision networks: "
          + (f"missed for {', '.join(goal_missed)} (their float noise floor is below it)" if goal_missed else "met"))
    print(f"{time.perf_counter() - start:.0f} s")
    for f in failures:
        print("MISSED:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
