"""Runs one agent over the episodes of one benchmark cell and measures each episode.

A cell is (agent, task, length, seed). Its episodes are the env's episodes for reset seeds
``seed * EPISODE_SEED_STRIDE + i``, so every agent is measured on exactly the same documents; and since
the env draws the bAbI story first, episode ``i`` asks the same question at every length, hidden in
more noise: the length comparison is paired.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym

from agents.base import Agent, kept_chunks
from qrag_gym.metrics import retrieval_metrics
from qrag_gym.readers import answer_babi, answer_matches

EPISODE_SEED_STRIDE = 1_000_003
LENGTHS = {"1K": 1_000, "4K": 4_000, "32K": 32_000, "128K": 128_000, "1M": 1_000_000, "10M": 10_000_000}
"""Length labels of the paper's tables -> ``context_tokens``."""


def parse_length(text: str) -> tuple[str, int]:
    """``"4K"`` -> ``("4K", 4000)``; also plain token counts (``"2500"``) and ``k``/``m`` suffixes."""
    label = text.strip().upper()
    if label in LENGTHS:
        return label, LENGTHS[label]
    scale = {"K": 1_000, "M": 1_000_000}.get(label[-1:], 1)
    digits = label[:-1] if scale > 1 else label
    try:
        tokens = int(float(digits) * scale)
    except ValueError:
        raise ValueError(f"bad length {text!r}: use one of {', '.join(LENGTHS)} or a token count like 2500") from None
    if tokens < 1:
        raise ValueError(f"bad length {text!r}: must be positive")
    return label, tokens


@dataclass(frozen=True)
class Cell:
    """One benchmark cell; ``length`` is the label, ``tokens`` the ``context_tokens`` asked for."""

    agent: str
    task: str
    length: str
    tokens: int
    seed: int
    episodes: int

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.agent, self.task, self.length, self.seed)


def run_episode(agent: Agent, env: gym.Env, reset_seed: int) -> dict[str, Any]:
    """Play one episode: metrics from :func:`retrieval_metrics`, the exact bAbI reader's answer from the
    kept chunks, and the seconds spent in the agent and env steps.

    The clock starts after ``env.reset`` (document assembly is the benchmark's cost, not the agent's)
    and includes ``agent.reset``, where agents build per-episode indexes and chunks get encoded.
    """
    obs, info = env.reset(seed=reset_seed)
    start = time.perf_counter()
    agent.reset(obs, info, env)
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(agent.act(obs, info, env))
        done = terminated or truncated
    seconds = time.perf_counter() - start
    kept = kept_chunks(agent, info)
    record: dict[str, Any] = retrieval_metrics(info["selected_order"], info["supporting_ids"], kept)
    chunks = env.unwrapped.chunks
    facts = [chunks[i] for i in sorted(kept)]  # the reader follows the story: document order
    predicted = answer_babi(info["task"], info["question"], facts)
    record.update(seconds=seconds, answer_correct=float(answer_matches(predicted, info["answer"])),
                  k=len(info["supporting_ids"]), num_chunks=info["num_chunks"], num_tokens=info["num_tokens"],
                  source=info["source"], selected=list(info["selected_order"]), kept=sorted(kept))
    return record


def run_cell(cell: Cell, agent: Agent, env: gym.Env, on_episode: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    """Every episode of ``cell``, as flat records (cell fields first)."""
    records = []
    for index in range(cell.episodes):
        reset_seed = cell.seed * EPISODE_SEED_STRIDE + index
        measured = run_episode(agent, env, reset_seed)
        records.append({"agent": cell.agent, "task": cell.task, "length": cell.length, "context_tokens": cell.tokens,
                        "seed": cell.seed, "episode": index, "reset_seed": reset_seed, **measured})
        on_episode()
    return records
