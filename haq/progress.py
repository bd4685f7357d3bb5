"""The progress bar of long commands (rich): trial, best feasible accuracy, its cost,
evaluations per second, how many were answered from the ledger, ETA.

The library never prints; it calls ``on_trial(trial)``. This module turns those calls
into a bar on stderr, or into nothing with ``--quiet``.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from haq.costs import COST_FIELDS, UNIT_NAMES


class SearchProgress:
    """Context manager; ``trial_callback(config)`` gives the ``on_trial`` to pass to a search."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[best]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self._task: Any = None
        self._best: float | None = None
        self._repeats = 0
        self._first: tuple[int, float] | None = None  #: (trial, time) of the first trial seen

    def __enter__(self) -> SearchProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def trial_callback(self, config: Any):  # noqa: ANN201
        key = config.budget[0].split("=")[0].strip().lower() if config.budget else "latency"
        field = COST_FIELDS.get(key, "latency_ms")
        unit = UNIT_NAMES.get(key, "")
        from haq.methods import get_method

        total = config.max_evaluations or get_method(config.method).default_evaluations

        def on_trial(trial: Any) -> None:
            if self._task is None:
                self._task = self.progress.add_task(config.method, total=total, best="", rate="")
            if trial.feasible and (self._best is None or trial.accuracy > self._best):
                self._best = trial.accuracy
                c = getattr(trial.cost, field)
                cost = f", {c:.4g} {unit}" if c is not None else ""
                self.progress.update(self._task, best=f"best feasible {100 * trial.accuracy:.2f}%{cost}")
            self._repeats += trial.source == "repeat"
            now = time.perf_counter()
            if self._first is None:
                self._first = (trial.index, now)
            done, elapsed = trial.index - self._first[0], now - self._first[1]
            rate = f"{done / elapsed:.2f} eval/s" if elapsed > 0 and done > 0 else ""
            if self._repeats:
                rate += f", {self._repeats} from ledger"
            self.progress.update(self._task, completed=trial.index + 1, rate=rate)

        return on_trial
