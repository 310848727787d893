"""Encoder features by id: one ``(n, d)`` float32 table per (text table, encoder), memory-mapped on disk.

A :class:`FeatureTable` holds the vectors of one :class:`~qrag_gym.corpus.TextTable` under one
:class:`~qrag_gym.embedding.TextEmbedder`. Rows are filled on first use (the texts of the missing ids
are encoded in one batched call) and then only gathered by id: an episode's chunk features are
``table[chunk_ids]``, with no text hashed or looked up per chunk. The file is
``<cache root>/<encoder fingerprint>/table-<text fingerprint>.npy`` beside the embedding cache's
shards (``qrag-cache clear`` removes both); a ``.filled.npy`` bitmap says which rows are written.

Safe under interruption: rows are written and flushed before the bitmap that marks them is replaced
atomically, so a killed process leaves at worst unmarked rows, encoded again next time. Two processes
filling one table may each re-encode rows the other marked; they never read an unmarked row.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from qrag_gym.atomic import atomic_write
from qrag_gym.cache import atomic_save_npy, mark_cache_root
from qrag_gym.corpus import Corpus, TextTable
from qrag_gym.embedding import TextEmbedder

SCORE_BLOCK = 65_536
"""Chunks scored per block by :meth:`CorpusFeatures.scores`: bounds the gathered vectors to 96 MiB at d=384."""


def table_path(folder: Path, table: TextTable) -> Path:
    return folder / f"table-{table.fingerprint}.npy"


class FeatureTable:
    """The vectors of one text table under one encoder, filled by id on first use.

    Without a disk cache (``embedder.disk is None``) or where the folder cannot be written, the table
    lives in memory only (a lazily zeroed array: untouched rows cost no memory).
    """

    def __init__(self, table: TextTable, embedder: TextEmbedder, folder: Path | None) -> None:
        self.table, self.embedder = table, embedder
        shape = (len(table), embedder.dim)
        self.path = table_path(folder, table) if folder is not None else None
        self.vectors: np.ndarray = np.zeros(shape, dtype=np.float32)
        self.filled = np.zeros(len(table), dtype=bool)
        if self.path is not None:
            try:
                self._open(shape)
            except OSError as err:  # read-only or full: features still work, in memory
                warnings.warn(f"feature table {self.path} cannot be used ({err}); this process keeps it in memory",
                              RuntimeWarning, stacklevel=2)
                self.path = None

    @property
    def filled_path(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.name[: -len(".npy")] + ".filled.npy")

    def _open(self, shape: tuple[int, int]) -> None:
        """Map the table file (created, zero-filled and sparse, when absent or not of this shape)."""
        assert self.path is not None
        try:
            vectors = np.load(self.path, mmap_mode="r+")
            if vectors.shape != shape or vectors.dtype != np.float32:
                raise ValueError(f"shape {vectors.shape} {vectors.dtype}, expected {shape} float32")
        except (FileNotFoundError, ValueError) as err:
            if not isinstance(err, FileNotFoundError):
                warnings.warn(f"feature table {self.path}: {err}; rebuilt", RuntimeWarning, stacklevel=3)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mark_cache_root(self.path.parent.parent)
            atomic_write(self.path, lambda temporary: np.lib.format.open_memmap(
                temporary, mode="w+", dtype=np.float32, shape=shape).flush())
            self.filled_path.unlink(missing_ok=True)
            vectors = np.load(self.path, mmap_mode="r+")
        self.vectors = vectors
        self.filled = self._read_filled()

    def _read_filled(self) -> np.ndarray:
        try:
            filled = np.load(self.filled_path, allow_pickle=False)
            if filled.shape == (len(self.table),) and filled.dtype == bool:
                return filled.copy()
        except (OSError, ValueError):
            pass
        return np.zeros(len(self.table), dtype=bool)

    def fill(self, ids: np.ndarray) -> None:
        """Encode the rows of ``ids`` not written yet, in one batched call, and mark them."""
        missing = np.unique(ids[~self.filled[ids]])
        if not missing.size:
            return
        texts = self.table.texts
        # Through the embedder's caches: a text encoded before (in memory, or in the disk cache's shards) gets the
        # very same vector here, bit for bit; the table, not the in-memory cache, keeps it from now on.
        self.vectors[missing] = self.embedder.encode([texts[i] for i in missing.tolist()], remember=False)
        self.filled[missing] = True
        if self.path is None:
            return
        try:
            self.vectors.flush()  # the rows reach the file before the bitmap that marks them
            on_disk = self._read_filled()  # keep what other processes marked meanwhile
            atomic_save_npy(self.filled_path, self.filled | on_disk)
        except OSError as err:
            warnings.warn(f"feature table {self.path}: could not record new rows ({err}); they are encoded "
                          "again next process", RuntimeWarning, stacklevel=2)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """``(len(ids), d)`` vectors of ``ids`` (local to this table), filling missing rows first."""
        self.fill(ids)
        return self.vectors[ids]


class CorpusFeatures:
    """Features of a whole :class:`~qrag_gym.corpus.Corpus` (one :class:`FeatureTable` per text table)."""

    def __init__(self, corpus: Corpus, tables: list[FeatureTable]) -> None:
        self.corpus, self.tables = corpus, tables
        self.dim = tables[0].vectors.shape[1] if tables else 0

    def fill(self) -> None:
        """Encode every row not written yet, in one batched call per table (``qrag-train`` does this first)."""
        for table in self.tables:
            table.fill(np.arange(len(table.table)))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """``(len(ids), d)`` float32 vectors of corpus ``ids``."""
        ids = self.corpus.check(ids)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for table, rows, local in self.corpus.parts(ids):
            out[rows] = self.tables[table].rows(local)
        return out

    def scores(self, ids: np.ndarray, query: np.ndarray) -> np.ndarray:
        """``rows(ids) @ query`` in blocks of :data:`SCORE_BLOCK` ids: a 10M-token document (400,000
        chunks, 590 MB of vectors) is scored without gathering all its vectors at once."""
        query = np.asarray(query, dtype=np.float32)
        out = np.empty(len(ids), dtype=np.float32)
        for start in range(0, len(ids), SCORE_BLOCK):
            out[start : start + SCORE_BLOCK] = self.rows(ids[start : start + SCORE_BLOCK]) @ query
        return out


def corpus_features(corpus: Corpus, embedder: TextEmbedder) -> CorpusFeatures:
    """The features of ``corpus`` under ``embedder``, one set of tables per process (every env and the
    learner share them). On disk under the embedder's cache folder, else in memory."""
    return CorpusFeatures(corpus, [_table_for(table, embedder) for table in corpus.tables])


@lru_cache(maxsize=32)
def _table_for(table: TextTable, embedder: TextEmbedder) -> FeatureTable:
    folder = embedder.disk.folder if embedder.disk is not None else None
    return FeatureTable(table, embedder, folder)


__all__ = ["SCORE_BLOCK", "CorpusFeatures", "FeatureTable", "corpus_features"]
