"""Runs one agent over the episodes of one benchmark cell and measures each episode.

A cell is (agent, task, length, seed). Its episodes are the env's episodes for reset seeds
``seed * EPISODE_SEED_STRIDE + i``, so every agent is measured on exactly the same documents; and since
the env draws the bAbI story first, episode ``i`` asks the same question at every length, hidden in
more noise: the length comparison is paired.

Tasks come in three families (:func:`task_family`): BABILong ``qa1``..``qa5``, RULER NIAH
``niah:<variant>`` and ``hotpotqa``. HotpotQA has one natural length (``length`` is
:data:`NATURAL_LENGTH`, ``context_tokens`` is ``None``) and a fixed validation question set, which the
harness walks in order (episode ``i`` is question ``reset_seed % n``) instead of sampling it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym

from agents.base import Agent, kept_chunks
from qrag_gym.data.babi import TASKS as BABI_TASKS
from qrag_gym.data.niah import VARIANTS as NIAH_VARIANTS
from qrag_gym.metrics import retrieval_metrics, ruler_string_match
from qrag_gym.readers import answer_babi, answer_matches

EPISODE_SEED_STRIDE = 1_000_003
LENGTHS = {"1K": 1_000, "4K": 4_000, "32K": 32_000, "128K": 128_000, "1M": 1_000_000, "10M": 10_000_000}
"""Length labels of the paper's tables -> ``context_tokens``."""
NATURAL_LENGTH = "doc"
"""The length label of tasks with one natural length (HotpotQA): lengths asked for are ignored."""
NIAH_PREFIX = "niah:"
FAMILIES = ("babilong", "niah", "hotpotqa")
ENV_IDS = {"babilong": "QRAG-Babilong-v0", "niah": "QRAG-NIAH-v0", "hotpotqa": "QRAG-HotpotQA-v0"}
READERS = {"babilong": "qrag_gym.readers.answer_babi (exact bAbI reader on the kept chunks, document order)",
           "niah": "qrag_gym.metrics.ruler_string_match of the gold values in the kept chunks' text (document order)",
           "hotpotqa": "none (needs an LLM reader): answer_correct is null, fact metrics only"}
TASK_NAMES = (*BABI_TASKS, *(NIAH_PREFIX + v for v in NIAH_VARIANTS), "hotpotqa")
"""Every task name the harness accepts."""


def task_family(task: str) -> str:
    """``"qa2"`` -> ``"babilong"``, ``"niah:multivalue"`` -> ``"niah"``, ``"hotpotqa"`` -> ``"hotpotqa"``."""
    if task in BABI_TASKS:
        return "babilong"
    if task.startswith(NIAH_PREFIX) and task[len(NIAH_PREFIX):] in NIAH_VARIANTS:
        return "niah"
    if task == "hotpotqa":
        return "hotpotqa"
    raise ValueError(f"unknown task {task!r}: choose from {', '.join(BABI_TASKS)}, "
                     f"{', '.join(NIAH_PREFIX + v for v in NIAH_VARIANTS)}, hotpotqa")


def env_kwargs(task: str, tokens: int | None, split: str) -> dict[str, Any]:
    """``gym.make`` keyword arguments of a task's env (without ``max_steps`` and ``data_dir``)."""
    family = task_family(task)
    if family == "babilong":
        return {"task": task, "context_tokens": tokens, "split": split}
    if family == "niah":
        return {"variant": task[len(NIAH_PREFIX):], "context_tokens": tokens, "split": split}
    return {"split": split}


def has_lengths(task: str) -> bool:
    return task_family(task) != "hotpotqa"


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
    """One benchmark cell; ``length`` is the label, ``tokens`` the ``context_tokens`` asked for
    (``None`` for a task with one natural length)."""

    agent: str
    task: str
    length: str
    tokens: int | None
    seed: int
    episodes: int

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.agent, self.task, self.length, self.seed)


def score_answer(family: str, info: dict[str, Any], facts: list[str]) -> float | None:
    """The family's answer score from the kept chunks (document order); ``None`` where there is no reader."""
    if family == "babilong":
        return float(answer_matches(answer_babi(info["task"], info["question"], facts), info["answer"]))
    if family == "niah":
        return float(ruler_string_match(" ".join(facts), info["answers"]))
    return None


def run_episode(agent: Agent, env: gym.Env, reset_seed: int, task: str | None = None) -> dict[str, Any]:
    """Play one episode: metrics from :func:`retrieval_metrics`, the answer score of the task's reader
    (:func:`score_answer`) from the kept chunks, and the seconds spent in the agent and env steps.

    The clock starts after ``env.reset`` (document assembly is the benchmark's cost, not the agent's)
    and includes ``agent.reset``, where agents build per-episode indexes and chunks get encoded.
    ``task`` picks the reader (default: the env's ``info["task"]``, a bAbI task); an env with
    ``episode_at`` and a fixed question list (HotpotQA) is walked in order: question ``reset_seed % n``.
    """
    base = env.unwrapped
    options = None
    if callable(getattr(base, "episode_at", None)) and hasattr(base, "questions"):
        options = {"episode": base.episode_at(reset_seed % len(base.questions))}
    obs, info = env.reset(seed=reset_seed, options=options)
    family = task_family(task if task is not None else info["task"])
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
    record.update(seconds=seconds, answer_correct=score_answer(family, info, facts),
                  k=len(info["supporting_ids"]), num_chunks=info["num_chunks"], num_tokens=info["num_tokens"],
                  source=info["source"], selected=list(info["selected_order"]), kept=sorted(kept))
    return record


def run_cell(cell: Cell, agent: Agent, env: gym.Env, on_episode: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    """Every episode of ``cell``, as flat records (cell fields first)."""
    records = []
    for index in range(cell.episodes):
        reset_seed = cell.seed * EPISODE_SEED_STRIDE + index
        measured = run_episode(agent, env, reset_seed, cell.task)
        records.append({"agent": cell.agent, "task": cell.task, "length": cell.length, "context_tokens": cell.tokens,
                        "seed": cell.seed, "episode": index, "reset_seed": reset_seed, **measured})
        on_episode()
    return records
