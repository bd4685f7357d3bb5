"""The CLI as a user runs it: one JSON object with --json; one line and exit code 2 on bad input."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


def _one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_help_lists_the_commands_from_the_installed_entry_point():
    proc = run_cli("--help", subprocess=True)
    assert proc.returncode == 0
    for cmd in ("search", "compare", "evaluate", "cost", "profile", "plot", "list"):
        assert cmd in proc.stdout


@pytest.mark.parametrize("what", ["models", "data", "hardware", "methods"])
def test_list_shows_the_registries(what):
    proc = run_cli("list", what)
    assert proc.returncode == 0, proc.stderr
    expected = {"models": "digits-mobilenet", "data": "digits", "hardware": "bitfusion", "methods": "uniform"}[what]
    assert expected in proc.stdout


def test_list_options_names_every_method_option_with_its_default_and_meaning():
    from haq.methods import list_method_options

    rows = dict(list_method_options())
    assert rows["rl.warmup_episodes"].startswith("20 - episodes of uniform random actions")
    assert rows["hawq.alternatives"].startswith("4 - next-best ILP solutions")
    assert all(" - " in text for text in rows.values()), [k for k, t in rows.items() if " - " not in t]
    proc = run_cli("list", "options")
    assert proc.returncode == 0 and "quantune.objective" in proc.stdout


def test_cost_json_needs_no_data_and_works_for_torchvision():
    proc = run_cli("cost", "--model", "resnet18", "--policy", "uniform:8", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert round(out["size_mib"], 1) == 11.1 and round(out["bops_g"]) == 116
    assert out["latency_ms"] is None and out["energy_mj"] is None


def test_cost_on_hardware_per_layer_json():
    proc = run_cli("cost", "--model", "mobilenet_v2", "--hardware", "bitfusion", "--policy", "uniform:4", "--per-layer", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["layers"]) == 53
    assert out["latency_ms"] == pytest.approx(sum(r["latency_ms"] for r in out["layers"]))
    assert out["energy_mj"] > 0


def test_evaluate_json_reports_accuracy_size_and_bops():
    proc = run_cli("evaluate", "--policy", "uniform:8", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert 0.97 <= out["accuracy"] <= 1.0 and out["size_mib"] > 0 and out["bops_g"] > 0
    assert out["split"] == "test"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["cost", "--model", "resnet81"], ["unknown model 'resnet81'", "did you mean"]),
        (["cost", "--policy", "uniform:12"], ["is not a bitwidth"]),
        (["cost", "--policy", "uniform:w4"], ["malformed"]),
        (["cost", "--policy", "missing.json"], ["does not exist"]),
        (["cost", "--hardware", "bitfusoin"], ["unknown hardware 'bitfusoin'", "did you mean bitfusion"]),
        (["cost", "--hardware", "bitfusion", "--policy", "uniform:3"], ["bitfusion runs 2, 4 or 8 bits", "--round-up"]),
        (["evaluate", "--policy", "uniform:8", "--data", "digts"], ["unknown data 'digts'", "did you mean digits"]),
        (["list", "gadgets"], ["choose models, data, hardware, methods or options"]),
        (["search", "--method", "rand"], ["unknown search method 'rand'", "did you mean random"]),
        (["search", "--budget", "latncy=0.5"], ["unknown: did you mean latency"]),
        (["search", "--episodes", "0"], ["--episodes 0: must be at least 1"]),
        (["cost", "--model", "resnet18", "--weights", "nope.pt"], ["weights file nope.pt does not exist"]),
        (["search", "--budget", "latency=0.1", "--method", "uniform"], ["latency=0.1 is below the cheapest reachable", "of 8-bit on bismo-edge"]),
        (["plot", "."], ["is not a run directory"]),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, fragments, tmp_path):
    _one_line_error(run_cli(*args, cwd=tmp_path), *fragments)


def test_round_up_maps_bits_the_hardware_lacks():
    proc = run_cli("cost", "--hardware", "bitfusion", "--policy", "uniform:3", "--round-up", "--json")
    assert proc.returncode == 0, proc.stderr
    four = json.loads(run_cli("cost", "--hardware", "bitfusion", "--policy", "uniform:4", "--json").stdout)
    assert json.loads(proc.stdout)["latency_ms"] == pytest.approx(four["latency_ms"])


def test_a_malformed_policy_file_is_one_line_even_from_a_subprocess(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{oops")
    _one_line_error(run_cli("cost", "--policy", str(bad), subprocess=True), "not valid JSON")


def test_profile_cpu_writes_a_table_that_cost_reads(tmp_path):
    csv = tmp_path / "digits-cpu.csv"
    proc = run_cli("profile", "--hardware", "cpu", "--model", "digits-mobilenet", "--out", str(csv), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert csv.is_file() and csv.read_text().startswith("#")
    cost = run_cli("cost", "--hardware", f"table:{csv}", "--policy", "uniform:8", "--json")
    assert cost.returncode == 0, cost.stderr
    assert json.loads(cost.stdout)["latency_ms"] > 0


def test_profile_gpu_without_a_gpu_is_one_line(tmp_path):
    proc = run_cli("profile", "--hardware", "gpu", "--model", "digits-mobilenet", "--out", str(tmp_path / "g.csv"))
    if proc.returncode == 0:  # a machine with CUDA: the profile was measured
        assert (tmp_path / "g.csv").is_file()
    else:
        _one_line_error(proc, "CUDA")


def test_search_twice_without_out_never_collides_and_resume_finds_the_newest(tmp_path):
    args = ("search", "--method", "uniform", "--hardware", "bismo-edge", "--budget", "latency=0.6", "--quiet")
    first, second = run_cli(*args, cwd=tmp_path), run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    runs = tmp_path / "runs"
    assert (runs / "digits-mobilenet-bismo-edge-uniform-s0" / "policy.json").is_file()
    assert (runs / "digits-mobilenet-bismo-edge-uniform-s0-2" / "policy.json").is_file()
    assert "run directory: runs/digits-mobilenet-bismo-edge-uniform-s0-2" in second.stdout.replace("\n", "")
    resumed = run_cli(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "uniform-s0-2" in resumed.stdout.replace("\n", "")


@pytest.mark.slow
def test_ctrl_c_stops_a_search_with_a_message_and_resume_finishes_it(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = [sys.executable, "-m", "haq.cli", "search", "--hardware", "bismo-edge", "--budget", "latency=0.6",
            "--episodes", "40", "--out", str(out), "--quiet", "--option", "checkpoint_every=5"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        history = out / "history.csv"
        if history.is_file() and len(history.read_text().splitlines()) > 8:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "checkpoint" in err
    assert not (out / "policy.json").exists()
    done = run_cli(*args[3:], "--resume")
    assert done.returncode == 0, done.stderr
    assert len((out / "history.csv").read_text().splitlines()) == 41 and (out / "policy.json").is_file()
