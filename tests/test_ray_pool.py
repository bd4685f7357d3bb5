"""A Ray evaluation pool changes where accuracies are measured, never what a search returns:
with a local 2-worker Ray, history.csv (less its wall-clock column) and policy.json are the
same bytes as serial; a worker that dies is replaced by a retry on another one, and a search
whose retry dies too stops with one line and a resumable run directory."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from haq.api import prepare, search
from haq.compare import compare
from haq.config import SearchConfig
from haq.errors import ConfigError
from haq.ray_pool import RayPool, WorkerLostError
from tests.conftest import run_cli

ray = pytest.importorskip("ray", reason="the Ray pool needs the ray extra (CI installs it: pip install 'haq[ray]')")

FAST = {
    "random": {},
    "hawq": {"hessian_max_iter": 8, "hessian_batch_size": 64, "use_cache": False},
    "pareto": {"population_size": 6},
    "quantune": {"k": 2, "pool_size": 32, "rounds": 20},
}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the whole module (starting Ray takes seconds); 8 logical CPUs so that
    the 2-worker pools of several tests fit at once."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=8, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ws():
    return prepare(SearchConfig(hardware="bismo-edge"), device="cpu")


@pytest.fixture(scope="module")
def pool(local_ray, ws):
    p = RayPool(ws.evaluator, workers=2)
    yield p
    p.close()


def config(method: str, n: int = 12) -> SearchConfig:
    return SearchConfig(hardware="bismo-edge", budget=("latency=0.6",), method=method, max_evaluations=n,
                        options=dict(FAST[method]))


def outputs(run: Path) -> tuple[pd.DataFrame, str]:
    history = pd.read_csv(run / "history.csv").drop(columns="wall_s")
    return history, (run / "policy.json").read_text()


@pytest.mark.parametrize("method", list(FAST))
def test_two_ray_workers_write_the_same_history_and_policy_as_serial(tmp_path, ws, pool, method):
    search(config(method), out=tmp_path / "serial", workspace=ws)
    search(config(method), out=tmp_path / "ray", workspace=ws, pool=pool)
    serial_history, serial_policy = outputs(tmp_path / "serial")
    ray_history, ray_policy = outputs(tmp_path / "ray")
    assert len(serial_history) >= 4
    pd.testing.assert_frame_equal(ray_history, serial_history)
    assert ray_policy == serial_policy


def test_a_comparison_on_two_ray_workers_is_the_same_as_serial(tmp_path, ws, pool):
    cfg = SearchConfig(hardware="bismo-edge", budget=("latency=0.6",), max_evaluations=8,
                       options={"pareto": {"population_size": 4}})
    methods = ["random", "pareto", "uniform"]
    serial = compare(cfg, methods, seeds=1, out=tmp_path / "serial", workspace=ws)
    on_ray = compare(cfg, methods, seeds=1, out=tmp_path / "ray", workspace=ws, pool=pool)
    cols = [c for c in serial.columns if c != "wall_s"]
    pd.testing.assert_frame_equal(on_ray[cols], serial[cols])
    for name in ("history.csv",):
        a = pd.read_csv(tmp_path / "serial" / name).drop(columns="wall_s")
        b = pd.read_csv(tmp_path / "ray" / name).drop(columns="wall_s")
        pd.testing.assert_frame_equal(b, a)
    for m in methods:
        assert ((tmp_path / "ray" / "policies" / f"{m}-seed0.json").read_text()
                == (tmp_path / "serial" / "policies" / f"{m}-seed0.json").read_text())


def test_the_pool_yields_accuracies_in_the_order_of_the_policies(ws, pool):
    rng = np.random.default_rng(0)
    L = len(ws.layers)
    items = [(rng.integers(2, 9, L), rng.integers(2, 9, L), ws.evaluator.scheme) for _ in range(6)]
    expected = ws.evaluator.accuracies(items)
    assert list(pool.measure(items)) == expected


def test_the_workers_flag_measures_on_ray_from_the_command_line(tmp_path, local_ray):
    r = run_cli("search", "--hardware", "bismo-edge", "--method", "random", "--max-evaluations", "4",
                "--workers", "2", "--quiet", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 4


def test_an_unreachable_ray_address_is_one_line_and_exit_2(tmp_path):
    r = run_cli("search", "--hardware", "bismo-edge", "--method", "random", "--max-evaluations", "4",
                "--ray-address", "127.0.0.1:1", "--quiet", "--out", str(tmp_path / "run"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--ray-address 127.0.0.1:1" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_more_workers_than_cores_warns_and_continues(local_ray, ws):
    many = (os.cpu_count() or 1) + 1
    with pytest.warns(UserWarning, match=f"--workers {many} is more than"):
        p = RayPool(ws.evaluator, workers=many)
    try:
        item = (np.full(len(ws.layers), 8), np.full(len(ws.layers), 8), ws.evaluator.scheme)
        assert list(p.measure([item])) == ws.evaluator.accuracies([item])
    finally:
        p.close()


def _kill(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)


def test_a_worker_killed_mid_search_is_retried_on_another(local_ray, ws):
    p = RayPool(ws.evaluator, workers=2)
    try:
        L = len(ws.layers)
        items = [(np.full(L, b), np.full(L, b), ws.evaluator.scheme) for b in (2, 3, 4, 5, 6, 8)]
        _kill(p.actor_pids()[:1])
        assert list(p.measure(items)) == ws.evaluator.accuracies(items)
        assert p.retries == 1 and len(p.actor_pids()) == 1
    finally:
        p.close()


def test_a_search_whose_retry_dies_too_stops_with_one_line_and_resumes(tmp_path, local_ray, ws):
    cfg = config("random", n=12)
    out = tmp_path / "run"
    p = RayPool(ws.evaluator, workers=2)
    done: list[int] = []

    def on_trial(trial):  # after 5 committed trials, every worker dies
        done.append(trial.index)
        if len(done) == 5:
            _kill(p.actor_pids())

    try:
        with pytest.raises(WorkerLostError, match="--resume") as info:
            search(cfg, out=out, workspace=ws, pool=p, on_trial=on_trial)
        assert "\n" not in str(info.value)
    finally:
        p.close()
    assert 5 <= len(pd.read_csv(out / "history.csv")) < 12
    assert not (out / "policy.json").exists()
    resumed = search(cfg, out=out, resume=True, workspace=ws)
    search(cfg, out=tmp_path / "serial", workspace=ws)
    pd.testing.assert_frame_equal(outputs(out)[0], outputs(tmp_path / "serial")[0])
    assert resumed.evaluations == 12


def test_ray_needs_at_least_one_worker(ws):
    with pytest.raises(ConfigError, match="--workers 0"):
        RayPool(ws.evaluator, workers=0)
