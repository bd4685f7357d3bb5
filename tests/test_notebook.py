"""The analysis notebook runs top to bottom on a real run directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from haq.config import SearchConfig
from haq.runs import run_search

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "notebooks" / "analyse_policy.ipynb"


@pytest.mark.slow
def test_analyse_policy_notebook_executes_on_a_run(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbconvert.preprocessors import ExecutePreprocessor

    run = tmp_path / "run"
    run_search(SearchConfig(method="uniform", hardware="bismo-edge", budget=("latency=0.6",)), run)
    monkeypatch.setenv("HAQ_RUN", str(run))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    ExecutePreprocessor(timeout=300, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(NOTEBOOK.parent)}})
    outputs = "".join(str(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "valid for bismo-edge" in outputs
    assert (run / "plots" / "bitwidths_notebook.png").is_file()
    assert os.environ["HAQ_RUN"] == str(run)
