"""The ledger of one run: every trial a method has measured, and the one way it measures.

A method gets a frozen :class:`~haq.problem.SearchProblem` and a :class:`Ledger`. It measures
accuracy only through :meth:`Ledger.evaluate_many` (or :meth:`Ledger.evaluate`, its batch of
one), which

* counts every proposal against ``max_evaluations`` and cuts a batch at the limit exactly as
  serial calls would: the proposals within the limit are measured and committed, then
  :class:`~haq.problem.EvaluationLimitReached` is raised;
* answers a policy already measured in this run from the ledger instead of measuring it again
  (it still counts, so results do not change; :attr:`Ledger.repeats` says how many);
* answers the trials of a resumed run from its history (``replay``), as long as the re-run
  method proposes the same policy at the same trial index;
* measures the rest on an evaluation pool (:mod:`haq.pool`) and commits the trials in proposal
  order - trial numbers, ``history.csv``, the best policy and resume are the same whether a
  batch is measured serially or on many workers;
* costs each policy on the hardware, checks the budget, writes the history row and calls the
  progress callback.

Fairness between methods is enforced here, not by convention.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from haq.errors import SearchError
from haq.history import HISTORY_COLUMNS, bits_str, scheme_str
from haq.pool import EvaluationPool, InProcessPool, Item
from haq.problem import EvaluationLimitReached, Measures, ModelAccess, Proposal, SearchProblem, Trial
from haq.scheme import QuantScheme

Recorder = Callable[[dict[str, Any]], None]  #: receives each history row (a run's history.csv)


def within_drop(trial: Trial, drop: float, fp32_accuracy: float) -> bool:
    """Whether ``trial``'s validation accuracy is at most ``drop`` percent points below fp32."""
    return trial.accuracy >= fp32_accuracy - drop / 100 - 1e-12


def best_trial(trials: Sequence[Trial], problem: SearchProblem, fp32_accuracy: float | None = None) -> Trial | None:
    """The trial a search returns: the most accurate feasible one (the lower primary cost on a
    tie); with ``problem.max_accuracy_drop``, the cheapest feasible trial within the drop of
    ``fp32_accuracy`` (the more accurate on a tie), or the most accurate one while none is."""
    feasible = [t for t in trials if t.feasible]
    if not feasible:
        return None
    key = problem.primary
    drop = problem.max_accuracy_drop
    if drop is not None:
        if fp32_accuracy is None:
            raise ValueError("best_trial with max_accuracy_drop needs the fp32 accuracy")
        within = [t for t in feasible if within_drop(t, drop, fp32_accuracy)]
        if within:
            return min(within, key=lambda t: (t.cost.get(key) or 0.0, -t.accuracy))
    return max(feasible, key=lambda t: (t.accuracy, -(t.cost.get(key) or 0.0)))


