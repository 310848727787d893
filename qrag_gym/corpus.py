"""Texts by integer id: what an episode's chunks are drawn from (issue 15, item 1).

A :class:`TextTable` is a fixed list of texts (one book folder's sentences, one task's story facts)
whose position is its id, with a fingerprint of its content. A :class:`Corpus` puts several tables in
one id space, so an episode is an array of chunk ids (``Episode.chunk_ids``) and everything per chunk
(token counts, encoder features: :mod:`qrag_gym.features`) is gathered by id instead of looked up by
text. Books and facts are separate tables, so the large book table's features (keyed by the fingerprint of
its texts) are shared by every task that hides facts among the same books.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


def fingerprint_texts(texts: Sequence[str]) -> str:
    """32 hex digits of a BLAKE2b digest of every text in order: another text, order or count is another key."""
    digest = hashlib.blake2b(f"texts-v1|{len(texts)}|".encode(), digest_size=16)
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def first_occurrences(keys: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """``(first, owner)`` of a sequence with repeats (texts, or an int array of corpus ids): the position of each
    distinct key's first occurrence, in order, and for every position the index into ``first`` of its key, so
    ``keys[first[owner[i]]] == keys[i]``. Long documents repeat chunks; their distinct ones are encoded once."""
    if isinstance(keys, np.ndarray):  # ids: sorted unique, then ranked by where each first appears
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return first[order].astype(np.int64), rank[inverse.reshape(-1)].astype(np.int64)
    row_of: dict = {}
    owner = np.fromiter((row_of.setdefault(key, len(row_of)) for key in keys), dtype=np.int64, count=len(keys))
    return np.unique(owner, return_index=True)[1].astype(np.int64), owner


@dataclass(frozen=True, eq=False)
class TextTable:
    """Texts whose index is their id, with their token counts and a fingerprint of the texts.

    ``episode_local`` tables hold the texts one episode makes (NIAH's generated needles and haystacks): their
    features live in ``feature_cache`` and go with the table when the episode ends, instead of in a table file
    on disk and a process-wide registry that would grow with every episode (:mod:`qrag_gym.features`).
    """

    texts: tuple[str, ...]
    tokens: np.ndarray
    fingerprint: str
    episode_local: bool = False
    feature_cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, texts: Sequence[str], tokens: np.ndarray, episode_local: bool = False) -> TextTable:
        texts = tuple(texts)
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.shape != (len(texts),):
            raise ValueError(f"need one token count per text: {len(texts)} texts, token counts of shape {tokens.shape}")
        return cls(texts, tokens, fingerprint_texts(texts), episode_local)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True, eq=False)
class Corpus:
    """Tables in one id space: text ``j`` of table ``i`` has id ``offsets[i] + j``."""

    tables: tuple[TextTable, ...]
    offsets: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        sizes = [len(table) for table in self.tables]
        object.__setattr__(self, "offsets", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def check(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` as an int64 array, or a ValueError: for ids that are not integers, or naming the first id
        outside the corpus."""
        ids = np.asarray(ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"chunk ids must be integers, got an array of {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        bad = (ids < 0) | (ids >= len(self))
        if bad.any():
            raise ValueError(f"chunk id {int(ids[bad][0])} is outside this corpus of {len(self)} texts")
        return ids

    def parts(self, ids: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``(table, rows, local ids)`` for each table some of ``ids`` fall in: ``ids[rows]`` are
        ``local ids + offsets[table]``."""
        table_of = np.searchsorted(self.offsets, ids, side="right") - 1
        found = []
        for table in np.unique(table_of).tolist():
            rows = np.flatnonzero(table_of == table)
            found.append((table, rows, ids[rows] - self.offsets[table]))
        return found

    def texts(self, ids: np.ndarray) -> tuple[str, ...]:
        """The texts of ``ids``, in order."""
        ids = self.check(ids)
        out: list[str] = [""] * len(ids)
        for table, rows, local in self.parts(ids):
            texts = self.tables[table].texts
            for row, index in zip(rows.tolist(), local.tolist()):
                out[row] = texts[index]
        return tuple(out)

    def tokens(self, ids: np.ndarray) -> np.ndarray:
        """Token counts of ``ids`` (the fixed length tokenizer's), gathered by id."""
        ids = self.check(ids)
        out = np.zeros(len(ids), dtype=np.int64)
        for table, rows, local in self.parts(ids):
            out[rows] = self.tables[table].tokens[local]
        return out


__all__ = ["Corpus", "TextTable", "fingerprint_texts", "first_occurrences"]
