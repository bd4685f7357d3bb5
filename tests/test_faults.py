"""Nothing lost, nothing cryptic (issue 12): every bad input a careless user tried is one
line and exit 2; a full disk at any write of a search leaves a valid run directory that
``--resume`` finishes identically; torn files are dropped, not appended to; a measurement
that yields NaN is recorded as a failed trial and never reaches policy.json."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import haq.atomic
from haq.errors import SearchError
from haq.history import HISTORY_COLUMNS, read_history, read_history_rows
from tests.conftest import run_cli


def one_line_error(result, *needles: str) -> str:
    """The CLI failed as a user error: exit 2, one line on stderr, no traceback."""
    err = result.stderr
    assert result.returncode == 2, (result.returncode, err)
    assert err.startswith("haq: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


SEARCH = ("search", "--method", "random", "--hardware", "bismo-edge", "--budget", "latency=0.6",
          "--max-evaluations", "5", "--seed", "1", "-q")


# ----- pinned regressions: each input of the issue ------------------------------------------------
@pytest.fixture(scope="module")
def junk(tmp_path_factory):
    d = tmp_path_factory.mktemp("junk")
    (d / "deep.json").write_text("[" * 100_000)
    (d / "text.txt").write_text("hello\n")
    (d / "adir").mkdir()
    other = {"format": "haq-policy/1", "model": "digits-resnet",
             "layers": [{"name": "x", "w_bits": 8, "a_bits": 8}]}
    (d / "other-model.json").write_text(json.dumps(other))
    out = json.loads(run_cli("cost", "--policy", "uniform:8", "--json", "--per-layer").stdout)
    layers = [{"name": r["name"], "kind": "linear", "w_bits": 8, "a_bits": 8} for r in out["layers"]]
    (d / "wrong-kind.json").write_text(json.dumps({"format": "haq-policy/1", "model": "digits-mobilenet",
                                                   "layers": layers}))
    return d


@pytest.mark.parametrize("args, needles", [
    (("cost", "--policy", "{junk}/deep.json"), ["nested too deeply"]),
    (("search", "--model", "os.path:join", "--out", "{tmp}/o"), ["calling join() failed", "no arguments"]),
    (("search", "--model", "haq.models:EMBEDDED", "--out", "{tmp}/o"), ["not a factory"]),
    (("search", "--method", "rl", "--option", "warmup_episodes=abc", "--out", "{tmp}/o"), ["must be an integer"]),
    (("search", "--budget", "latency=1e309", "--out", "{tmp}/o"), ["must be finite"]),
    (("search", "--budget", "size=1e308GiB", "--out", "{tmp}/o"), ["must be finite"]),
    (("search", "--budget", "latency=-1", "--out", "{tmp}/o"), ["must be positive"]),
    (("search", "--budget", "latency=0", "--out", "{tmp}/o"), ["must be positive"]),
    (("evaluate", "--policy", "uniform:8", "--input-size", "0"), ["--input-size 0", "positive"]),
    (("cost", "--input-size", "-3"), ["--input-size -3", "positive"]),
    (("search", "--data", "imagefolder:", "--out", "{tmp}/o"), ["imagefolder:PATH"]),
    (("search", "--data", "imagefolder:{junk}/text.txt", "--out", "{tmp}/o"), ["is a file, not a folder"]),
    (("cost", "--policy", "{junk}/adir"), ["is a directory"]),
    (("cost", "--weights", "{junk}/text.txt"), ["not a torch archive"]),
    (("cost", "--weights", "{junk}/adir"), ["is a directory"]),
    (("cost", "--policy", "{junk}/other-model.json"), ["made for model 'digits-resnet'"]),
    (("cost", "--policy", "{junk}/wrong-kind.json"), ["is a linear layer, the model's is conv"]),
])
def test_each_bad_input_of_the_issue_is_one_line_and_leaves_no_run_directory(junk, tmp_path, args, needles):
    args = tuple(a.format(junk=junk, tmp=tmp_path) for a in args)
    err = one_line_error(run_cli(*args, "-q") if args[0] == "search" else run_cli(*args), *needles)
    assert ": 101" not in err
    assert not (tmp_path / "o").exists()  # a failed start leaves --out as it was


def test_an_imagefolder_with_the_one_channel_digits_model_says_input_size_cannot_fix_it(tmp_path):
    from PIL import Image

    for c in "ab":
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((12, 12, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    err = one_line_error(run_cli(*SEARCH, "--data", f"imagefolder:{tmp_path / 'imgs'}", "--out", str(tmp_path / "o")),
                         "takes 1-channel images", "3-channel", "cannot change that")
    assert "pass the input size" not in err
    assert not (tmp_path / "o").exists()


def test_comma_separated_budget_items_are_two_budgets_as_documented(tmp_path):
    from haq.budget import Budget

    assert Budget.parse(["latency=0.7ms,energy=1"]).keys == ("latency", "energy")
    assert Budget.parse("latency=0.7ms,energy=1") == Budget.parse(["latency=0.7ms", "energy=1"])
    help_text = run_cli("search", "--help").stdout
    assert "separate by commas" in " ".join(help_text.split())


def test_a_run_directory_in_use_is_refused_without_advising_resume(tmp_path):
    run = tmp_path / "run"
    assert run_cli(*SEARCH, "--out", str(run)).returncode == 0
    (run / ".lock").write_text(str(os.getppid()))  # another live process works in it
    for extra in ((), ("--resume",)):
        err = one_line_error(run_cli(*SEARCH, "--out", str(run), *extra), "in use by a running search")
        assert "--resume" not in err


def test_plot_of_a_run_with_only_a_header_says_so_in_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text(",".join(HISTORY_COLUMNS) + "\n")
    one_line_error(run_cli("plot", str(run)), "no trials yet")
    assert not (run / "plots").exists()


@pytest.mark.parametrize("failed_start", [
    ("--budget", "latency=0.01"),           # unreachable
    ("--pin", "nosuchlayer"),               # bad pin
    ("--model", "nosuchnet"),               # unknown model
    ("--option", "nosuchoption=1"),         # unknown option
    ("--hardware", "nosuchhw"),             # unknown hardware
    ("--data", "imagefolder:/nonexistent"),  # missing data
])
def test_a_failed_start_leaves_out_as_it_was_and_the_fixed_command_then_runs(tmp_path, failed_start):
    run = tmp_path / "run"
    one_line_error(run_cli(*SEARCH, "--out", str(run), *failed_start))
    assert not run.exists()
    assert run_cli(*SEARCH, "--out", str(run)).returncode == 0


# ----- disk faults: ENOSPC at every write of a search --------------------------------------------
class DiskFull:
    """Counts the low-level writes (haq.atomic._write) and fails the ``fail_at``-th one with
    ENOSPC, as a full disk would; ``fail_at=None`` only counts."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at, self.calls, self.real = fail_at, 0, haq.atomic._write

    def __call__(self, f, data):
        k, self.calls = self.calls, self.calls + 1
        if k == self.fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.real(f, data)