class Ledger:
    """What happens during one run of one method on one problem.

    Args:
        problem: the frozen problem.
        evaluator: the model and data; gives the method its :attr:`model` view and the
            fp32 reference accuracies.
        method: the method's name (history.csv's ``method`` column).
        pool: where accuracies are measured (default: in this process, on ``evaluator``).
        recorder: receives each committed history row, e.g. a run directory's writer.
        on_trial: progress callback, called with each committed :class:`Trial`.
        replay: history rows of an interrupted run, keyed by trial index: a deterministic
            method re-run after a crash gets each trial's accuracy back without re-measuring.
        checkpoint_dir: where a method with internal state (RL) keeps its checkpoint, or None.
        max_batch: most policies handed to the pool at once (None: the whole batch).
    """

    def __init__(
        self,
        problem: SearchProblem,
        evaluator: Measures,
        *,
        method: str = "",
        pool: EvaluationPool | None = None,
        recorder: Recorder | None = None,
        on_trial: Callable[[Trial], None] | None = None,
        replay: Mapping[int, Mapping[str, Any]] | None = None,
        checkpoint_dir: Path | None = None,
        max_batch: int | None = None,
    ) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be at least 1")
        self.problem = problem
        self.method = method
        self._evaluator = evaluator
        self._model = evaluator.with_scheme(problem.scheme)
        self.pool: EvaluationPool = pool if pool is not None else InProcessPool(evaluator)
        self.recorder = recorder
        self.on_trial = on_trial
        self.replay: Mapping[int, Mapping[str, Any]] = dict(replay or {})
        self.checkpoint_dir = checkpoint_dir
        self.max_batch = max_batch
        self._trials: list[Trial] = []
        self._known: dict[tuple[bytes, bytes, Any], float] = {}
        self._fp32: dict[str, float] = {}
        self._start = time.perf_counter()

    # ----- what methods read ---------------------------------------------------------------
    @property
    def model(self) -> ModelAccess:
        """Weights, activation ranges and calibration data under the problem's scheme."""
        return self._model

    @property
    def trials(self) -> tuple[Trial, ...]:
        return tuple(self._trials)

    @property
    def evaluations(self) -> int:
        return len(self._trials)

    @property
    def remaining(self) -> int:
        return self.problem.max_evaluations - len(self._trials)

    @property
    def repeats(self) -> int:
        """Evaluations answered from the ledger: the policy was measured earlier in the run."""
        seen: set[tuple[bytes, bytes, Any]] = set()
        n = 0
        for t in self._trials:
            key = (t.w_bits.tobytes(), t.a_bits.tobytes(), t.scheme)
            n += key in seen
            seen.add(key)
        return n

    @property
    def elapsed_s(self) -> float:
        """Seconds since the ledger was opened."""
        return time.perf_counter() - self._start

    @property
    def best(self) -> Trial | None:
        """The trial the run returns so far (:func:`best_trial`)."""
        fp32 = self.fp32_accuracy("val") if self.problem.max_accuracy_drop is not None else None
        return best_trial(self._trials, self.problem, fp32)

    def within_accuracy_drop(self, trial: Trial) -> bool:
        """Whether ``trial`` is within ``max_accuracy_drop`` points of fp32 (validation)."""
        drop = self.problem.max_accuracy_drop
        return drop is not None and within_drop(trial, drop, self.fp32_accuracy("val"))

    def fp32_accuracy(self, split: str = "val") -> float:
        """Accuracy of the float model on ``split`` (measured once, not counted)."""
        if split not in self._fp32:
            self._fp32[split] = float(self._evaluator.fp32_accuracy(split))
        return self._fp32[split]

    def test_accuracy(self, w_bits: np.ndarray, a_bits: np.ndarray, scheme: QuantScheme | None = None) -> float:
        """Accuracy on the test split, for the final report of a search (not counted; a method
        never calls this: the test split stays unseen until its policy is chosen)."""
        ev = self._evaluator if scheme is None else self._evaluator.with_scheme(scheme)
        item = (np.asarray(w_bits, dtype=np.int64), np.asarray(a_bits, dtype=np.int64), scheme or self.problem.scheme)
        return float(ev.accuracies([item], "test")[0])

    def fidelities(self, trials: Sequence[Trial]) -> list[tuple[float, float]]:
        """``(kl, agreement)`` of each trial's policy against the float model on the fidelity
        set, for the final choice of a search (not counted as evaluations)."""
        return self._evaluator.fidelities([(t.w_bits, t.a_bits, t.scheme or self.problem.scheme) for t in trials])

    def split_size(self, split: str) -> int:
        """Images in ``split`` (``val``, ``test``, ``fidelity``...)."""
        return int(self._evaluator.split_size(split))

    def lookup(self, proposal: Proposal) -> float | None:
        """The accuracy of ``proposal`` if this run measured it already, else None."""
        return self._known.get(self._normal(proposal).key)

    # ----- measuring -----------------------------------------------------------------------
    def evaluate(self, proposal: Proposal) -> Trial:
        """Measure one policy: :meth:`evaluate_many` of one."""
        return self.evaluate_many([proposal])[0]

    def evaluate_many(self, proposals: Sequence[Proposal]) -> list[Trial]:
        """Measure ``proposals`` on the validation split and commit them in order.

        Returns one :class:`Trial` per proposal. When the batch is longer than the evaluations
        left, the ones within the limit are committed and then
        :class:`~haq.problem.EvaluationLimitReached` is raised. A non-finite accuracy (a
        forward pass that yields NaN/Inf) stops the search: the trials before it are
        committed, the failed one is recorded in the history with ``status`` "failed: ..." and
        no accuracy (never a best policy; a resumed run measures it again), then
        :class:`~haq.errors.SearchError` is raised. It is a fault of the model or data that
        measuring other policies would repeat, not a bad policy to skip.
        """
        proposals = [self._normal(p) for p in proposals]
        if not proposals:
            return []
        take = proposals[: max(self.remaining, 0)]
        plan: list[tuple[str, Any]] = []  # ("replay", row) | ("repeat", key) | ("measure", key)
        to_measure: list[Item] = []
        planned: set[tuple[bytes, bytes, Any]] = set()
        for offset, p in enumerate(take):
            row = self._replayed(len(self._trials) + offset, p)
            if row is not None:
                plan.append(("replay", row))
                planned.add(p.key)
            elif p.key in self._known or p.key in planned:
                plan.append(("repeat", p.key))
            else:
                plan.append(("measure", p.key))
                planned.add(p.key)
                to_measure.append((p.w_bits, p.a_bits, p.scheme or self.problem.scheme))
        results = self._measure(to_measure)
        out = []
        for p, (kind, ref) in zip(take, plan, strict=True):
            if kind == "replay":
                acc, wall = float(ref["accuracy"]), float(ref["wall_s"])
                self._known.setdefault(p.key, acc)
            elif kind == "repeat":
                acc, wall = self._known[ref], self.elapsed_s
            else:
                acc, wall = float(next(results)), self.elapsed_s
                self._known[ref] = acc
            out.append(self._commit(p, acc, wall, "measured" if kind == "measure" else kind))
        if len(take) < len(proposals):
            raise EvaluationLimitReached
        return out

    def _normal(self, p: Proposal) -> Proposal:
        """``p`` with its scheme None when it is the problem's own."""
        if p.scheme is not None and p.scheme == self.problem.scheme:
            return Proposal(p.w_bits, p.a_bits, None, p.reward)
        return p

    def _replayed(self, index: int, p: Proposal) -> Mapping[str, Any] | None:
        row = self.replay.get(index)
        if row is None:
            return None
        same = (row["w_bits"], row["a_bits"], row.get("quant") or "") == (
            bits_str(p.w_bits), bits_str(p.a_bits), scheme_str(p.scheme))
        return row if same else None  # the re-run diverged from the history here: measure anew

    def _measure(self, items: list[Item]) -> Iterator[float]:
        step = self.max_batch or max(len(items), 1)
        for start in range(0, len(items), step):
            yield from self.pool.measure(items[start:start + step], "val")

    def _commit(self, p: Proposal, acc: float, wall: float, source: Any) -> Trial:
        index = len(self._trials)
        if not math.isfinite(acc):
            if self.recorder is not None:  # the failed trial is recorded with its reason, then the run stops
                cost = self.problem.cost(p.w_bits, p.a_bits)
                failed = Trial(index, p.w_bits, p.a_bits, acc, cost, False, None, wall, p.scheme, source)
                self.recorder(self.history_row(failed) | {
                    "accuracy": None, "status": f"failed: non-finite accuracy ({acc})"})
            raise SearchError(
                f"trial {index} ({self.method}) measured a non-finite accuracy ({acc}); the run directory is kept - "
                "check the model and data for NaN/Inf (e.g. a checkpoint trained with a diverged loss)"
            )
        reward = p.reward(acc) if callable(p.reward) else p.reward
        cost = self.problem.cost(p.w_bits, p.a_bits)
        trial = Trial(index, p.w_bits, p.a_bits, acc, cost, self.problem.budget.satisfied(cost),
                      None if reward is None else float(reward), wall, p.scheme, source)
        self._trials.append(trial)
        if self.recorder is not None:
            self.recorder(self.history_row(trial))
        if self.on_trial is not None:
            self.on_trial(trial)
        return trial

    # ----- history -------------------------------------------------------------------------
    def history_row(self, t: Trial) -> dict[str, Any]:
        return {
            "trial": t.index,
            "method": self.method,
            "wall_s": round(t.wall_s, 4),
            "w_bits": bits_str(t.w_bits),
            "a_bits": bits_str(t.a_bits),
            "accuracy": t.accuracy,
            "latency_ms": t.cost.latency_ms,
            "energy_mj": t.cost.energy_mj,
            "size_mib": t.cost.size_mib,
            "bops_g": t.cost.bops_g,
            "feasible": t.feasible,
            "reward": t.reward,
            "quant": scheme_str(t.scheme),
            "status": "",
        }

    def history(self) -> pd.DataFrame:
        return pd.DataFrame([self.history_row(t) for t in self._trials], columns=HISTORY_COLUMNS)
