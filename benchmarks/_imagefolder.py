"""A generated ImageFolder for benchmarks: small random PNGs, one sub-folder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_imagefolder(root: Path, images: int, classes: int = 10, size: int = 64, seed: int = 0) -> Path:
    """Write ``images`` PNGs of ``size`` x ``size`` (RGB noise around a per-class colour) into
    ``root/class_k/``; returns ``root``. Existing files are reused."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (classes, 3))
    for i in range(images):
        k = i % classes
        path = root / f"class_{k}" / f"img_{i:05d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        noise = rng.normal(0, 40, (size, size, 3))
        pixels = np.clip(colours[k] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path)
    return root
