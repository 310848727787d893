"""Q-RAG as a benchmark agent: greedy actions from a trained model, the Q-threshold stop as ``kept``.

``QRAGAgent(model="runs/qa2/best")`` uses one model for every task; ``QRAGAgent(models_dir="runs")``
loads ``runs/<task>/best`` for whichever task an episode comes from, so one agent name covers a
whole qa1..qa5 benchmark grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import torch

from agents.qrag.checkpoint import load_model
from agents.qrag.inference import embed_document, keep_until_threshold, step_q_values
from agents.qrag.networks import QNetwork


class QRAGAgent:
    """Greedy ``argmax_a Q(s, a)`` over the available chunks, chunk embeddings computed once per episode."""

    def __init__(self, model: str | None = None, models_dir: str = "runs", threshold: float | None = None) -> None:
        self.model, self.models_dir, self.threshold = model, Path(models_dir), threshold
        self._networks: dict[str, QNetwork] = {}
        self._max_q: list[float] = []

    def _network_for(self, task: str) -> QNetwork:
        folder = Path(self.model) if self.model else self.models_dir / task / "best"
        key = str(folder)
        if key not in self._networks:
            if not folder.is_dir():
                raise FileNotFoundError(f"no trained Q-RAG model for {task} at {folder}: train one with "
                                        f"`qrag-train --task {task} --out {self.models_dir / task}`")
            self._networks[key] = load_model(folder)
        return self._networks[key]

    def reset(self, obs: dict[str, Any], info: dict[str, Any], env: gym.Env) -> None:
        self.network = self._network_for(info["task"])
        self._chunks = embed_document(self.network, env.unwrapped.chunks)
        self._max_q = []

    @torch.no_grad()
    def act(self, obs: dict[str, Any], info: dict[str, Any], env: gym.Env) -> int:
        base = env.unwrapped
        q = step_q_values(self.network, self._chunks, base.question, base.chunks, list(info["selected_order"]), info["action_mask"])
        action = int(q.argmax())
        self._max_q.append(float(q[action]))
        return action

    def kept(self, info: dict[str, Any]) -> Sequence[int]:
        """The selections before the first step whose max-Q fell to the threshold (§7.2)."""
        threshold = self.network.config.q_threshold if self.threshold is None else self.threshold
        return keep_until_threshold(list(info["selected_order"]), self._max_q, threshold)
