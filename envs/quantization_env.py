"""HAQ's mixed-precision quantization environment, as a Gymnasium env.

Source: mit-han-lab/haq ``lib/env/linear_quantize_env.py`` (design §7.1). The agent walks the
quantizable layers of a network in execution order and, for each, picks the weight
bitwidth and then the activation bitwidth; after the last choice the policy is lowered to
the budget with HAQ's loop, measured once on the validation split, and rewarded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from haq.errors import ConfigError
from haq.layers import LayerSpec
from haq.ledger import Ledger
from haq.problem import Proposal, SearchProblem, Trial

#: Names of the 10 observation features, in order.
FEATURES: tuple[str, ...] = (
    "is_depthwise", "in_channels", "out_channels", "stride", "kernel", "params",
    "in_hw", "layer_index", "prev_bits", "is_weight_step",
)
N_STATIC = 8  #: features 0-7 describe the layer; 8 and 9 change with every step


def layer_features(layers: Sequence[LayerSpec]) -> np.ndarray:
    """The static part of HAQ's layer embedding, raw, shape ``(L, 8)``.

    Columns: is_depthwise (0/1), in_channels, out_channels, stride (first dim), kernel
    (first dim), params (weight elements), input pixels in_h*in_w, layer index. As in HAQ, a
    linear layer has stride 0, kernel 1 and in_h*in_w = in_features.
    """
    rows = []
    for i, s in enumerate(layers):
        if s.kind == "linear":
            rows.append([0.0, s.in_channels, s.out_channels, 0.0, 1.0, s.params, s.in_channels, i])
        else:
            rows.append([
                float(s.is_depthwise), s.in_channels, s.out_channels, s.stride[0], s.kernel[0],
                s.params, s.in_hw[0] * s.in_hw[1], i,
            ])
    return np.asarray(rows, dtype=np.float64)


def minmax_columns(table: np.ndarray) -> np.ndarray:
    """Min-max normalise every column over the rows (layers) to [0, 1]; constant columns
    are left raw, as HAQ's ``_build_state_embedding`` does."""
    out = np.array(table, dtype=np.float64)
    lo, hi = out.min(axis=0), out.max(axis=0)
    span = hi - lo
    moving = span > 0
    out[:, moving] = (out[:, moving] - lo[moving]) / span[moving]
    return out


def action_to_bits(action: float, choices: Sequence[int]) -> int:
    """HAQ's action-to-bits map, then snapped to a layer's supported bitwidths.

    ``b = round(b_min - 0.5 + a * (b_max - b_min + 1))`` clipped to ``[b_min, b_max]`` gives
    every integer bitwidth an equal share of ``a`` in [0, 1] (``b_min``/``b_max`` are the
    smallest and largest of ``choices``); a width the hardware cannot run is rounded up to
    the next one it can (BitFusion's 3 runs as 4), as the hardware itself would.

    >>> [action_to_bits(a, (2, 4, 8)) for a in (0.0, 0.2, 0.3, 0.5, 1.0)]
    [2, 4, 4, 8, 8]
    """
    c = sorted(int(x) for x in choices)
    b_min, b_max = c[0], c[-1]
    a = min(max(float(action), 0.0), 1.0)
    # floor(x + 0.5): round half up, like HAQ's np.round except at exact .5 ties
    b = int(np.floor(b_min - 0.5 + a * (b_max - b_min + 1) + 0.5))
    b = min(max(b, b_min), b_max)
    return next(x for x in c if x >= b)


