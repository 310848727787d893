"""Frozen dense retrieval with the env's embedder: the paper's "RAG" and "multi-step RAG w/o FT".

Chunks are never encoded here: ``document.score(query)`` uses the chunk vectors the env encodes
once per episode (and the embedder's per-process cache); only the query text is encoded. Both
agents are deterministic and keep all T picks (no stop signal of their own).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qrag_agents.base import BaseAgent
from qrag_gym.document import Document
from qrag_gym.wrappers import state_text


class DenseAgent(BaseAgent):
    """Single-step top-k: rank by the question's vector once, then take the ranking in order."""

    def reset(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> None:
        self._query = document.encode(document.question)

    def act(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> int:
        return int(np.argmax(document.score(self._query)))


class MultiStepDenseAgent(DenseAgent):
    """Multi-step without training: re-embed "question + selected chunks (document order)" every step."""

    def act(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> int:
        if info["selected_order"]:
            self._query = document.encode(state_text(document))
        return int(np.argmax(document.score(self._query)))
