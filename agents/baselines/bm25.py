"""Lexical retrieval with bm25s: the classic baseline, single-step and multi-step.

The index is built once per episode in ``reset`` (bm25s tokenises and scores sparse matrices fast
enough for 40,000 sentences); each step only scores a query against it.

Exact score ties are common here ("Mary went to the garden" and "Mary went to the office" score the
same for "Where is Mary?"), and bAbI answers usually need the *latest* such fact, so a fixed
tie-break (first or last in the document) would bias the baseline either way. Ties are broken at
random instead, from the agent's own seeded generator (reseeded per evaluation episode by
``seed_episode``, so a cell's records never depend on the cells before it). Both agents keep all T
picks: they have no stop signal of their own.
"""

from __future__ import annotations

from typing import Any

import bm25s
import numpy as np

from qrag_agents.base import BaseAgent
from qrag_gym.document import Document
from qrag_gym.wrappers import state_text


def best_available(scores: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> int:
    """Highest-scoring chunk among the valid ones; exact ties broken uniformly at random."""
    masked = np.where(mask[: scores.shape[0]], scores, -np.inf)
    return int(rng.choice(np.flatnonzero(masked == masked.max())))


class BM25Agent(BaseAgent):
    """Single-step top-k: rank the chunks once by the question, then take the ranking in order."""

    def __init__(self, seed: int = 0, stopwords: str = "en") -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.stopwords = stopwords
        self._index: bm25s.BM25 | None = None
        self._scores: np.ndarray | None = None

    def seed_episode(self, seed: int) -> None:
        self.rng = np.random.default_rng([self.seed, seed])

    def _tokens(self, text: str) -> list[str]:
        return bm25s.tokenize([text], stopwords=self.stopwords, return_ids=False, show_progress=False)[0]

    def _score(self, text: str) -> np.ndarray:
        tokens = self._tokens(text)
        if not tokens:  # a query made only of stopwords: no lexical signal, every chunk ties
            return np.zeros(len(self._chunks), dtype=np.float32)
        return self._index.get_scores(tokens)

    def reset(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> None:
        self._chunks = document.texts
        self._index = bm25s.BM25()
        corpus = bm25s.tokenize(list(self._chunks), stopwords=self.stopwords, show_progress=False)
        self._index.index(corpus, show_progress=False)
        self._scores = self._score(document.question)

    def act(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> int:
        return best_available(self._scores, info["action_mask"], self.rng)


class MultiStepBM25Agent(BM25Agent):
    """Multi-step: each step's query is the question plus the chunks selected so far."""

    def act(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> int:
        if info["selected_order"]:
            self._scores = self._score(state_text(document))
        return best_available(self._scores, info["action_mask"], self.rng)
