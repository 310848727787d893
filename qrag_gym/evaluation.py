"""The one evaluation path: every benchmark table, ``qrag-evaluate`` and validation during training.

What a number means, for every agent alike:

- **Episodes run to the step budget T.** Evaluation envs are made with ``never_terminate=True``
  (:func:`make_eval_env`); :func:`run_episode` refuses any other env. An env that ends an episode
  because the gold facts are in would hand every agent an oracle stop.
- **Agents see what a policy may use.** ``agent.reset``/``act``/``kept`` get the observation, the info
  without the gold labels (:data:`LABEL_INFO_KEYS`; :func:`agent_info`) and a read-only
  :class:`~qrag_gym.document.Document` of the episode, never the env. An agent whose class declares
  ``privileged = True`` (the oracle, an upper bound by construction) gets the labels explicitly; the
  metrics always read them from the env's own info.
- **The agent decides what it keeps.** ``agent.kept(info)`` (optional; by default every one of the T
  picks) is the set handed to the reader: Q-RAG keeps the picks before its Q-threshold stop, the
  baselines keep all T picks. success@k reads the first k picks, success@T all picks, and
  precision/recall/F1 and the reader's answer read the kept set.
- **Episodes are paired across agents and lengths.** Episode ``i`` of a cell with seed ``s`` resets
  the env with seed ``s * EPISODE_SEED_STRIDE + i``. Where the split has a fixed question set (bAbI,
  HotpotQA) it asks question ``order_s[i % n]`` of a fixed permutation per seed, so ``n`` episodes
  walk every question once, fewer episodes are distinct random questions, and another seed draws
  another sample; the same question is then hidden in more noise at a longer length.
- **A cell is a pure function of its settings.** Before each episode an agent with a
  ``seed_episode(seed)`` method gets the episode's reset seed: random tie-breaks then never depend on
  which cells ran before.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, Sequence

import gymnasium as gym
import numpy as np

from qrag_gym.document import Document
from qrag_gym.metrics import retrieval_metrics, ruler_string_match, wilson_interval
from qrag_gym.readers import answer_babi, answer_matches
from qrag_gym.tasks import ENV_IDS, NATURAL_LENGTH, default_eval_split, env_kwargs, has_lengths, task_family

EPISODE_SEED_STRIDE = 1_000_003
QUESTION_ORDER_SEED = 0
"""Seed 0's permutation of a split's questions comes from ``default_rng(QUESTION_ORDER_SEED)``, seed
``s``'s from ``default_rng(QUESTION_ORDER_SEED + s)``."""
LABEL_INFO_KEYS = frozenset({"answer", "answers", "supporting_ids", "hits", "completed"})
"""The env's ``info`` keys that give the gold labels away: the answer(s), the supporting chunk ids, and
what is computed from them (``hits``: the supporting chunks selected; ``completed``: all of them are)."""
RATE_METRICS = ("success_at_k", "success_at_t", "answer_correct")
MEAN_METRICS = (*RATE_METRICS, "precision", "recall", "f1", "num_kept", "steps", "seconds")


class EvaluationError(ValueError):
    """An env or agent that the evaluation protocol cannot measure honestly; the message says why."""


def make_eval_env(task: str, tokens: int | None = None, split: str = "validation", *, num_sentences: int | None = None,
                  max_steps: int | None = None, data_dir: str | None = None, embedder: Any = None) -> gym.Env:
    """The env of ``task`` as every evaluation sees it: held-out ``split``, run to T (``never_terminate``).

    BABILong takes a length in ``tokens`` or in ``num_sentences`` (training validation's unit); NIAH
    in ``tokens``; HotpotQA has one natural length. ``max_steps``, ``data_dir`` and ``embedder``
    default to the env's own.
    """
    kwargs = env_kwargs(task, tokens, split)
    if num_sentences is not None:
        if task_family(task) != "babilong":
            raise ValueError(f"num_sentences is a BABILong length; {task} takes context tokens")
        kwargs.update(context_tokens=None, num_sentences=num_sentences)
    optional = {"max_steps": max_steps, "data_dir": data_dir, "embedder": embedder}
    kwargs.update({key: value for key, value in optional.items() if value is not None})
    return gym.make(ENV_IDS[task_family(task)], never_terminate=True, **kwargs)


