"""Wrappers: fixed-size views of the retrieval MDP for off-the-shelf RL libraries (Stable-Baselines3,
sb3-contrib), and the training-only reward shaping :class:`PerFactReward`.

The raw env has a ``Text`` question and a ``Discrete(max_chunks)`` action space whose size grows
with the document: neither fits an SB3 policy. :class:`ShortlistView` shows instead the top-K chunks
of a frozen embedder for the query "question + selected chunks" (the multi-step dense retriever's
ranking) as vectors, and acts with ``Discrete(K)``: slot ``i`` selects the ``i``-th candidate. Slot 0
is therefore exactly the untrained multi-step dense retriever; a policy can only improve on it by
reading the features. The features depend on K and the embedder size, never on the document length,
so a policy trained at 1K tokens runs unchanged at 1M.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from qrag_gym.document import Document
from qrag_gym.envs.retrieval import RetrievalEnv
from qrag_gym.validation import finite_float


def state_text(document: Document) -> str:
    """The multi-step retrieval query: the question, then the selected chunks in document order."""
    texts = document.texts
    return " ".join([document.question, *(texts[i] for i in sorted(document.selected))])


@dataclass(frozen=True)
class Shortlist:
    """One fixed-size view of the env's current state."""

    observation: np.ndarray
    """float32 features, see :class:`ShortlistFeatures` for the layout."""
    candidates: np.ndarray
    """chunk id behind each of the K slots, best first; -1 for an empty slot."""
    mask: np.ndarray
    """bool per slot: true where a candidate exists."""


class ShortlistFeatures:
    """Turns an episode's state (its :class:`~qrag_gym.document.Document`) into a :class:`Shortlist` of ``k`` candidates.

    Observation layout (all values in [-1, 1]), with ``d`` the embedder size:
    ``[state vector (d) | k candidate vectors (k*d) | k scores | k positions | k valid flags | step fraction]``.
    The state vector embeds :func:`state_text`; a candidate's score is its cosine with the state, its
    position its document position in [0, 1]. Chunk vectors come from ``document.vectors()`` (encoded
    once per episode by the env); only the state text is encoded per step.
    """

    def __init__(self, k: int, dim: int) -> None:
        if k < 1:
            raise ValueError(f"shortlist size k must be at least 1, got {k}")
        self.k, self.dim = int(k), int(dim)
        self.size = self.dim * (self.k + 1) + 3 * self.k + 1
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(self.size,), dtype=np.float32)

    def __call__(self, document: Document) -> Shortlist:
        state = document.encode(state_text(document))
        scores = document.score(state)
        available = int(np.isfinite(scores).sum())
        n = min(self.k, available)
        top = np.argsort(-scores, kind="stable")[:n]  # exact ties (repeated facts): earliest first, like argmax
        vectors = np.zeros((self.k, self.dim), dtype=np.float32)
        vectors[:n] = document.vectors(top)
        slot_scores = np.zeros(self.k, dtype=np.float32)
        slot_scores[:n] = scores[top]
        positions = np.zeros(self.k, dtype=np.float32)
        positions[:n] = top / max(document.num_chunks - 1, 1)
        mask = np.zeros(self.k, dtype=bool)
        mask[:n] = True
        step_fraction = len(document.selected) / document.max_steps
        observation = np.concatenate(
            [state, vectors.ravel(), slot_scores, positions, mask.astype(np.float32), [step_fraction]]
        ).astype(np.float32)
        candidates = np.full(self.k, -1, dtype=np.int64)
        candidates[:n] = top
        return Shortlist(np.clip(observation, -1.0, 1.0), candidates, mask)


class ShortlistView(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """``Box`` features of the top-``k`` candidates and ``Discrete(k)`` actions, with ``action_masks()``.

    An empty slot (fewer than ``k`` chunks left) is never passed to the env as an invalid action:
    it is remapped to slot 0, the best candidate, and ``info["remapped_action"]`` is set. That keeps
    unmasked learners such as SB3's DQN safe; maskable ones never pick it. ``info["candidates"]``
    lists the chunk id behind each slot of the *new* observation.
    """

    def __init__(self, env: gym.Env, k: int = 8) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, k=k)  # so check_env and make_vec can rebuild it
        gym.Wrapper.__init__(self, env)
        base = env.unwrapped
        if not isinstance(base, RetrievalEnv):
            raise TypeError(f"ShortlistView needs a RetrievalEnv, got {type(base).__name__}")
        self.features = ShortlistFeatures(k, base.embedder.dim)
        self.observation_space = self.features.observation_space
        self.action_space = spaces.Discrete(self.features.k)
        self._shortlist: Shortlist | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        _, info = self.env.reset(seed=seed, options=options)
        return self._view(info, remapped=False)

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._shortlist is None:
            raise RuntimeError("call reset() before step()")
        slot = int(action)
        if not 0 <= slot < self.features.k:
            raise ValueError(f"action {action!r} is outside Discrete({self.features.k})")
        remapped = not self._shortlist.mask[slot]
        chunk = int(self._shortlist.candidates[0 if remapped else slot])
        _, reward, terminated, truncated, info = self.env.step(chunk)
        observation, info = self._view(info, remapped)
        return observation, reward, terminated, truncated, info

    def _view(self, info: dict[str, Any], remapped: bool) -> tuple[np.ndarray, dict[str, Any]]:
        self._shortlist = self.features(Document(self.env.unwrapped))
        info = {**info, "remapped_action": remapped, "candidates": self._shortlist.candidates.copy()}
        return self._shortlist.observation, info

    def action_masks(self) -> np.ndarray:
        """Valid slots of the current shortlist (the method sb3-contrib's MaskablePPO calls)."""
        if self._shortlist is None:
            raise RuntimeError("call reset() before action_masks()")
        return self._shortlist.mask.copy()


class PerFactReward(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Training-only shaping: ``bonus`` more reward on each step that selects a supporting chunk.

    The authors' code has this option (off in their configs); on tasks whose full reward is rarely found
    by chance it gives a learner something to follow (qa3 on a CPU collapsed without it). It reads the gold
    labels (``info["hits"]``), so it is for training envs only: evaluation never wraps an env in it.
    """

    def __init__(self, env: gym.Env, bonus: float) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, bonus=bonus)
        super().__init__(env)
        self.bonus = finite_float("bonus", bonus)
        self._hits = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._hits = len(info["hits"])
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        found, self._hits = len(info["hits"]) - self._hits, len(info["hits"])
        return obs, float(reward) + self.bonus * found, terminated, truncated, info


__all__ = ["PerFactReward", "Shortlist", "ShortlistFeatures", "ShortlistView", "state_text"]
