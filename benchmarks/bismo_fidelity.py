"""How well ``bismo-cloud`` reproduces HAQ's released MobileNetV2 cloud latency table.

Prints, from one run: Spearman rank correlation over all 53x8x8 entries and per layer kind,
the uniform W8A8 / W4A4 latency ratio (ours vs the table), the per-entry and per-layer error,
the time to build a cost table, and uniform 8- and 4-bit latency of torchvision MobileNetV2
and ResNet-50 on ``bismo-edge`` and ``bismo-cloud``. Exits 1 when a target fails: Spearman
>= 0.9 and the ratio within 20 % of the table's.

    python benchmarks/bismo_fidelity.py           # full
    python benchmarks/bismo_fidelity.py --quick   # MobileNetV2 only (CI)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from scipy.stats import spearmanr

from haq.layers import LayerSpec, describe
from haq.simulators import get_hardware

TABLE_NAME = "haq_mobilenetv2_cloud_latency_lut.npy"
REPO = Path(__file__).resolve().parents[1]
CANDIDATE_TABLES = (REPO.parent / "shared" / "reference" / TABLE_NAME, REPO / "tests" / "data" / TABLE_NAME)
MIN_SPEARMAN, MAX_RATIO_ERROR = 0.9, 0.2


def torchvision_layers(arch: str) -> list[LayerSpec]:
    """Layer shapes of a torchvision model at 224x224, built on the meta device (no weights)."""
    with torch.device("meta"):
        model = getattr(torchvision.models, arch)()
    return describe(model, (3, 224, 224))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 only, fewer timing repeats")
    parser.add_argument("--table", type=Path, default=None, help="path of HAQ's (53, 8, 8) table")
    args = parser.parse_args(argv)

    path = args.table or next((p for p in CANDIDATE_TABLES if p.exists()), None)
    if path is None:
        print(f"HAQ table {TABLE_NAME} not found in {[str(p) for p in CANDIDATE_TABLES]}", file=sys.stderr)
        return 2
    table = np.load(path).astype(np.float64)  # [layer, w-1, a-1], cycles
    mnv2 = torchvision_layers("mobilenet_v2")
    cloud = get_hardware("bismo-cloud")
    ours = cloud.cycles(mnv2, batch=16)
    print(f"HAQ table: {path} {table.shape}; ours: bismo-cloud cycles at batch 16")

    # -- rank agreement -------------------------------------------------------------------
    rho = spearmanr(ours.ravel(), table.ravel()).correlation
    print(f"\nSpearman, all {table.size} entries: {rho:.4f}   (target >= {MIN_SPEARMAN}, goal 0.95)")
    kinds = np.array([s.kind for s in mnv2])
    for kind in ("conv", "depthwise", "linear"):
        sel = kinds == kind
        r = spearmanr(ours[sel].ravel(), table[sel].ravel()).correlation
        print(f"  {kind:9s} {sel.sum():2d} layers: {r:.4f}")
    per_layer = np.array([spearmanr(ours[i].ravel(), table[i].ravel()).correlation for i in range(len(mnv2))])
    print(f"  within one layer (64 bit pairs): median {np.median(per_layer):.4f}, min {per_layer.min():.4f}")

    # -- the memory-boundness check: uniform W8A8 / W4A4 --------------------------------
    ratio_ours = ours[:, 7, 7].sum() / ours[:, 3, 3].sum()
    ratio_table = table[:, 7, 7].sum() / table[:, 3, 3].sum()
    ratio_err = ratio_ours / ratio_table - 1
    print(
        f"\nW8A8 / W4A4 whole model: ours {ratio_ours:.3f}, table {ratio_table:.3f} ({ratio_err:+.1%}; target within 20%)"
    )

    # -- error -----------------------------------------------------------------------------
    rel = ours / table
    err = np.abs(rel - 1)
    print(
        f"\nours / table per entry: median {np.median(rel):.3f}; |error| median {np.median(err):.1%}, "
        f"p90 {np.percentile(err, 90):.1%}, max {err.max():.1%}"
    )
    for bits in (8, 4, 2, 1):
        r = rel[:, bits - 1, bits - 1]
        print(
            f"  uniform W{bits}A{bits}: per-layer ours/table {r.min():.3f}..{r.max():.3f}, "
            f"whole model {ours[:, bits - 1, bits - 1].sum() / table[:, bits - 1, bits - 1].sum():.3f}"
        )
    worst = np.argsort(-np.abs(np.log(rel)).mean(axis=(1, 2)))[:5]
    print("  worst layers (mean |log ratio|):")
    for i in worst:
        s = mnv2[i]
        print(
            f"    {i:2d} {s.name:22s} {s.kind:9s} {s.in_channels:4d}->{s.out_channels:4d} k{s.kernel[0]} "
            f"{s.out_hw[0]:3d}x{s.out_hw[1]:<3d} ours/table {rel[i].min():.2f}..{rel[i].max():.2f}"
        )

    # -- cost of building a table --------------------------------------------------------
    repeats = 5 if args.quick else 20
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cloud.cost_table(mnv2)
        t.append(time.perf_counter() - t0)
    print(f"\ncost_table build, {len(mnv2)} layers: {1e3 * float(np.median(t)):.2f} ms (median of {repeats})")

    # -- uniform latency on both variants ------------------------------------------------
    models = (
        {"mobilenet_v2": mnv2}
        if args.quick
        else {"mobilenet_v2": mnv2, "resnet50": torchvision_layers("resnet50")}
    )
    print("\nuniform latency (ms per batch / per image); energy: not modelled (None)")
    for name in ("bismo-edge", "bismo-cloud"):
        hw = get_hardware(name)
        for arch, layers in models.items():
            ct = hw.cost_table(layers)
            n = len(layers)
            lat = {b: ct.cost(np.full(n, b), np.full(n, b))[0] for b in (8, 4)}
            stages = hw.stage_cycles(layers)
            bound = _binding_stage(stages)
            print(
                f"  {name:11s} {arch:12s} batch {ct.batch:2d}: W8A8 {lat[8]:8.2f} / {lat[8] / ct.batch:7.2f}  "
                f"W4A4 {lat[4]:8.2f} / {lat[4] / ct.batch:7.2f}  8/4 = {lat[8] / lat[4]:.2f}  "
                f"W8A8 layers bound by {bound}"
            )

    ok = rho >= MIN_SPEARMAN and abs(ratio_err) <= MAX_RATIO_ERROR
    print(
        f"\n{'PASS' if ok else 'FAIL'}: Spearman {rho:.4f} >= {MIN_SPEARMAN}, ratio error {ratio_err:+.1%} within 20%"
    )
    return 0 if ok else 1


def _binding_stage(stages: dict[str, np.ndarray]) -> str:
    """Count of layers whose largest stage at W8A8 is activation fetch, weight fetch or execute."""
    names = ("act_fetch", "weight_fetch", "execute")
    vol = np.stack([stages[k][:, 7, 7] for k in names])
    counts = np.bincount(vol.argmax(axis=0), minlength=3)
    return ", ".join(f"{k} {c}" for k, c in zip(("act", "weight", "exec"), counts, strict=True))


if __name__ == "__main__":
    sys.exit(main())