class MixedPrecisionEnv(gym.Env):
    """HAQ's mixed-precision quantization search as an episodic Gymnasium environment.

    ## Description
    A trained network with ``L`` quantizable layers (Conv2d, depthwise Conv2d, Linear) is to
    be quantized post-training under a hardware budget (latency, energy, size or BOPs on a
    hardware model such as BitFusion or BISMO). One episode builds one policy: the agent
    visits the layers in execution order and chooses, for each, first the weight bitwidth
    and then the activation bitwidth (``2L`` steps). After the last step HAQ's budget loop
    lowers bits from the last layer to the first until the budget holds
    (:func:`haq.budget.enforce_budget`), and the policy's top-1 accuracy is measured once
    on the validation split through the run's :class:`~haq.ledger.Ledger` (counted,
    recorded in the run's history). The first and last layers are pinned at 8 bits by
    default.

    ## Action Space
    ``Box(0, 1, (1,), float32)``: the layer's bitwidth as a fraction. It maps to bits with
    HAQ's formula ``b = round(b_min - 0.5 + a (b_max - b_min + 1))`` clipped to
    ``[b_min, b_max]`` (the layer's lowest and highest supported bitwidth within
    ``min_bits..max_bits``, defaults 2 and 8) and is then rounded up to a bitwidth the
    hardware runs (:func:`action_to_bits`). Pinned layers ignore the action.

    ## Observation Space
    ``Box((10,), float32)``. Features 0-7 describe the current layer and are min-max
    normalised over the layers of the network (a column that is constant over the layers
    is left raw, as in HAQ, so its bound is its value):

    | # | feature        | raw unit / meaning                                | range  |
    |---|----------------|---------------------------------------------------|--------|
    | 0 | is_depthwise   | 1 for a depthwise conv, else 0                    | [0, 1] |
    | 1 | in_channels    | input channels (in_features for linear)           | [0, 1] |
    | 2 | out_channels   | output channels (out_features for linear)         | [0, 1] |
    | 3 | stride         | stride, pixels (0 for linear)                     | [0, 1] |
    | 4 | kernel         | kernel height, pixels (1 for linear)              | [0, 1] |
    | 5 | params         | weight elements                                   | [0, 1] |
    | 6 | in_hw          | input pixels in_h*in_w (in_features for linear)   | [0, 1] |
    | 7 | layer_index    | position in execution order                       | [0, 1] |
    | 8 | prev_bits      | bits chosen at the previous step / the layer's max bits (1 at the first step) | [0, 1] |
    | 9 | is_weight_step | 1 when this step picks weight bits, 0 for activation bits | {0, 1} |

    ## Rewards
    0 on every step but the last. On the last: ``reward_scale * (acc - acc_fp32)`` with both
    accuracies in percent on the validation split (HAQ: ``0.1 * (acc - org_acc)``). HAQ
    measured accuracy after a short finetune on training data; we measure held-out
    accuracy without finetuning (post-training quantization).

    ## Starting State
    The first layer's features, ``prev_bits = 1`` and ``is_weight_step = 1``. The
    environment itself is deterministic; ``reset(seed=)`` only seeds ``np_random``.

    ## Episode End
    The episode terminates after ``2L`` steps. It is never truncated. On the last step
    ``info`` holds the final policy and its measurement: ``w_bits``, ``a_bits`` (after
    budget enforcement, int arrays of shape ``(L,)``), ``proposed_w_bits``,
    ``proposed_a_bits`` (the agent's choices before it), ``proposal_met_budget``,
    ``budget_met``, ``accuracy`` and ``fp32_accuracy`` (validation, in [0, 1]),
    ``latency_ms``, ``energy_mj``, ``size_mib``, ``bops_g`` (None where the hardware model
    has no such cost), ``budget_usage`` (cost / limit per budget key), ``trial`` (its
    index in the search history) and ``measured`` (True). The last step raises
    :class:`~haq.problem.EvaluationLimitReached` once the problem's evaluation limit is
    spent, and :class:`~haq.errors.SearchError` on a non-finite accuracy.

    Without a ledger (``ledger=None``, how the ``rl`` method plays several episodes before
    measuring them as one batch) the last step measures nothing: its reward is 0,
    ``info["measured"]`` is False and ``info`` holds only the policy (``w_bits``,
    ``a_bits``, ``proposed_*``, ``proposal_met_budget``); the caller measures it and
    computes the reward with :meth:`reward_function`.

    ## Arguments
    ```python
    gymnasium.make("haq/MixedPrecision-v0")  # digits-mobilenet, bismo-edge, latency=0.6 (haq.config defaults)
    gymnasium.make("haq/MixedPrecision-v0", model="digits-resnet", hardware="bismo-edge",
                   budget="energy=0.5", pin="none", min_bits=2, max_bits=8)
    MixedPrecisionEnv(problem, ledger)  # an existing haq.problem.SearchProblem and its ledger
    ```
    * ``problem``: the :class:`~haq.problem.SearchProblem` (layers, bit choices, budget).
    * ``ledger``: the :class:`~haq.ledger.Ledger` that measures each episode's policy;
      None = the caller measures (see Episode End).
    * ``reward_scale``: factor on the accuracy change in percent points (HAQ: 0.1).
    * through ``gymnasium.make`` (:func:`haq.api.make_env`): ``model``, ``hardware``,
      ``budget``, ``data``, ``weights``, ``min_bits``, ``max_bits``, ``pin``, ``seed`` as in
      :class:`haq.config.SearchConfig` (the embedded models are shipped trained), and
      ``max_evaluations`` (episodes allowed; None: unlimited).

    ## Version History
    * v0: first version. Differences from HAQ's reference code: the weight/activation flag
      is set right on every step (the reference inverts it after the first step), the
      previous-bits feature starts at 1 in every episode (the reference leaks the last
      episode's first action into the next reset), pinned layers stay pinned whether or
      not the budget loop runs, and bits are snapped to what the hardware runs.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        problem: SearchProblem,
        ledger: Ledger | None = None,
        *,
        reward_scale: float = 0.1,
        render_mode: str | None = None,
    ) -> None:
        if not isinstance(problem, SearchProblem):
            raise ConfigError(
                f"MixedPrecisionEnv needs a haq.problem.SearchProblem, got {type(problem).__name__}; "
                "gymnasium.make('haq/MixedPrecision-v0', model=..., hardware=...) builds one"
            )
        if render_mode is not None:
            raise ConfigError(f"MixedPrecisionEnv has no render modes; got render_mode={render_mode!r}")
        self.problem = problem
        self.ledger = ledger
        self.reward_scale = float(reward_scale)
        self.n_layers = problem.n_layers
        self._choices = [tuple(sorted(int(b) for b in c)) for c in problem.choices]
        self._max_bits = np.array([c[-1] for c in self._choices], dtype=np.float64)
        self._pinned = frozenset(problem.pinned)
        self._pin_bits, _ = problem.max_policy()
        self._static = minmax_columns(layer_features(problem.layers)).astype(np.float32)
        low = np.minimum(0.0, self._static.min(axis=0))
        high = np.maximum(1.0, self._static.max(axis=0))
        self.observation_space = spaces.Box(
            low=np.concatenate([low, [0.0, 0.0]]).astype(np.float32),
            high=np.concatenate([high, [1.0, 1.0]]).astype(np.float32),
            dtype=np.float32,
        )
        self.action_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self._t = 0
        self._prev = 1.0
        self._w = np.zeros(self.n_layers, dtype=np.int64)
        self._a = np.zeros(self.n_layers, dtype=np.int64)
        self._done = True

    # ----- Gymnasium API ------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._t = 0
        self._prev = 1.0
        self._w[:] = 0
        self._a[:] = 0
        self._done = False
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise gym.error.ResetNeeded("MixedPrecisionEnv: the episode is over; call reset() before step()")
        a = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        if not np.isfinite(a):
            raise ValueError(f"MixedPrecisionEnv: action {a} is not finite; actions are fractions in [0, 1]")
        layer, is_weight = self._t // 2, self._t % 2 == 0
        bits = self._pin_bits[layer] if layer in self._pinned else action_to_bits(a, self._choices[layer])
        (self._w if is_weight else self._a)[layer] = bits
        self._prev = bits / self._max_bits[layer]
        self._t += 1
        if self._t < 2 * self.n_layers:
            return self._obs(), 0.0, False, False, {}
        self._done = True
        return self._finish()

    # ----- internals ----------------------------------------------------------------------
    def _obs(self) -> np.ndarray:
        layer = min(self._t // 2, self.n_layers - 1)
        is_weight = 1.0 if (self._t % 2 == 0 and self._t < 2 * self.n_layers) else 0.0
        return np.concatenate([self._static[layer], np.array([self._prev, is_weight], dtype=np.float32)])

    def reward_function(self, fp32_accuracy: float) -> Callable[[float], float]:
        """HAQ's reward of a measured accuracy: ``reward_scale * (acc - acc_fp32)`` in percent
        points (accuracies in [0, 1])."""
        scale = self.reward_scale

        def reward(acc: float) -> float:
            return scale * 100.0 * (acc - fp32_accuracy)

        return reward

    def measured_info(self, trial: Trial, fp32_accuracy: float) -> dict[str, Any]:
        """The measurement part of the last step's ``info`` (see Episode End)."""
        return {
            "measured": True,
            "budget_met": bool(trial.feasible),
            "accuracy": trial.accuracy,
            "fp32_accuracy": fp32_accuracy,
            **trial.cost.to_dict(),
            "budget_usage": self.problem.budget.usage(trial.cost),
            "trial": trial.index,
        }

    def _finish(self) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        p = self.problem
        proposed_w, proposed_a = self._w.copy(), self._a.copy()
        proposal_ok = p.feasible(proposed_w, proposed_a)
        w, a = p.enforce_budget(proposed_w, proposed_a)
        info: dict[str, Any] = {
            "w_bits": w, "a_bits": a,
            "proposed_w_bits": proposed_w, "proposed_a_bits": proposed_a,
            "proposal_met_budget": bool(proposal_ok),
        }
        if self.ledger is None:
            info["measured"] = False
            return self._obs(), 0.0, True, False, info
        fp32 = self.ledger.fp32_accuracy("val")
        trial = self.ledger.evaluate(Proposal(w, a, reward=self.reward_function(fp32)))
        info.update(self.measured_info(trial, fp32))
        assert trial.reward is not None  # the reward function always gives one
        return self._obs(), float(trial.reward), True, False, info
