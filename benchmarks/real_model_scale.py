"""Real models at real size: time and memory of the evaluator on ResNet-18/50 and MobileNetV2.

Per model, at 224x224 on a generated ImageFolder, on ``--device`` (cpu here; cuda on a lent
GPU, see gpu_check.sh):

* fp32 forward, ms per image (the unmodified model, eager, the same batches);
* one evaluation / fp32: a random mixed policy's evaluation over the validation split divided
  by the fp32 forward over it (the evaluator's overhead; goal <= 1.1 on CUDA);
* weight cache: seconds to build and MB held for every layer at 7 bitwidths (2-8; ResNet-50
  must stay under 2 GB);
* peak RSS of the process so far, MB.

    python benchmarks/real_model_scale.py                 # resnet18, resnet50, mobilenet_v2; 64 val images
    python benchmarks/real_model_scale.py --quick         # resnet18, mobilenet_v2; 16 val images (CI)
    python benchmarks/real_model_scale.py --device cuda --images 2000
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _imagefolder import make_imagefolder  # noqa: E402

from haq.api import make_problem, prepare  # noqa: E402
from haq.config import SearchConfig  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fp32_seconds(model: torch.nn.Module, x: torch.Tensor, batch: int, device: torch.device, repeats: int) -> float:
    model = model.to(device).eval()
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            sync(device)
            t = time.perf_counter()
            for s in range(0, len(x), batch):
                model(x[s : s + batch])
            sync(device)
            times.append(time.perf_counter() - t)
    return statistics.median(times[1:])  # the first is warm-up


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="resnet18 and mobilenet_v2, 40 images (16 validation)")
    ap.add_argument("--models", default=None, help="comma-separated torchvision names")
    ap.add_argument("--images", type=int, default=None, help="images generated (40%% become the validation split)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    models = (args.models or ("resnet18,mobilenet_v2" if args.quick else "resnet18,resnet50,mobilenet_v2")).split(",")
    images = args.images or (40 if args.quick else 160)
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"torch threads {torch.get_num_threads()}, device {args.device} (shared machine: timings are noisy)")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_imagefolder(Path(tmp) / "data", images, size=256)
        for name in models:
            cfg = SearchConfig(model=name, data=f"imagefolder:{root}", input_size=224, hardware="bitfusion",
                               method="random", budget=("latency=0.7",))
            t = time.perf_counter()
            ws = prepare(cfg, device=args.device)
            problem = make_problem(cfg, ws)
            ev = ws.evaluator
            device = ev.device
            prep_s = time.perf_counter() - t
            val = ws.data.val
            x = val.x.to(device)
            fp32 = fp32_seconds(ws.model.module, x, ev.batch_size, device, repeats)
            rng = np.random.default_rng(0)
            ev.evaluate(np.full(len(ws.layers), 8), np.full(len(ws.layers), 8))  # calibration, first call
            evals = []
            for _ in range(repeats):
                w = np.array([rng.choice(c) for c in problem.choices])
                a = np.array([rng.choice(c) for c in problem.choices])
                ev.evaluate(w, a)  # loads the policy's cached weights (first use quantizes them)
                sync(device)
                t = time.perf_counter()
                ev.evaluate(w, a)
                sync(device)
                evals.append(time.perf_counter() - t)
            one = statistics.median(evals)
            ev._w_cache.clear()  # time the whole build, from the float weights
            t = time.perf_counter()
            held = 0
            for i in range(len(ws.layers)):
                for b in range(2, 9):
                    held += ev._device_weight(i, b).numel() * 4
            sync(device)
            cache_s = time.perf_counter() - t
            params = sum(p.numel() for p in ws.model.module.parameters())
            print(f"{name}: {len(ws.layers)} layers, {params / 1e6:.1f} M parameters, {len(val)} validation images; "
                  f"prepare {prep_s:.1f} s")
            print(f"  fp32 forward: {fp32 / len(val) * 1e3:.1f} ms/image; one evaluation: {one / len(val) * 1e3:.1f} "
                  f"ms/image = {one / fp32:.2f}x fp32")
            print(f"  weight cache at 7 bitwidths: {held / 2**20:.0f} MB, built in {cache_s:.1f} s")
            print(f"  peak RSS so far: {peak_rss_mb():.0f} MB"
                  + (f"; peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB" if device.type == "cuda" else ""))
            del ws, ev, problem, x
    return 0


if __name__ == "__main__":
    sys.exit(main())