def score_answer(family: str, info: dict[str, Any], facts: list[str]) -> float | None:
    """The family's answer score from the kept chunks (document order); ``None`` where there is no reader."""
    if family == "babilong":
        return float(answer_matches(answer_babi(info["task"], info["question"], facts), info["answer"]))
    if family == "niah":
        return float(ruler_string_match(" ".join(facts), info["answers"]))
    return None


def is_privileged(agent: Any) -> bool:
    """Whether ``agent`` declared that it reads the gold labels (a class attribute ``privileged = True``)."""
    return getattr(agent, "privileged", False) is True


def agent_info(agent: Any, info: dict[str, Any]) -> dict[str, Any]:
    """The ``info`` an agent is given: the env's, less :data:`LABEL_INFO_KEYS` unless the agent is privileged."""
    if is_privileged(agent):
        return dict(info)
    return {key: value for key, value in info.items() if key not in LABEL_INFO_KEYS}


def kept_chunks(agent: Any, info: dict[str, Any]) -> list[int]:
    """``agent.kept`` (given :func:`agent_info` of ``info``) when the agent defines it, else every selection."""
    kept = getattr(agent, "kept", None)
    chosen = list(kept(agent_info(agent, info))) if callable(kept) else list(info["selected_order"])
    if not set(chosen) <= set(info["selected_order"]):
        raise EvaluationError(f"{type(agent).__name__}.kept() returned chunks it never selected: "
                              f"{sorted(set(chosen) - set(info['selected_order']))}")
    return chosen


@lru_cache(maxsize=64)
def question_order(count: int, seed: int = 0) -> np.ndarray:
    """The fixed order in which cell seed ``seed`` walks a split of ``count`` questions."""
    return np.random.default_rng(QUESTION_ORDER_SEED + seed).permutation(count)


def reset_options(env: gym.Env, reset_seed: int) -> tuple[dict[str, Any] | None, int | None]:
    """``reset`` options that pick the episode's question where the split has a fixed set: episode ``i``
    of cell seed ``s`` (``reset_seed = s * EPISODE_SEED_STRIDE + i``) asks ``question_order(n, s)[i % n]``."""
    count = getattr(env.unwrapped, "num_questions", None)
    if not count:
        return None, None
    seed, episode = divmod(reset_seed, EPISODE_SEED_STRIDE)
    index = int(question_order(count, seed)[episode % count])
    return {"question_index": index}, index


def run_episode(agent: Any, env: gym.Env, reset_seed: int, task: str | None = None) -> dict[str, Any]:
    """Play one evaluation episode and measure it (see the module docstring for the protocol).

    The clock starts after ``env.reset`` (document assembly is the benchmark's cost, not the agent's)
    and includes ``agent.reset``, where agents build per-episode indexes and chunks get encoded.
    ``task`` picks the reader (default: the env's ``info["task"]``). The agent gets ``obs``,
    :func:`agent_info` and a :class:`~qrag_gym.document.Document`; the metrics read the full ``info``.
    """
    base = env.unwrapped
    if not getattr(base, "never_terminate", False):
        raise EvaluationError(f"{type(base).__name__} may end an episode when the gold facts are in (an oracle stop): "
                              "evaluate on an env made by qrag_gym.evaluation.make_eval_env, or with never_terminate=True")
    options, question = reset_options(env, reset_seed)
    obs, info = env.reset(seed=reset_seed, options=options)
    family = task_family(task if task is not None else info["task"])
    seed_episode = getattr(agent, "seed_episode", None)
    if callable(seed_episode):
        seed_episode(reset_seed)
    document = Document(base)
    start = time.perf_counter()
    agent.reset(obs, agent_info(agent, info), document)
    terminated = truncated = False
    while not (terminated or truncated):
        obs, _, terminated, truncated, info = env.step(agent.act(obs, agent_info(agent, info), document))
    seconds = time.perf_counter() - start
    if terminated:
        raise EvaluationError(f"{type(base).__name__} terminated an evaluation episode before T")
    kept = kept_chunks(agent, info)
    record: dict[str, Any] = retrieval_metrics(info["selected_order"], info["supporting_ids"], kept)
    facts = [base.chunks[i] for i in sorted(kept)]  # the reader follows the story: document order
    record.update(num_kept=len(kept), answer_correct=score_answer(family, info, facts), seconds=seconds,
                  k=len(info["supporting_ids"]), num_chunks=info["num_chunks"], num_tokens=info["num_tokens"],
                  source=info["source"], split=info.get("split"), question_index=question,
                  supporting=sorted(info["supporting_ids"]), selected=list(info["selected_order"]), kept=sorted(kept))
    return record


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

    def reset_seeds(self) -> range:
        start = self.seed * EPISODE_SEED_STRIDE
        return range(start, start + self.episodes)


