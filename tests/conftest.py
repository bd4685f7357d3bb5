"""Shared fixtures. The trained default models are cached in $HAQ_CACHE_DIR (the repo's
.cache/haq unless set), so only the first test session trains them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HAQ_CACHE_DIR", str(ROOT / ".cache" / "haq"))
os.environ.setdefault("MPLBACKEND", "Agg")

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def digits():
    from haq.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def mobilenet():
    from haq.models import load_model

    return load_model("digits-mobilenet")


@pytest.fixture(scope="session")
def resnet():
    from haq.models import load_model

    return load_model("digits-resnet")


@pytest.fixture(scope="session")
def mobilenet_evaluator(mobilenet, digits):
    from haq.quant.evaluator import Evaluator

    return Evaluator(mobilenet.module, digits)


def run_cli(*args: str, cwd: Path | None = None):
    """Run the real `haq` entry point in a subprocess; returns CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "haq.cli", *args], capture_output=True, text=True, cwd=cwd or ROOT, env=os.environ.copy()
    )