def check_valid_run_dir(run: Path) -> None:
    """What a valid (possibly unfinished) run directory holds: parseable config.json, a
    history.csv with its header and no torn line, whole JSON files, no temp files."""
    assert (run / "config.json").is_file()
    json.loads((run / "config.json").read_text())
    if (run / "history.csv").is_file():
        header, _rows, torn = read_history_rows(run / "history.csv")
        assert header == HISTORY_COLUMNS and not torn
    for name in ("policy.json", "result.json"):
        if (run / name).is_file():
            json.loads((run / name).read_text())
    assert not [p for p in run.rglob("*.tmp")], list(run.rglob("*.tmp"))
    assert not (run / ".lock").exists()


def disk_fault_points(monkeypatch, tmp_path, args: tuple[str, ...]) -> tuple[int, dict, list[float]]:
    """Run ``args`` once (warming caches), then count its writes; return the count and the
    uninterrupted result (policy layers, history accuracies)."""
    assert run_cli(*args, "--out", str(tmp_path / "warm")).returncode == 0
    counter = DiskFull()
    monkeypatch.setattr(haq.atomic, "_write", counter)
    assert run_cli(*args, "--out", str(tmp_path / "ref")).returncode == 0
    monkeypatch.setattr(haq.atomic, "_write", counter.real)
    ref = tmp_path / "ref"
    return counter.calls, json.loads((ref / "policy.json").read_text()), list(read_history(ref)["accuracy"])


