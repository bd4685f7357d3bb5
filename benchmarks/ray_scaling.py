"""Evaluations per second of an evaluation-bound problem in-process and on Ray workers.

ResNet-18 at 112x112 on a generated ImageFolder: random bit policies measured (1) in this
process with one torch thread, (2) on a Ray pool of 1 worker and (3) of 2 workers (one torch
thread each), the second pass over the policies timed (the first fills the weight caches).
Prints evaluations/s of each, the speed-up of 2 workers over 1 (goal >= 1.8x
on 2 free cores) and Ray's overhead per evaluation (Ray with 1 worker vs in-process, ms).
The accuracies of the three are checked equal (results never depend on the pool).

    python benchmarks/ray_scaling.py            # 64 validation images, 24 policies
    python benchmarks/ray_scaling.py --quick    # 16 images, 8 policies (CI)
"""

from __future__ import annotations

import argparse
import os
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
from haq.pool import InProcessPool  # noqa: E402


def timed(pool, items) -> tuple[float, list[float]]:
    """Seconds of the second pass over ``items`` (the first fills the weight caches, as the
    first evaluations of a search do) and its accuracies."""
    list(pool.measure(items))
    t = time.perf_counter()
    accs = list(pool.measure(items))
    return time.perf_counter() - t, accs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small: 16 validation images, 8 policies")
    ap.add_argument("--policies", type=int, default=None)
    ap.add_argument("--size", type=int, default=112)
    args = ap.parse_args()
    try:
        import ray
    except ImportError:
        print("ray is not installed: pip install 'haq[ray]'")
        return 1
    n_policies = args.policies or (8 if args.quick else 24)
    images = 40 if args.quick else 160  # calib/val/test 20/40/40 %: 16 or 64 validation images
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_imagefolder(Path(tmp) / "data", images, size=args.size)
        cfg = SearchConfig(model="resnet18", data=f"imagefolder:{root}", input_size=args.size, hardware="bitfusion",
                           method="random", budget=("latency=0.7",))
        ws = prepare(cfg, device="cpu")
        problem = make_problem(cfg, ws)
        rng = np.random.default_rng(0)
        items = [(np.array([rng.choice(c) for c in problem.choices]), np.array([rng.choice(c) for c in problem.choices]),
                  ws.evaluator.scheme) for _ in range(n_policies)]
        ws.evaluator.accuracies(items[:1])  # calibration statistics and first-call costs, not timed
        print(f"problem: resnet18 at {args.size}x{args.size}, {len(ws.data.val)} validation images, "
              f"{n_policies} random policies, {os.cpu_count()} cores (shared machine: timings are noisy)")
        local_s, local = timed(InProcessPool(ws.evaluator), items)
        print(f"in-process, 1 thread: {n_policies / local_s:.2f} evaluations/s ({local_s / n_policies * 1e3:.0f} ms each)")
        from haq.ray_pool import RayPool

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            rates = {}
            for workers in (1, 2):
                t = time.perf_counter()
                pool = RayPool(ws.evaluator, workers=workers)
                start_s = time.perf_counter() - t
                s, accs = timed(pool, items)
                pool.close()
                if accs != local:
                    print(f"ray {workers} workers: accuracies differ from in-process: {accs} vs {local}")
                    return 1
                rates[workers] = n_policies / s
                print(f"ray, {workers} worker(s): {rates[workers]:.2f} evaluations/s ({s / n_policies * 1e3:.0f} ms each; "
                      f"workers started in {start_s:.1f} s)")
                if workers == 1:
                    print(f"ray overhead per evaluation (1 worker vs in-process): {(s - local_s) / n_policies * 1e3:.1f} ms")
        finally:
            ray.shutdown()
        speedup = rates[2] / rates[1]
        print(f"speed-up 2 workers / 1 worker: {speedup:.2f}x (goal >= 1.8x on 2 free cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
