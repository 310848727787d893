"""The two reference points of every table: chance (random) and the upper bound (oracle)."""

from __future__ import annotations

from typing import Any

import numpy as np

from qrag_agents.base import BaseAgent
from qrag_gym.document import Document


class RandomAgent(BaseAgent):
    """Selects a uniformly random available chunk; its own generator, so it never shifts the env's episodes.

    Keeps all T picks. In an evaluation the generator is reseeded per episode (``seed_episode``).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def seed_episode(self, seed: int) -> None:
        self.rng = np.random.default_rng([self.seed, seed])

    def act(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> int:
        return int(self.rng.choice(np.flatnonzero(info["action_mask"])))


class OracleAgent(BaseAgent):
    """Selects the supporting chunks in document order (read from ``info``): success 1.0 by construction.

    Privileged (``privileged = True``): the only built-in agent the runner gives the gold labels in
    ``info``. It keeps exactly the supporting chunks; the picks it makes after them (evaluation runs
    every episode to T) fill the step budget only.
    """

    privileged = True

    def act(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> int:
        remaining = [i for i in info["supporting_ids"] if info["action_mask"][i]]
        if remaining:
            return int(remaining[0])
        return int(np.flatnonzero(info["action_mask"])[0])  # filler after the facts: not kept

    def kept(self, info: dict[str, Any]) -> list[int]:
        return [i for i in info["selected_order"] if i in set(info["supporting_ids"])]
