"""What one policy evaluation costs, relative to the plain float forward pass (design §4).

Prints, measured in one run on the same validation split, for the default model
(``digits-mobilenet`` on digits, 359 images) and for ResNet-18 at 64x64 (random weights, a
generated 256-image split; MobileNetV2 at 64x64 too in the full run):

* time of one evaluation of a random mixed policy (caches warm) / time of the eager fp32
  forward pass of the original model (BatchNorm unfolded, same batches), eager and compiled.
  Each round times every variant back to back (a small model's pass repeated to ~0.25 s,
  a new policy each time), the order rotating between rounds; printed is the median over
  rounds of the per-round ratio, in wall-clock time and in this process's CPU time (less
  sensitive to other processes on a shared machine; with --threads 1 the honest compute
  ratio);
* the one-time costs in seconds - training, calibration (collected / read back from disk),
  the weight cache, compilation (inductor's disk cache cold unless --warm-cache) - and how
  many evaluations pay for the compilation;
* recompilations after warm-up (must be 0) and whether compiled accuracy equals eager.

Targets: compiled <= 1.1x eager fp32 (design §4) on every model, 0 recompilations, compiled
accuracy == eager. Exits 1 on a recompilation, an accuracy mismatch, or a wall-clock ratio
above 1.3 (design §11's CI bound; noisy shared CI machines need the slack).

    python benchmarks/eval_overhead.py            # full: 9 rounds, + MobileNetV2, retrains digits
    python benchmarks/eval_overhead.py --quick    # CI: 5 rounds, 128-image ResNet-18 split
    python benchmarks/eval_overhead.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

# a cold inductor cache, so the compile time printed is what a first run pays
if "--warm-cache" not in sys.argv:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="haq-inductor-")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

from haq.data import DataSplits, Split, load_digits  # noqa: E402
from haq.quant.evaluator import Evaluator  # noqa: E402
from haq.quant.runner import graphs_compiled  # noqa: E402

TARGET, CI_LIMIT = 1.1, 1.3
MIN_SAMPLE_S = 0.25  #: a timed sample repeats a small model's pass until it lasts about this long
INT_BITS = (2, 3, 4, 5, 6, 7, 8)


def generated(shape: tuple[int, int, int], n: int, seed: int = 0) -> DataSplits:
    g = torch.Generator().manual_seed(seed)

    def split(k: int) -> Split:
        return Split(torch.randn(k, *shape, generator=g), torch.randint(0, 10, (k,), generator=g))

    return DataSplits("generated", shape, 10, split(min(n, 128)), split(n), split(n))


def fp32_pass(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            model(x[s : s + batch_size])


def median(xs: list[float]) -> float:
    return float(np.median(xs))


def bench(name: str, model: nn.Module, data: DataSplits, rounds: int, train_s: float | None, train_note: str) -> dict:
    row: dict = {"model": name, "images": len(data.val), "train_s": train_s, "train_note": train_note}
    t = time.perf_counter()
    eager = Evaluator(model, data, compile=False)
    row["build_s"] = time.perf_counter() - t
    n = len(eager.layers)
    row["layers"] = eager.layers
    t = time.perf_counter()
    eager.activation_range(0, 8)  # collects the statistics (fresh cache folder)
    row["calib_s"], row["calib_src"] = time.perf_counter() - t, eager.calibration_source
    compiled = Evaluator(model, data, compile=True)
    t = time.perf_counter()
    compiled.activation_range(0, 8)  # new evaluator family: reads them back from disk
    row["calib_disk_s"], row["calib_disk_src"] = time.perf_counter() - t, compiled.calibration_source
    for k, ev in enumerate((eager, compiled)):  # warm the weight and activation-parameter caches
        t = time.perf_counter()
        for b in INT_BITS:
            for i in range(n):
                ev.quantized_weight(i, b)
                ev._act_params(i, b)
        if k == 0:
            row["weight_cache_s"] = time.perf_counter() - t
    rng = np.random.default_rng(0)
    policies = [(rng.choice(INT_BITS, n), rng.choice(INT_BITS, n)) for _ in range(32)]
    compiled.evaluate(*policies[0])  # compiles
    row["compile_s"], row["compile_error"] = compiled.compile_seconds, compiled.compile_error
    row["path"] = compiled.execution
    compiled.evaluate(*policies[1])  # warm
    count, graphs = compiled.compile_count, graphs_compiled()
    bs = eager.batch_size
    x = data.val.x
    t = time.perf_counter()
    fp32_pass(model, x, bs)
    inner = max(1, round(MIN_SAMPLE_S / max(time.perf_counter() - t, 1e-4)))  # repeats per sample
    wall: dict[str, list[float]] = {"fp32": [], "eager": [], "compiled": []}
    cpu: dict[str, list[float]] = {"fp32": [], "eager": [], "compiled": []}
    mismatches = evaluations = 0
    for r in range(rounds):
        # rotate the order so no variant always runs first or last in a round
        order = [("fp32", None), ("eager", eager), ("compiled", compiled)]
        order = order[r % 3 :] + order[: r % 3]
        accs: dict[str, list[float]] = {"eager": [], "compiled": []}
        for key, ev in order:
            t0, c0 = time.perf_counter(), time.process_time()
            for k in range(inner):
                if ev is None:
                    fp32_pass(model, x, bs)
                else:
                    accs[key].append(ev.evaluate(*policies[(r * inner + k) % len(policies)]))
            wall[key].append((time.perf_counter() - t0) / inner)
            cpu[key].append((time.process_time() - c0) / inner)
        mismatches += sum(e != c for e, c in zip(accs["eager"], accs["compiled"], strict=True))
        evaluations += inner
    for clock, times in (("wall", wall), ("cpu", cpu)):
        for key in ("eager", "compiled"):
            row[f"{key}_{clock}"] = median([t / f for t, f in zip(times[key], times["fp32"], strict=True)])
    row["fp32_ms"] = median(wall["fp32"]) * 1e3
    row["eager_ms"] = median(wall["eager"]) * 1e3
    row["compiled_ms"] = median(wall["compiled"]) * 1e3
    saving = (median(wall["eager"]) - median(wall["compiled"]))
    row["amortise"] = row["compile_s"] / saving if saving > 0 else float("inf")
    row["recompiles"] = (compiled.compile_count - count) + (graphs_compiled() - graphs)
    row["mismatches"], row["rounds"], row["inner"], row["evaluations"] = mismatches, rounds, inner, evaluations
    return row


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI: fewer rounds, a smaller ResNet-18 split")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per model (median)")
    p.add_argument("--warm-cache", action="store_true", help="keep inductor's disk cache (compile time then is a re-run's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (5 if args.quick else 9)
    from haq.cache import cache_dir
    from haq.models import load_model

    t = time.perf_counter()
    digits_model = load_model("digits-mobilenet").module
    load_s = time.perf_counter() - t
    if args.quick:
        train_s, note = None, f"cached ({load_s:.1f} s to load or train)"
    else:
        from haq.digits_models import TrainRecipe, train_digits_model

        t = time.perf_counter()
        train_digits_model(TrainRecipe("digits-mobilenet"))
        train_s, note = time.perf_counter() - t, "trained now (cached after first use)"
    # calibration statistics into a fresh folder, so their collection is measured
    os.environ["HAQ_CACHE_DIR"] = tempfile.mkdtemp(prefix="haq-bench-")
    cache_dir()
    load = os.getloadavg()
    print(f"eval_overhead: torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, {rounds} interleaved rounds, "
          f"inductor cache {'warm' if args.warm_cache else 'cold'}", flush=True)
    rows = [bench("digits-mobilenet", digits_model, load_digits(), rounds, train_s, note)]
    _print_row(rows[-1])
    res = generated((3, 64, 64), 128 if args.quick else 256)
    rows.append(bench("resnet18@64", torchvision.models.resnet18(num_classes=10).eval(), res, rounds, None, "random weights"))
    _print_row(rows[-1])
    if not args.quick:
        mbv2 = torchvision.models.mobilenet_v2(num_classes=10).eval()
        rows.append(bench("mobilenet_v2@64", mbv2, res, rounds, None, "random weights"))
        _print_row(rows[-1])
    return _summary(rows)


def _print_row(r: dict) -> None:
    train = f"{r['train_s']:.1f} s {r['train_note']}" if r["train_s"] is not None else r["train_note"]
    print(f"\n{r['model']} ({r['images']} images, {len(r['layers'])} layers, path: {r['path']}; "
          f"{r['rounds']} rounds x {r['inner']} passes, {r['evaluations']} random mixed policies timed)", flush=True)
    print(f"  one-time: training {train}; build {r['build_s']:.1f} s; calibration {r['calib_s']:.1f} s "
          f"({r['calib_src']}), {r['calib_disk_s']:.2f} s ({r['calib_disk_src']}); weight cache (7 bitwidths) {r['weight_cache_s']:.2f} s; "
          f"compile {r['compile_s']:.1f} s{' (' + r['compile_error'] + ')' if r['compile_error'] else ''}")
    print(f"  per evaluation (median wall): fp32 {r['fp32_ms']:.1f} ms, eager {r['eager_ms']:.1f} ms, "
          f"compiled {r['compiled_ms']:.1f} ms", flush=True)


def _summary(rows: list[dict]) -> int:
    head = (f"{'model':<18}{'eager/fp32':>11}{'(cpu)':>7}{'compiled/fp32':>15}{'(cpu)':>7}{'target':>8}"
            f"{'compile s':>11}{'amortised after':>17}{'recompiles':>12}{'acc equal':>11}")
    print("\n" + head + "\n" + "-" * len(head))
    failed = False
    for r in rows:
        ok = r["compiled_wall"] <= TARGET
        amort = f"{r['amortise']:.0f} evals" if np.isfinite(r["amortise"]) else "never"
        print(f"{r['model']:<18}{r['eager_wall']:>10.2f}x{r['eager_cpu']:>6.2f}x{r['compiled_wall']:>14.2f}x"
              f"{r['compiled_cpu']:>6.2f}x{'PASS' if ok else 'MISS':>8}{r['compile_s']:>11.1f}{amort:>17}"
              f"{r['recompiles']:>12}{'yes' if r['mismatches'] == 0 else 'NO (' + str(r['mismatches']) + ')':>11}")
        failed |= r["recompiles"] > 0 or r["mismatches"] > 0 or r["compiled_wall"] > CI_LIMIT or r["path"] != "compiled"
    print(f"\ntarget compiled/fp32 <= {TARGET} (wall, median of interleaved rounds); CI fails above {CI_LIMIT}, "
          "on any recompilation or accuracy mismatch")
    print("compile='auto' compiles once the eager evaluations have taken compile_cost_s / 0.2 (default 150 s) in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
