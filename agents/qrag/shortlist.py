"""A faiss shortlist for very long documents: the best chunk without scoring every chunk exactly.

The scorers here are inner products ``<q_r, e_a>`` where the query ``q_r`` may differ between
contiguous *ranges* of chunks (Q-RAG's rotary positions: ``<s, R(p) e> = <R(p)^T s, e>``, and
positions are monotone in the chunk index, so chunks sharing a position bucket form one range).
Each range is searched in one faiss inner-product index (``IDSelectorRange`` restricts a search to
a range without scanning the rest), the top ``k`` of every range form the shortlist, and the
shortlist is re-scored exactly.

A range's query is exact only up to a known bound (the rotation of a bucket's centre is not that of
each chunk in it). The result is still *certified*: after re-scoring, ``best`` is a true score, and
a range whose ``k``-th approximate score plus its bound reaches ``best`` may hide a better chunk,
so that whole range is re-scored exactly as well. The returned action is therefore the exact
argmax (up to float rounding), never a guess; the bound only decides how much is re-scored. The same
rule certifies the exact top ``count`` (:func:`certified_top`), which a model with a candidate stage needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np


@dataclass
class ShortlistResult:
    """The chosen chunk, its exact score, and how much work finding it took."""

    action: int
    value: float
    shortlisted: int
    """Chunks re-scored exactly because they were in some range's top ``k``."""
    fallback: int
    """Chunks re-scored exactly because their range's bound could not rule them out."""


SMALL_RANGE = 4096
"""Ranges up to this many chunks are scored with one numpy product instead of a faiss call: a faiss
search costs a fixed overhead (and an OpenMP fork-join, slow when other processes hold the cores)
that outweighs scanning a few thousand rows. Q-RAG's position buckets are mostly this small."""


class ChunkIndex:
    """Exact inner-product faiss index over one document's chunk vectors (built once per episode)."""

    def __init__(self, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # no copy for a float32 torch .numpy() view
        if vectors.ndim != 2 or not len(vectors):
            raise ValueError(f"need a non-empty (num_chunks, dim) array, got shape {vectors.shape}")
        self.vectors = vectors
        self.num_chunks, self.dim = vectors.shape
        self.index = faiss.IndexFlatIP(self.dim)
        self.index.add(vectors)
        self.max_norm = float(np.sqrt(np.einsum("ij,ij->i", vectors, vectors).max()))

    def top_k(self, query: np.ndarray, start: int, stop: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best (scores, ids) of ``query`` among chunks ``start..stop-1``, best first."""
        query = np.asarray(query, dtype=np.float32)
        k = min(k, stop - start)
        if stop - start <= SMALL_RANGE:
            scores = self.vectors[start:stop] @ query
            best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
            best = best[np.argsort(-scores[best], kind="stable")]
            return scores[best], best + start
        params = faiss.SearchParameters(sel=faiss.IDSelectorRange(start, stop))
        scores, ids = self.index.search(query.reshape(1, -1), k, params=params)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]


@dataclass
class TopChunks:
    """The exact top chunks found through a shortlist, best first, and how much work finding them took."""

    ids: np.ndarray
    values: np.ndarray
    shortlisted: int
    fallback: int


def certified_top(
    index: ChunkIndex,
    queries: np.ndarray,
    bounds: np.ndarray,
    starts: np.ndarray,
    valid: np.ndarray,
    k: int,
    exact: Callable[[np.ndarray], np.ndarray],
    count: int = 1,
) -> TopChunks:
    """The ``count`` valid chunks with the highest ``exact(ids)``, best first (ties: lowest id first),
    searching range ``r`` with ``queries[r]``.

    Args:
        queries: ``(R, dim)``, one query per range.
        bounds: ``(R,)``, ``|exact score - <queries[r], e_a>|`` is at most this for every chunk ``a`` in range ``r``.
        starts: ``(R,)`` first chunk of each range (ascending; range ``r`` ends where ``r + 1`` starts).
        valid: ``(num_chunks,)`` bool, the chunks that may be chosen.
        k: shortlist size per range (at least ``count``, plus however many invalid chunks a range holds).
        exact: exact scores of the given chunk ids.
        count: how many of the best to certify. A chunk left out of its range's top ``k`` scores at most
            that range's ``k``-th approximate score plus its bound; a range where that could reach the
            ``count``-th best exact score found is re-scored in full, so no chunk outside the result can beat it.
    """
    stops = np.append(starts[1:], index.num_chunks)
    invalid_before = np.concatenate([[0], np.cumsum(~valid)])
    candidates, kth = [], np.full(len(starts), -np.inf)
    for r, (start, stop) in enumerate(zip(starts.tolist(), stops.tolist())):
        invalid = int(invalid_before[stop] - invalid_before[start])
        if stop - start == invalid:
            continue
        scores, ids = index.top_k(queries[r], start, stop, max(k, count) + invalid)
        if len(ids) < stop - start:  # the range holds chunks beyond its shortlist
            kth[r] = scores[-1]
        candidates.append(ids[valid[ids]])
    if not candidates:
        raise ValueError("no valid chunk to choose")
    shortlist = np.unique(np.concatenate(candidates))
    values = exact(shortlist)
    threshold = np.sort(values)[-count] if len(values) >= count else -np.inf
    uncertain = np.flatnonzero(kth + bounds >= threshold)
    extra = [np.arange(starts[r], stops[r]) for r in uncertain.tolist()]
    fallback = 0
    if extra:
        more = np.setdiff1d(np.concatenate(extra), shortlist)
        more = more[valid[more]]
        fallback = len(more)
        if fallback:
            shortlist = np.concatenate([shortlist, more])
            values = np.concatenate([values, exact(more)])
    order = np.lexsort((shortlist, -values))[:count]  # best first; ties go to the lowest chunk id, as argmax does
    return TopChunks(shortlist[order], values[order], len(shortlist) - fallback, fallback)


def certified_argmax(index: ChunkIndex, queries: np.ndarray, bounds: np.ndarray, starts: np.ndarray, valid: np.ndarray,
                     k: int, exact: Callable[[np.ndarray], np.ndarray]) -> ShortlistResult:
    """argmax over valid chunks of ``exact(ids)`` (:func:`certified_top` with ``count=1``)."""
    top = certified_top(index, queries, bounds, starts, valid, k, exact)
    return ShortlistResult(int(top.ids[0]), float(top.values[0]), top.shortlisted, top.fallback)
