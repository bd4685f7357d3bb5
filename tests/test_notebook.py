"""The analysis notebook runs top to bottom on a real run directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from haq.api import search
from haq.config import SearchConfig

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "notebooks" / "analyse_policy.ipynb"


@pytest.mark.slow
def test_analyse_policy_notebook_executes_on_a_run_and_writes_nothing_into_it(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbconvert.preprocessors import ExecutePreprocessor

    run = tmp_path / "run"
    search(SearchConfig(method="uniform", hardware="bismo-edge", budget=("latency=0.6",)), out=run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    monkeypatch.setenv("HAQ_RUN", str(run))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    ExecutePreprocessor(timeout=300, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(NOTEBOOK.parent)}})
    outputs = "".join(str(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "valid for bismo-edge" in outputs
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert os.environ["HAQ_RUN"] == str(run)


@pytest.mark.slow
def test_a_relative_haq_run_is_taken_from_the_repository_root(tmp_path, monkeypatch):
    """What the README says: HAQ_RUN=runs/<name>, though the kernel runs in experiments/notebooks."""
    nbformat = pytest.importorskip("nbformat")
    from nbconvert.preprocessors import ExecutePreprocessor

    root = NOTEBOOK.parents[2]
    run = root / "runs" / f"test-notebook-{os.getpid()}"
    try:
        search(SearchConfig(method="uniform", hardware="bismo-edge", budget=("latency=0.6",)), out=run)
        monkeypatch.setenv("HAQ_RUN", str(run.relative_to(root)))
        nb = nbformat.read(NOTEBOOK, as_version=4)
        ExecutePreprocessor(timeout=300, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(NOTEBOOK.parent)}})
    finally:
        import shutil

        shutil.rmtree(run, ignore_errors=True)
