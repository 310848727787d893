"""Frozen dense retrieval with the env's embedder: the paper's "RAG" and "multi-step RAG w/o FT".

Chunks are never encoded here: ``env.unwrapped.score(query)`` uses the chunk vectors the env encodes
once per episode (and the embedder's per-process cache); only the query text is encoded. Both
agents are deterministic and keep all T picks (no stop signal of their own).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from qrag_agents.base import BaseAgent
from qrag_gym.wrappers import state_text


class DenseAgent(BaseAgent):
    """Single-step top-k: rank by the question's vector once, then take the ranking in order."""

    def reset(self, obs: dict[str, Any], info: dict[str, Any], env: gym.Env) -> None:
        base = env.unwrapped
        self._query = base.embedder.encode([base.question], persist=False)[0]

    def act(self, obs: dict[str, Any], info: dict[str, Any], env: gym.Env) -> int:
        return int(np.argmax(env.unwrapped.score(self._query)))


class MultiStepDenseAgent(DenseAgent):
    """Multi-step without training: re-embed "question + selected chunks (document order)" every step."""

    def act(self, obs: dict[str, Any], info: dict[str, Any], env: gym.Env) -> int:
        base = env.unwrapped
        if info["selected_order"]:
            self._query = base.embedder.encode([state_text(base)], persist=False)[0]
        return int(np.argmax(base.score(self._query)))