def run_with_disk_full_at(monkeypatch, tmp_path, args, k: int, ref_policy, ref_acc) -> None:
    run = tmp_path / f"k{k}"
    monkeypatch.setattr(haq.atomic, "_write", DiskFull(fail_at=k))
    err = one_line_error(run_cli(*args, "--out", str(run)), "disk full writing", str(tmp_path), "--resume")
    monkeypatch.setattr(haq.atomic, "_write", DiskFull().real)
    if not (run / "config.json").exists():  # the start itself failed: --out is left as it was
        assert not run.exists(), err
        assert run_cli(*args, "--out", str(run)).returncode == 0
    else:
        check_valid_run_dir(run)
        assert run_cli(*args, "--out", str(run), "--resume").returncode == 0
    check_valid_run_dir(run)
    got = json.loads((run / "policy.json").read_text())
    assert got["layers"] == ref_policy["layers"]
    assert got["metrics"]["accuracy"] == ref_policy["metrics"]["accuracy"]
    assert list(read_history(run)["accuracy"]) == ref_acc


def test_a_full_disk_at_any_write_of_a_search_is_one_line_and_resume_gives_the_same_result(monkeypatch, tmp_path):
    n, ref_policy, ref_acc = disk_fault_points(monkeypatch, tmp_path, SEARCH)
    # lock, config, history header, 5 rows, policy, pareto, summary, 3 plots, result.json
    assert n >= 15
    for k in range(n):
        run_with_disk_full_at(monkeypatch, tmp_path, SEARCH, k, ref_policy, ref_acc)


RL = ("search", "--method", "rl", "--hardware", "bismo-edge", "--budget", "latency=0.5", "--episodes", "4",
      "--option", "warmup_episodes=2", "--option", "checkpoint_every=2", "--seed", "2", "-q")


@pytest.mark.slow
def test_a_full_disk_at_any_write_of_an_rl_search_with_checkpoints_resumes_to_the_same_result(monkeypatch, tmp_path):
    n, ref_policy, ref_acc = disk_fault_points(monkeypatch, tmp_path, RL)
    assert n >= 4 + 2 * 3 + 9  # 4 rows, 2 checkpoints (agent, replay, state), lock/config/header and the results
    for k in range(n):
        run_with_disk_full_at(monkeypatch, tmp_path, RL, k, ref_policy, ref_acc)


def test_a_full_disk_at_the_first_write_leaves_no_header_less_history(monkeypatch, tmp_path):
    from haq.runs import HistoryWriter

    monkeypatch.setattr(haq.atomic, "_write", DiskFull(fail_at=0))
    with pytest.raises(haq.errors.StorageError, match="disk full writing .*history.csv"):
        HistoryWriter(tmp_path / "history.csv")
    assert not (tmp_path / "history.csv").exists()


