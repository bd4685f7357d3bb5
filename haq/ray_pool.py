"""The Ray evaluation pool: accuracies measured on Ray actors, from one machine to a cluster.

``pip install 'haq[ray]'``. ``workers=N`` starts a local Ray for the pool; ``address=``
joins an existing cluster; both take the same path. Each actor builds its evaluator once
from the state the driver puts in Ray's object store; a task ships one policy and returns
one float; the pool yields results in proposal order (the ledger commits them).
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from haq.devices import resolve_device
from haq.errors import ConfigError, HaqError, SearchError
from haq.pool import EvaluationPool, Item
from haq.quant.evaluator import Evaluator


class WorkerLostError(SearchError):
    """A Ray worker died while measuring a policy, and so did the one it was retried on: the
    search stops (its run directory keeps every committed trial and can be resumed)."""


class _Worker:
    """One Ray actor: the evaluator, built once from the driver's state in the object store."""

    def __init__(self, state: dict, device: str, threads: int | None) -> None:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)  # N CPU actors on N cores do not oversubscribe them
        self.evaluator = Evaluator.from_worker_state(state, device)

    def pid(self) -> int:
        return os.getpid()

    def measure(self, item: Item, split: str) -> float:
        return float(self.evaluator.accuracies([item], split)[0])


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """One line (:class:`ConfigError`) when nothing listens at ``host:port`` (Ray would retry
    for a minute before failing)."""
    if address in ("auto", "local"):
        return
    rest = address.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r}: expected HOST:PORT (or ray://HOST:PORT, or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"--ray-address {address}: no Ray cluster reachable there ({exc.strerror or exc}); "
                          "start one with `ray start --head` or drop --ray-address to run locally") from None


class RayPool:
    """Measures on Ray actors, each holding its own evaluator.

    The driver puts the evaluator's state (folded float model, data splits, layers, scheme,
    calibration statistics: :meth:`~haq.quant.evaluator.Evaluator.worker_state`) in Ray's
    object store once; every actor builds its evaluator from it when it starts, so a task
    ships only a policy (two small int arrays) and returns a float.

    Args:
        evaluator: the driver's evaluator (what every worker copies).
        workers: actors to start (default: the cluster's CPUs, or GPUs with CUDA). Without
            ``address`` and without a running Ray, a local Ray with ``workers`` CPUs is
            started for the pool and shut down by :meth:`close`; more workers than cores is
            allowed, with a warning.
        address: a Ray cluster to join (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``).
        device: where the actors evaluate; with CUDA each actor takes one GPU.
        start_timeout_s: how long the actors may take to start (a cluster without room
            for them fails with one line after it).

    Faults: a worker that dies mid-evaluation (killed, out of memory, node lost) is dropped
    and its policy is measured again on another worker; if that one dies as well, or no
    worker is left, :class:`WorkerLostError` stops the search.
    """

    def __init__(
        self, evaluator: Evaluator, workers: int | None = None, *, address: str | None = None,
        device: str = "cpu", start_timeout_s: float = 300.0,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--workers/--ray-address need Ray: pip install 'haq[ray]'") from None
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers {workers}: must be at least 1")
        self._ray = ray
        dev = resolve_device(device)
        cores = os.cpu_count() or 1
        if workers is not None and address is None and dev.type == "cpu" and workers > cores:
            warnings.warn(f"--workers {workers} is more than the {cores} CPU cores here: the workers will "
                          "share cores (slower per evaluation, same results)", stacklevel=2)
        self._owns_ray = False
        if address is not None:
            _check_reachable(address)
        if not ray.is_initialized():
            try:
                if address is None:
                    ray.init(num_cpus=max(workers or cores, 1), include_dashboard=False, logging_level=logging.ERROR,
                             log_to_driver=False, configure_logging=False)
                else:
                    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"could not start or join Ray ({first[:200]}); check --ray-address") from None
            self._owns_ray = True
        gpu = dev.type == "cuda"
        if workers is None:
            res = ray.cluster_resources()
            workers = max(1, int(res.get("GPU" if gpu else "CPU", 1)))
        self.workers = workers
        self.device = dev
        state = ray.put(evaluator.worker_state())
        actor = ray.remote(num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0, max_restarts=0,
                           max_task_retries=0)(_Worker)
        device_name = "cuda" if gpu else "cpu"  # each actor sees its own GPU as cuda:0
        self._actors: list[Any] = [actor.remote(state, device_name, None if gpu else 1) for _ in range(workers)]
        self._retries = 0
        self._wait_started(start_timeout_s)

    def _wait_started(self, timeout_s: float) -> None:
        """Wait until every actor has built its evaluator: a cluster without room for them
        (or a worker that cannot build one) is one line now, not a search that never moves."""
        ray = self._ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:
            ray.get([a.pid.remote() for a in self._actors], timeout=timeout_s)
        except GetTimeoutError:
            self.close()
            res = "GPUs" if self.device.type == "cuda" else "CPUs"
            raise ConfigError(f"the {self.workers} Ray workers did not start within {timeout_s:.0f} s: the cluster "
                              f"has no room for them (each needs one of its free {res}); ask for fewer --workers") from None
        except (RayActorError, RayTaskError) as exc:
            self.close()
            cause = getattr(exc, "cause", None)
            if isinstance(cause, HaqError):
                raise cause from None
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise SearchError(f"a Ray worker could not build the evaluator ({first})") from None

    @property
    def retries(self) -> int:
        """Policies measured again because their worker died."""
        return self._retries

    def actor_pids(self) -> list[int]:
        """Process ids of the live workers (for fault tests)."""
        return list(self._ray.get([a.pid.remote() for a in self._actors]))

    def measure(self, items: Sequence[Item], split: str = "val") -> Iterator[float]:
        ray = self._ray
        from ray.exceptions import RayActorError, RayTaskError

        items = list(items)
        queue = deque(range(len(items)))
        attempts = [0] * len(items)
        idle = list(self._actors)
        pending: dict[Any, tuple[int, Any]] = {}
        done: dict[int, float] = {}
        next_out = 0
        while next_out < len(items):
            while queue and idle:
                i, a = queue.popleft(), idle.pop(0)
                pending[a.measure.remote(items[i], split)] = (i, a)
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i, a = pending.pop(ref)
                try:
                    done[i] = float(ray.get(ref))
                    idle.append(a)
                except RayActorError as exc:
                    if a in self._actors:
                        self._actors.remove(a)
                    attempts[i] += 1
                    if attempts[i] > 1 or not self._actors:
                        why = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                        raise WorkerLostError(
                            f"a Ray worker died measuring a policy and the retry on another worker failed too "
                            f"({why}); the run directory keeps every committed trial: continue with --resume"
                        ) from None
                    self._retries += 1
                    queue.appendleft(i)
                except RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, Exception):
                        raise cause from None
                    raise
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1

    def close(self) -> None:
        """Stop the workers (and the local Ray this pool started)."""
        ray = self._ray
        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:  # already dead
                pass
        self._actors = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False


def make_pool(
    evaluator: Evaluator, *, workers: int | None = None, ray_address: str | None = None, device: str = "cpu"
) -> EvaluationPool | None:
    """The pool of ``workers``/``ray_address``: a :class:`RayPool` when either is given, else
    None (the ledger then measures in this process)."""
    if workers is None and ray_address is None:
        return None
    return RayPool(evaluator, workers, address=ray_address, device=device)