def plan_cells(agents: Sequence[str], tasks: Sequence[str], lengths: Sequence[tuple[str, int]], seeds: Sequence[int],
               episodes: int, episodes_at: dict[str, int] | None = None) -> list[Cell]:
    """Every cell, shortest length first (long contexts are the expensive, last ones); a task with one
    natural length (HotpotQA) gets one cell per agent and seed, length :data:`NATURAL_LENGTH`, first.
    ``episodes_at`` overrides the episode count at given length labels."""
    at = episodes_at or {}
    natural = [Cell(agent, task, NATURAL_LENGTH, None, seed, at.get(NATURAL_LENGTH, episodes))
               for task in tasks if not has_lengths(task) for seed in seeds for agent in agents]
    return natural + [Cell(agent, task, label, tokens, seed, at.get(label, episodes))
                      for label, tokens in sorted(lengths, key=lambda length: length[1])
                      for task in tasks if has_lengths(task) for seed in seeds for agent in agents]


def resolve_split(task: str, requested: str, data_dir: str | None = None) -> str:
    """``requested`` as is, or for ``"auto"`` the task's default evaluation split (printing the notice
    when that is not the official test set although the task has one)."""
    if requested != "auto":
        return requested
    split, notice = default_eval_split(task, data_dir)
    if notice:
        print(notice, file=sys.stderr)
    return split


def run_episodes(agent: Any, env: gym.Env, reset_seeds: Iterable[int], task: str,
                 on_episode: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    """:func:`run_episode` for each reset seed; records carry ``episode`` (the position) and ``reset_seed``."""
    records = []
    for index, reset_seed in enumerate(reset_seeds):
        records.append({"episode": index, "reset_seed": reset_seed, **run_episode(agent, env, reset_seed, task)})
        on_episode()
    return records


def run_cell(cell: Cell, agent: Any, env: gym.Env, on_episode: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    """Every episode of ``cell``, as flat records (cell fields first)."""
    fields = {"agent": cell.agent, "task": cell.task, "length": cell.length, "context_tokens": cell.tokens, "seed": cell.seed}
    return [{**fields, **record} for record in run_episodes(agent, env, cell.reset_seeds(), cell.task, on_episode)]


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Means of every metric over ``records`` (``None`` values skipped), ``episodes``, and the Wilson
    95% interval of each success rate as ``<metric>_low`` / ``<metric>_high``."""
    rows = list(records)
    summary: dict[str, Any] = {"episodes": len(rows)}
    for metric in MEAN_METRICS:
        values = [float(r[metric]) for r in rows if r.get(metric) is not None]
        if not values:
            continue
        summary[metric] = float(np.mean(values))
        if metric in RATE_METRICS:
            summary[f"{metric}_low"], summary[f"{metric}_high"] = wilson_interval(float(np.sum(values)), len(values))
    return summary


def group_summaries(records: Sequence[dict[str, Any]], keys: Sequence[str] = ("agent", "task", "length")) -> list[dict[str, Any]]:
    """:func:`summarize` per distinct value of ``keys``, in first-seen order."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record[k] for k in keys), []).append(record)
    return [{**dict(zip(keys, key)), **summarize(rows)} for key, rows in groups.items()]


__all__ = ["Cell", "EPISODE_SEED_STRIDE", "EvaluationError", "LABEL_INFO_KEYS", "agent_info", "group_summaries",
           "is_privileged", "kept_chunks", "make_eval_env", "plan_cells", "resolve_split", "run_cell", "run_episode", "run_episodes", "summarize"]
