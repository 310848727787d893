"""Greedy Q-RAG episodes, the Q-threshold stop (qrag-method.md §7.2) and multi-length evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.qrag.config import QRAGConfig
from agents.qrag.networks import QNetwork
from agents.qrag.rotary import relative_positions
from qrag_gym.envs.retrieval import RetrievalEnv
from qrag_gym.data.babi import TASKS
from qrag_gym.metrics import retrieval_metrics
from qrag_gym.readers import answer_babi, answer_matches

CHUNK_BATCH = 8192


@dataclass
class GreedyEpisode:
    """What one greedy episode selected and the max-Q logged at each step."""

    selected: list[int]
    max_q: list[float]
    info: dict


def keep_until_threshold(selected: list[int], max_q: list[float], threshold: float) -> list[int]:
    """Selections before the first step whose max-Q is at or below ``threshold``.

    With the shaped reward, Q falls toward 0 once every supporting chunk is in the state, so the
    threshold tells "still missing facts" from "done" without a STOP action.
    """
    kept = []
    for index, value in zip(selected, max_q):
        if value <= threshold:
            break
        kept.append(index)
    return kept


@torch.no_grad()
def embed_document(network: QNetwork, chunks: tuple[str, ...]) -> torch.Tensor:
    """E_a for every chunk of a document, in batches so a 10M-token document stays bounded."""
    parts = [network.embed_chunks(list(chunks[i : i + CHUNK_BATCH])) for i in range(0, len(chunks), CHUNK_BATCH)]
    return torch.cat(parts)


@torch.no_grad()
def step_q_values(network: QNetwork, chunk_embeddings: torch.Tensor, question: str, chunks: tuple[str, ...],
                  selected: list[int], action_mask) -> torch.Tensor:
    """Q of every chunk in the current state (``-inf`` where masked): one state forward, one re-rotation."""
    config: QRAGConfig = network.config
    state = network.embed_states([question], [[chunks[i] for i in sorted(selected)]])
    rho = relative_positions(len(chunks), selected, config.position_step, config.position_span, config.integer_positions)
    q = network.q_halves(state, chunk_embeddings, torch.from_numpy(rho).float().to(network.device)).sum(-1)
    valid = torch.from_numpy(np.asarray(action_mask[: len(chunks)], dtype=bool)).to(q.device)
    return q.masked_fill(~valid, -torch.inf)


@torch.no_grad()
def greedy_episode(network: QNetwork, env: RetrievalEnv, seed: int | None = None) -> GreedyEpisode:
    """Run one episode choosing ``argmax_a Q(s, a)`` until the env ends it."""
    _, info = env.reset(seed=seed)
    chunks = embed_document(network, env.chunks)
    selected: list[int] = []
    max_q: list[float] = []
    done = False
    while not done:
        q = step_q_values(network, chunks, env.question, env.chunks, selected, env.action_masks())
        action = int(q.argmax())
        max_q.append(float(q[action]))
        selected.append(action)
        _, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    return GreedyEpisode(selected, max_q, info)


def evaluate(network: QNetwork, env: RetrievalEnv, episodes: int, seed: int = 0, threshold: float | None = None) -> dict[str, float]:
    """Mean metrics over ``episodes`` greedy episodes.

    F1 and the bAbI reader's answer accuracy use the set kept after the Q-threshold stop.
    """
    threshold = network.config.q_threshold if threshold is None else threshold
    rows = []
    for index in range(episodes):
        episode = greedy_episode(network, env, seed=seed + index)
        kept = keep_until_threshold(episode.selected, episode.max_q, threshold)
        metrics = retrieval_metrics(episode.selected, episode.info["supporting_ids"], kept=kept)
        metrics["kept"] = float(len(kept))
        if episode.info["task"] in TASKS:  # the exact reader, on the kept facts in document order
            facts = [env.chunks[i] for i in sorted(kept)]
            answer = answer_babi(episode.info["task"], episode.info["question"], facts)
            metrics["answer_accuracy"] = float(answer_matches(answer, episode.info["answer"]))
        rows.append(metrics)
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
