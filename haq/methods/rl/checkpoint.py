"""RL checkpoints: the agent, its replay buffer and the loop's state, and how a search resumes.

Written to ``<run>/checkpoint/`` every ``checkpoint_every`` episodes, at the end, and when the
search is interrupted (SIGINT/SIGTERM, or a non-finite accuracy): ``state.json`` (episode
counter, generator state, reward baseline, what the checkpoint belongs to) names
``agent-<episode>.zip`` (SB3 ``save``; read back with ``set_parameters``, which loads only
tensors, with ``weights_only=True``) and ``replay-<episode>.npz`` (the buffer's arrays, loaded
with ``allow_pickle=False``). Nothing is unpickled. ``state.json`` is written last, so a crash
mid-checkpoint leaves the previous one.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from haq.atomic import atomic_write_bytes, atomic_write_json
from haq.errors import RunDirError
from haq.history import parse_bits_str, read_history_rows
from haq.ledger import Ledger
from haq.methods.rl.agent import HAQDDPG
from haq.problem import Proposal

CHECKPOINT_FORMAT = "haq-rl-checkpoint/1"


def save_checkpoint(folder: Path, agent: HAQDDPG, episode: int, rng_state: Mapping[str, Any],
                    identity: Mapping[str, Any]) -> None:
    """Write the agent, replay buffer and loop state as of the start of ``episode``."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{episode:06d}"
    buf = io.BytesIO()
    agent.save(buf)
    agent_file = atomic_write_bytes(folder / f"agent-{tag}.zip", buf.getvalue()).name
    buf = io.BytesIO()
    np.savez(buf, **agent.buffer.state_arrays())  # type: ignore[arg-type]  # numpy stubs read ** as allow_pickle
    replay_file = atomic_write_bytes(folder / f"replay-{tag}.npz", buf.getvalue()).name
    atomic_write_json(folder / "state.json", {
        "format": CHECKPOINT_FORMAT,
        "episode": int(episode),
        "agent": agent_file,
        "replay": replay_file,
        "rng": rng_state,
        "reward_baseline": agent.reward_baseline,
        "n_updates": int(agent._n_updates),
        **identity,
    })
    for old in [*folder.glob("agent-*.zip"), *folder.glob("replay-*.npz")]:
        if old.name not in (agent_file, replay_file):
            old.unlink(missing_ok=True)


def read_checkpoint(folder: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """``state.json`` of a checkpoint folder (None if there is none), checked against the
    search it is to be resumed into."""
    path = folder / "state.json"
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # cut short (a crash or a full disk): the search re-runs from its history instead
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint; delete {folder} to restart the search")
    for key, want in identity.items():
        have = state.get(key)
        if have != want:
            raise RunDirError(
                f"checkpoint {folder} belongs to another search ({key} {_show(key, have)}, this one "
                f"{_show(key, want)}); resume with the settings it was made with or choose another --out"
            )
    return state


def _show(key: str, value: Any) -> str:
    if key == "layers" and isinstance(value, list):
        return f"{len(value)} layers ({value[0] if value else ''} ...)"
    return repr(value)


def _history_rows(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    return read_history_rows(path)[1]


def _whole(agent: Path, replay: Path) -> bool:
    """Whether the agent zip and the replay npz are complete archives (every member's CRC
    checks), so that loading them cannot fail half-way and leave the agent half restored."""
    try:
        for archive in (agent, replay):
            with zipfile.ZipFile(archive) as z:
                if z.testzip() is not None:
                    return False
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False
    return True


def restore(folder: Path, agent: HAQDDPG, rng: np.random.Generator, ledger: Ledger,
            identity: dict[str, Any]) -> int:
    """Load the checkpoint in ``folder`` (if any) and re-enter its episodes into the ledger
    from history.csv (answered from the history, not measured). Returns the episode to
    continue from (0 when there is nothing to resume)."""
    state = read_checkpoint(folder, identity)
    if state is None:
        return 0
    episode = int(state["episode"])
    rows = _history_rows(folder.parent)
    if len(rows) < episode or any(int(r["trial"]) != i or r.get("status") for i, r in enumerate(rows[:episode])):
        return 0  # history shorter than the checkpoint: re-run from the start (replay answers)
    if not _whole(folder / str(state.get("agent")), folder / str(state.get("replay"))):
        return 0  # agent or replay file cut short: re-run from the start, answered from the history
    try:
        agent.set_parameters(str(folder / state["agent"]), exact_match=True, device=agent.device)
        with np.load(folder / state["replay"], allow_pickle=False) as arrays:
            agent.buffer.load_state_arrays(arrays)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise RunDirError(
            f"checkpoint {folder} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"delete {folder} to restart the search from its history"
        ) from None
    agent.reward_baseline = state["reward_baseline"]
    agent._n_updates = int(state.get("n_updates", 0))
    rng.bit_generator.state = state["rng"]
    ledger.evaluate_many([
        Proposal(parse_bits_str(row["w_bits"]), parse_bits_str(row["a_bits"]),
                 reward=float(row["reward"]) if row.get("reward") not in (None, "") else None)
        for row in rows[:episode]
    ])
    return episode
