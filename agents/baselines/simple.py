"""The two reference points of every table: chance (random) and the upper bound (oracle)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from agents.base import BaseAgent


class RandomAgent(BaseAgent):
    """Selects a uniformly random available chunk; its own generator, so it never shifts the env's episodes."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: dict[str, Any], info: dict[str, Any], env: gym.Env) -> int:
        return int(self.rng.choice(np.flatnonzero(info["action_mask"])))


class OracleAgent(BaseAgent):
    """Selects the supporting chunks in document order (read from ``info``): success 1.0 by construction."""

    def act(self, obs: dict[str, Any], info: dict[str, Any], env: gym.Env) -> int:
        remaining = [i for i in info["supporting_ids"] if info["action_mask"][i]]
        if remaining:
            return int(remaining[0])
        return int(np.flatnonzero(info["action_mask"])[0])  # only reached with never_terminate
