"""Off-the-shelf RL baselines: sb3-contrib MaskablePPO and SB3 DQN trained on :class:`ShortlistView`.

They learn to pick one of the frozen embedder's top-K candidates for "question + selected" from
vector features, so their floor is the multi-step dense retriever (slot 0) and what they add over it
is what a generic RL library can learn without touching the encoder. A policy trained at one length
acts at any other (the view's size does not depend on the document). Both act greedily and keep
all T picks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import DQN
from stable_baselines3.common.base_class import BaseAlgorithm

from qrag_agents.base import BaseAgent
from qrag_gym.document import Document
from qrag_gym.wrappers import Shortlist, ShortlistFeatures, ShortlistView


class SB3Agent(BaseAgent, ABC):
    """Shared plumbing: train through the view, act on the episode's document by rebuilding the view each step."""

    algorithm: ClassVar[type[BaseAlgorithm]]

    def __init__(self, seed: int = 0, k: int = 8, total_timesteps: int = 3_000, verbose: int = 0) -> None:
        self.seed, self.k, self.total_timesteps, self.verbose = seed, k, total_timesteps, verbose
        self.model: BaseAlgorithm | None = None
        self._features: ShortlistFeatures | None = None

    @abstractmethod
    def _build(self, view: ShortlistView) -> BaseAlgorithm:
        """The SB3 model, configured for this algorithm, on the view."""

    def learn(self, env: gym.Env, total_timesteps: int | None = None) -> None:
        """Train on ``env`` (a training-split retrieval env) for ``total_timesteps`` view steps."""
        view = ShortlistView(env, k=self.k)
        self._features = view.features
        self.model = self._build(view)
        self.model.learn(total_timesteps=total_timesteps or self.total_timesteps)

    def save(self, path: str | Path) -> None:
        self._require_model().save(path)

    def load(self, path: str | Path) -> None:
        self.model = self.algorithm.load(path)

    def _require_model(self) -> BaseAlgorithm:
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__} has no policy yet: call learn(env, steps) or load(path) first")
        return self.model

    @abstractmethod
    def _choose(self, shortlist: Shortlist) -> int:
        """The slot the trained policy picks (greedy), among the valid ones."""

    def act(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> int:
        self._require_model()
        if self._features is None:
            self._features = ShortlistFeatures(self.k, document.dim)
        shortlist = self._features(document)
        slot = self._choose(shortlist)
        return int(shortlist.candidates[slot if shortlist.mask[slot] else 0])


class MaskablePPOAgent(SB3Agent):
    """sb3-contrib MaskablePPO: empty shortlist slots are masked out of the policy."""

    algorithm = MaskablePPO

    def _build(self, view: ShortlistView) -> BaseAlgorithm:
        return MaskablePPO("MlpPolicy", view, n_steps=256, batch_size=64, n_epochs=10, learning_rate=3e-4,
                           ent_coef=0.01, gamma=0.99, seed=self.seed, verbose=self.verbose, device="cpu")

    def _choose(self, shortlist: Shortlist) -> int:
        action, _ = self.model.predict(shortlist.observation, action_masks=shortlist.mask, deterministic=True)
        return int(action)


class DQNAgent(SB3Agent):
    """SB3 DQN: trains unmasked (the view remaps empty slots), acts greedily over the valid slots only."""

    algorithm = DQN

    def _build(self, view: ShortlistView) -> BaseAlgorithm:
        return DQN("MlpPolicy", view, learning_rate=5e-4, buffer_size=20_000, learning_starts=200,
                   batch_size=64, train_freq=1, target_update_interval=250, exploration_fraction=0.3,
                   gamma=0.99, seed=self.seed, verbose=self.verbose, device="cpu")

    def _choose(self, shortlist: Shortlist) -> int:
        observation, _ = self.model.policy.obs_to_tensor(shortlist.observation)
        with torch.no_grad():
            q_values = self.model.q_net(observation)[0].cpu().numpy()
        return int(np.argmax(np.where(shortlist.mask, q_values, -np.inf)))