def test_an_append_that_fails_half_way_leaves_the_file_as_it_was(monkeypatch, tmp_path):
    path = tmp_path / "log.csv"
    haq.atomic.append_line(path, "a,b")

    def half(f, data):
        f.write(data[:2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(haq.atomic, "_write", half)
    with pytest.raises(haq.errors.StorageError, match="disk full"):
        haq.atomic.append_line(path, "c,d")
    assert path.read_text() == "a,b\n"


# ----- torn files ----------------------------------------------------------------------------------
def test_a_torn_last_history_line_is_dropped_on_resume_and_plot_reads_it(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert run_cli(*SEARCH, "--out", str(ref)).returncode == 0
    assert run_cli(*SEARCH, "--out", str(run)).returncode == 0
    text = (run / "history.csv").read_text()
    (run / "history.csv").write_text(text[: text.index("\n", text.index("\n") + 1) + 1] + text.splitlines()[2][:17])
    (run / "result.json").unlink()
    (run / "policy.json").unlink()
    assert len(read_history(run)) == 1  # the torn row is left out, not a ParserError
    assert run_cli("plot", str(run)).returncode == 0
    assert run_cli(*SEARCH, "--out", str(run), "--resume").returncode == 0
    check_valid_run_dir(run)
    h, h_ref = pd.read_csv(run / "history.csv"), pd.read_csv(ref / "history.csv")
    assert list(h["trial"]) == list(range(5)) and list(h["accuracy"]) == list(h_ref["accuracy"])
    assert json.loads((run / "policy.json").read_text())["layers"] == json.loads((ref / "policy.json").read_text())["layers"]


def test_a_truncated_policy_json_is_one_line_for_plot_and_resume_rewrites_it(tmp_path):
    run = tmp_path / "run"
    assert run_cli(*SEARCH, "--out", str(run)).returncode == 0
    good = (run / "policy.json").read_text()
    (run / "policy.json").write_text(good[: len(good) // 2])
    one_line_error(run_cli("plot", str(run)), "not valid JSON")
    (run / "result.json").unlink()  # the crash came before the run was marked finished
    assert run_cli(*SEARCH, "--out", str(run), "--resume").returncode == 0
    assert json.loads((run / "policy.json").read_text())["layers"] == json.loads(good)["layers"]


@pytest.mark.parametrize("cut", ["state.json", "agent", "replay"])
def test_an_rl_checkpoint_cut_short_resumes_from_the_history_to_the_same_policy(tmp_path, cut):
    args = ("search", "--method", "rl", "--hardware", "bismo-edge", "--budget", "latency=0.5", "--episodes", "6",
            "--option", "warmup_episodes=2", "--option", "checkpoint_every=2", "--seed", "3", "-q")
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert run_cli(*args, "--out", str(ref)).returncode == 0
    assert run_cli(*args, "--out", str(run)).returncode == 0
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    victim = run / "checkpoint" / (cut if cut == "state.json" else state[cut])
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    (run / "result.json").unlink()
    assert run_cli(*args, "--out", str(run), "--resume").returncode == 0
    assert json.loads((run / "policy.json").read_text())["layers"] == json.loads((ref / "policy.json").read_text())["layers"]
    assert list(pd.read_csv(run / "history.csv")["accuracy"]) == list(pd.read_csv(ref / "history.csv")["accuracy"])


def test_a_history_from_before_the_status_column_still_reads_and_resumes(tmp_path):
    run = tmp_path / "run"
    assert run_cli(*SEARCH, "--out", str(run)).returncode == 0
    h = pd.read_csv(run / "history.csv").drop(columns=["status"])
    (run / "history.csv").write_text(h.iloc[:3].to_csv(index=False))
    (run / "result.json").unlink()
    assert len(read_history(run)) == 3
    assert run_cli(*SEARCH, "--out", str(run), "--resume").returncode == 0
    assert list(pd.read_csv(run / "history.csv").columns) == HISTORY_COLUMNS


# ----- numerical faults ----------------------------------------------------------------------------
class NaNFor:
    """A real evaluator whose accuracy is NaN for one policy (a forward pass that overflows)."""

    def __init__(self, inner, bad_w_bits: int) -> None:
        self.inner, self.bad, self.scheme = inner, bad_w_bits, inner.scheme

    def accuracies(self, items, split="val"):
        return [float("nan") if int(np.min(w)) == self.bad else self.inner.accuracies([(w, a, s)], split)[0]
                for w, a, s in items]

    def fp32_accuracy(self, split="val"):
        return self.inner.fp32_accuracy(split)

    def with_scheme(self, scheme):
        return self

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_nan_accuracy_is_recorded_as_a_failed_trial_and_stops_the_search(tmp_path):
    from haq.api import make_problem, method_options, prepare
    from haq.config import SearchConfig
    from haq.ledger import Ledger
    from haq.methods import get_method, run_method
    from haq.runs import HistoryWriter

    cfg = SearchConfig(method="uniform", hardware="bismo-edge", budget=("latency=1.0",), max_evaluations=8)
    ws = prepare(cfg)
    problem = make_problem(cfg, ws)
    writer = HistoryWriter(tmp_path / "history.csv")
    ledger = Ledger(problem, NaNFor(ws.evaluator, bad_w_bits=6), method="uniform", recorder=writer)
    with pytest.raises(SearchError, match="non-finite accuracy"):
        run_method(get_method("uniform"), problem, ledger, method_options(cfg))
    h = read_history(tmp_path)
    failed = h[h["status"].fillna("").str.startswith("failed")]
    assert len(failed) == 1 and failed["accuracy"].isna().all()
    assert "non-finite accuracy (nan)" in failed["status"].iloc[0]
    assert all(np.isfinite(t.accuracy) for t in ledger.trials)  # no NaN among committed trials
    again = HistoryWriter(tmp_path / "history.csv")  # a resumed run measures the failed trial anew
    assert len(again.existing) == len(h) and int(failed["trial"].iloc[0]) not in again.replay()


def test_no_nan_reaches_policy_json(tmp_path):
    from haq.policy import LayerBits, Policy

    p = Policy(layers=(LayerBits("a", "conv", 8, 8),), metrics={"accuracy": float("nan"), "latency_ms": float("inf")})
    p.save(tmp_path / "policy.json")
    text = (tmp_path / "policy.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["metrics"] == {"accuracy": None, "latency_ms": None}


def test_a_calibration_with_a_zero_range_quantizes_to_finite_values():
    import torch

    from haq.quant.quantizers import activation_params, quantize_weight

    w = torch.zeros(4, 3, 3, 3)
    for mode in ("symmetric", "asymmetric", "power-of-two"):
        for per_channel in (True, False):
            assert torch.isfinite(quantize_weight(w, 4, mode, per_channel)).all()
    for mode in ("asymmetric", "symmetric", "unsigned", "power-of-two"):
        assert all(np.isfinite(v) for v in activation_params(0.0, 0.0, 4, mode))


def test_a_hessian_probe_that_overflows_stops_hawq_in_one_line():
    import torch

    from haq.methods.hawq.hessian import hutchinson_traces

    class Overflow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) * 1e38 * 1e38

    model = Overflow()
    with pytest.raises(SearchError, match="not finite|cannot take its Hessian"):
        hutchinson_traces(model, [model.fc.weight], [(torch.randn(8, 4), torch.zeros(8, dtype=torch.int64))])


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["torn-unfinished", "header-only"])
def test_the_analysis_notebook_reads_an_unfinished_run_with_a_torn_history(tmp_path, monkeypatch, damage):
    nbformat = pytest.importorskip("nbformat")
    from nbconvert.preprocessors import ExecutePreprocessor

    notebook = Path(__file__).resolve().parents[1] / "experiments" / "notebooks" / "analyse_policy.ipynb"
    run = tmp_path / "run"
    assert run_cli(*SEARCH, "--out", str(run)).returncode == 0
    (run / "policy.json").unlink()
    (run / "result.json").unlink()
    text = (run / "history.csv").read_text()
    (run / "history.csv").write_text(text[: len(text) - 20] if damage == "torn-unfinished" else text.splitlines()[0] + "\n")
    monkeypatch.setenv("HAQ_RUN", str(run))
    nb = nbformat.read(notebook, as_version=4)
    ExecutePreprocessor(timeout=300, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(notebook.parent)}})
    outputs = "".join(str(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "has no policy.json yet" in outputs


def test_a_compare_that_fails_validation_leaves_out_as_it_was(tmp_path):
    out = tmp_path / "cmp"
    one_line_error(run_cli("compare", "--methods", "random,uniform", "--seeds", "1", "--hardware", "bismo-edge",
                           "--budget", "latency=0.01", "--max-evaluations", "3", "--out", str(out), "-q"),
                   "below the cheapest reachable")
    assert not out.exists()


def test_a_forward_pass_that_yields_nan_or_inf_measures_a_nan_accuracy_not_garbage(digits):
    import torch

    from haq.quant.runner import ForwardRunner

    class Blows(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 10)
            out[0, 3] = float("inf")  # one image overflows
            return out

    runner = ForwardRunner(Blows(), compile=False)
    assert np.isnan(runner.count_correct(digits.val.x, digits.val.y, 64))


def test_a_comparison_history_reads_whole_and_plots(tmp_path):
    out = tmp_path / "cmp"
    assert run_cli("compare", "--methods", "random,uniform", "--seeds", "2", "--hardware", "bismo-edge",
                   "--budget", "latency=0.6", "--max-evaluations", "3", "--out", str(out), "-q").returncode == 0
    assert read_history(out).equals(pd.read_csv(out / "history.csv"))  # trials restart per run: not "torn"
    assert run_cli("plot", str(out)).returncode == 0
