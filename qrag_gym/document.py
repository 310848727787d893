"""A read-only handle on one episode's document: what an agent may read besides the observation and info.

Agents used to get the whole env and read ``env.unwrapped.question``, ``.chunks`` and ``.embedder``
(issue 15, "observation-only agents"): the same object also held the gold labels, the episode's
internals and ``step``. The evaluation runner (:mod:`qrag_gym.evaluation`) now hands an agent a
:class:`Document` instead: the question, the chunk texts by id, and the env's embedder-scored
features (chunk vectors encoded once per episode, :meth:`RetrievalEnv.chunk_vectors`; one matrix
product per query, :meth:`RetrievalEnv.score`). It wraps those env methods rather than re-implementing
them, so an agent's scores are the env's own, and it exposes nothing that names the supporting chunks
or the answer.

A handle belongs to the episode it was made in: after the env resets, every read raises instead of
silently answering about another question's document.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn, Sequence

import numpy as np

if TYPE_CHECKING:  # the env module loads torch; the runner and the agent protocol import this one for --help
    from qrag_gym.embedding import TextEmbedder
    from qrag_gym.envs.retrieval import RetrievalEnv


class StaleDocumentError(RuntimeError):
    """A :class:`Document` read after its env moved on to another episode."""


class Document:
    """The current episode's question, chunk texts and embedder features, read-only, by chunk id.

    Chunk ids are the env's action indices (``0 <= id < num_chunks``). ``score``, ``selected`` and
    ``action_mask``-style state follow the live episode (what has been selected so far); the texts and
    vectors are fixed for the episode.
    """

    def __init__(self, env: RetrievalEnv) -> None:
        from qrag_gym.envs.retrieval import RetrievalEnv  # loaded by now: ``env`` was built from it

        if not isinstance(env, RetrievalEnv):
            raise TypeError(f"Document(env): env must be a RetrievalEnv (pass env.unwrapped), got {type(env).__name__}")
        if env.episode is None:
            raise RuntimeError("Document(env): call env.reset() first; the env has no episode yet")
        self._env = env
        self._episode = env.episode

    def _live(self) -> RetrievalEnv:
        if self._env.episode is not self._episode:
            raise StaleDocumentError("this Document belongs to an earlier episode: the env was reset since; "
                                     "use the handle given with the current episode")
        return self._env

    @property
    def question(self) -> str:
        """The full question (``obs["question"]`` is cut at the ``Text`` space's length)."""
        return self._live().question

    @property
    def num_chunks(self) -> int:
        """How many chunks the document has (valid ids are ``0 .. num_chunks - 1``)."""
        return self._live().num_chunks

    @property
    def texts(self) -> tuple[str, ...]:
        """Every chunk's text, indexed by chunk id (an immutable tuple)."""
        return self._live().chunks

    def text(self, chunk_id: int) -> str:
        """The text of chunk ``chunk_id``."""
        texts = self.texts
        if isinstance(chunk_id, bool) or not isinstance(chunk_id, (int, np.integer)) or not 0 <= chunk_id < len(texts):
            raise IndexError(f"chunk_id must be an int in [0, {len(texts)}), got {chunk_id!r}")
        return texts[int(chunk_id)]

    @property
    def selected(self) -> list[int]:
        """The chunk ids selected so far, in the order they were selected."""
        return self._live().selected

    @property
    def max_steps(self) -> int:
        """The episode's step budget T."""
        return self._live().max_steps

    @property
    def dim(self) -> int:
        """Size of the embedder's vectors."""
        return self._live().embedder.dim

    def encode(self, text: str) -> np.ndarray:
        """The env embedder's vector of a query ``text`` (not kept in the embedder's cache: queries rarely repeat)."""
        return self._live().embedder.encode([text], persist=False)[0]

    def vectors(self, ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Chunk vectors ``(len(ids), dim)`` (all ``(num_chunks, dim)`` without ``ids``), encoded once per
        episode by the env; the array is read-only, so no agent can change another's features."""
        vectors = self._live().chunk_vectors()
        view = vectors if ids is None else vectors[np.asarray(ids, dtype=np.int64)]
        view = view.view()
        view.flags.writeable = False
        return view

    def distinct_chunks(self) -> tuple[np.ndarray, np.ndarray]:
        """``(first, owner)``: the chunk id of each distinct chunk (its first occurrence, in document order) and,
        for every chunk id, the index into ``first`` of the chunk it repeats.

        Long documents repeat chunks (a 10M-token BABILong document holds about 7 copies of each book
        sentence), so an agent that encodes chunks with its own model needs to encode ``first`` only. Chunks
        are the same where their corpus ids are (chunks drawn from a corpus), else where their texts are.
        """
        from qrag_gym.corpus import first_occurrences

        env = self._live()
        episode = env.episode
        return first_occurrences(episode.chunk_ids if episode.chunk_ids is not None else env.chunks)

    def features(self, embedder: TextEmbedder, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Vectors ``(len(ids), embedder.dim)`` of chunks ``ids`` under ``embedder``, an agent's own encoder
        (:meth:`vectors` are the env's): gathered by corpus id from that encoder's feature table where the
        chunks come from a corpus (each corpus text encoded once, kept on disk), else encoded from the texts."""
        env = self._live()
        episode = env.episode
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and not (0 <= ids.min() and ids.max() < env.num_chunks):
            raise IndexError(f"chunk ids must be in [0, {env.num_chunks}), got {ids.min()}..{ids.max()}")
        if episode.chunk_ids is not None:
            from qrag_gym.features import corpus_features  # loads the encoder stack only for agents that ask

            return corpus_features(episode.corpus, embedder).rows(episode.chunk_ids[ids])
        return embedder.encode([env.chunks[i] for i in ids.tolist()])

    def question_features(self, embedder: TextEmbedder) -> np.ndarray:
        """The question's vector ``(embedder.dim,)`` under ``embedder`` (an agent's own encoder): gathered by the
        episode's question id from that encoder's feature table where the question has one, else encoded."""
        episode = self._live().episode
        if episode.question_id is not None:
            from qrag_gym.features import corpus_features

            return corpus_features(episode.corpus, embedder).rows(np.array([episode.question_id]))[0]
        return embedder.encode([episode.question], persist=False)[0]

    def score(self, query: np.ndarray) -> np.ndarray:
        """Score of every action for a query vector (``vectors() @ query``): ``-inf`` where masked, length
        ``max_chunks`` (:meth:`RetrievalEnv.score`)."""
        return self._live().score(query)

    @property
    def unwrapped(self) -> NoReturn:
        """Not available: raises, naming what to use instead (code written for the old ``(obs, info, env)`` API)."""
        raise AttributeError("agents get a read-only qrag_gym.document.Document, not the env (issue 15): read "
                             "document.question, .texts, .text(id), .vectors(ids), .encode(text), .score(vector), "
                             ".distinct_chunks(), .features(embedder, ids), .question_features(embedder)")


__all__ = ["Document", "StaleDocumentError"]
