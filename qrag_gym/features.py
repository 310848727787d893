"""Encoder features by id: one ``(n, d)`` float32 table per (text table, encoder), memory-mapped on disk.

A :class:`FeatureTable` holds the vectors of one :class:`~qrag_gym.corpus.TextTable` under one
:class:`~qrag_gym.embedding.TextEmbedder`. Rows are filled on first use (the texts of the missing ids
are encoded in one batched call) and then only gathered by id: an episode's chunk features are
``table[chunk_ids]``, with no text hashed or looked up per chunk. The file is
``<cache root>/<encoder fingerprint>/table-<text fingerprint>.npy`` beside the embedding cache's
shards (``qrag-cache clear`` removes both); a ``.filled.npz`` bitmap says which rows are written.

Safe under interruption: rows are written and flushed before the bitmap that marks them is replaced
atomically, so a killed process leaves at worst unmarked rows, encoded again next time. A new table file
is published whole (a hard link from a temporary name, never over another process's file), and the bitmap
names the file it describes. Two processes filling one table may each re-encode rows the other marked;
they never read an unmarked row.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from qrag_gym.cache import atomic_save_npz, mark_cache_root
from qrag_gym.corpus import Corpus, TextTable
from qrag_gym.embedding import TextEmbedder

SCORE_BLOCK = 65_536
"""Chunks scored per block by :meth:`CorpusFeatures.scores`: bounds the gathered vectors to 96 MiB at d=384."""


def table_path(folder: Path, table: TextTable) -> Path:
    return folder / f"table-{table.fingerprint}.npy"


class FeatureTable:
    """The vectors of one text table under one encoder, filled by id on first use.

    The bitmap names the table file it describes (device and inode): a table file rebuilt or replaced by
    another process never inherits marks made for the old one, and rows written into a file that was
    replaced meanwhile are marked only in a bitmap nobody reads. Without a disk cache (``embedder.disk is
    None``) or where the folder cannot be written, the table lives in memory only (a lazily zeroed array:
    untouched rows cost no memory).
    """

    def __init__(self, table: TextTable, embedder: TextEmbedder, folder: Path | None) -> None:
        self.table, self.embedder = table, embedder
        shape = (len(table), embedder.dim)
        self.path = table_path(folder, table) if folder is not None else None
        self.vectors: np.ndarray = np.zeros(shape, dtype=np.float32)
        self.filled = np.zeros(len(table), dtype=bool)
        self.identity = np.zeros(2, dtype=np.int64)
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
        return self.path.with_name(self.path.name[: -len(".npy")] + ".filled.npz")

    def _open(self, shape: tuple[int, int]) -> None:
        """Map the table file: this process's own new one (zero-filled, sparse) if none exists, the one another
        process published first, or a rebuilt one if the file there is not a table of this shape."""
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mark_cache_root(self.path.parent.parent)
        for _ in range(3):
            try:
                self._map(shape)
                return
            except FileNotFoundError:
                self._publish(shape, replace=False)
            except ValueError as err:
                warnings.warn(f"feature table {self.path}: {err}; rebuilt", RuntimeWarning, stacklevel=3)
                self._publish(shape, replace=True)
        self._map(shape)

    def _map(self, shape: tuple[int, int]) -> None:
        """Memory-map the file now at ``path`` and note which file it is (its device and inode)."""
        assert self.path is not None
        with open(self.path, "r+b") as handle:
            try:
                version = np.lib.format.read_magic(handle)
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                found, fortran, dtype = header(handle)
            except ValueError as err:
                raise ValueError(f"not an .npy table ({err})") from err
            if found != shape or dtype != np.float32 or fortran:
                raise ValueError(f"shape {found} {dtype}, expected {shape} float32")
            status = os.fstat(handle.fileno())
            self.vectors = np.memmap(handle, dtype=np.float32, mode="r+", shape=shape, offset=handle.tell())
        self.identity = np.array([status.st_dev, status.st_ino], dtype=np.int64)
        self.filled = self._read_filled()

    def _publish(self, shape: tuple[int, int], replace: bool) -> None:
        """Write a zero table under a temporary name, then put it at ``path``: by a hard link that fails if
        another process got there first (whose file is then used), or, to rebuild a foreign file, by replacing it."""
        assert self.path is not None
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=shape).flush()
            if replace:
                os.replace(temporary, self.path)
            else:
                try:
                    os.link(temporary, self.path)
                except FileExistsError:
                    pass  # another process published its table first: map that one
        finally:
            Path(temporary).unlink(missing_ok=True)

    def _read_filled(self) -> np.ndarray:
        """The rows marked written in the bitmap on disk, if that bitmap describes the file this process maps."""
        try:
            with np.load(self.filled_path, allow_pickle=False) as saved:
                filled, identity = saved["filled"], saved["identity"]
            if filled.shape == (len(self.table),) and filled.dtype == bool and np.array_equal(identity, self.identity):
                return filled.copy()
        except (OSError, ValueError, KeyError):
            pass
        return np.zeros(len(self.table), dtype=bool)

    def fill(self, ids: np.ndarray) -> None:
        """Encode the rows of ``ids`` not written yet, in one batched call, and mark them."""
        missing = np.unique(ids[~self.filled[ids]])
        if not missing.size:
            return
        texts = self.table.texts
        # Through the embedder's caches: a text encoded before (in memory, or in the disk cache) gets the very
        # same vector here, bit for bit, and a new one is stored there too, so paths that still read by text
        # (the Q-RAG agent's documents) see the same bits; the embedder's in-memory cache keeps no copy.
        self.vectors[missing] = self.embedder.encode([texts[i] for i in missing.tolist()], remember=False)
        self.filled[missing] = True
        if self.path is None:
            return
        try:
            self.vectors.flush()  # the rows reach the file before the bitmap that marks them
            self.filled |= self._read_filled()  # keep what other processes marked meanwhile
            atomic_save_npz(self.filled_path, filled=self.filled, identity=self.identity)
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
    """The features of ``corpus`` under ``embedder``, one :class:`FeatureTable` per text table and process
    (every env and the learner share it). On disk under the embedder's cache folder, else in memory."""
    return CorpusFeatures(corpus, [_table_for(table, embedder) for table in corpus.tables])


_OPEN_TABLES: dict[tuple[str, str, str], FeatureTable] = {}
"""Tables this process has opened, by (text fingerprint, encoder fingerprint, folder): the same texts loaded
twice (the books of qa1 and of qa2) share one table."""


def _table_for(table: TextTable, embedder: TextEmbedder) -> FeatureTable:
    if table.episode_local:  # in memory, kept by the table itself: gone with its episode
        if embedder.fingerprint not in table.feature_cache:
            table.feature_cache[embedder.fingerprint] = FeatureTable(table, embedder, None)
        return table.feature_cache[embedder.fingerprint]
    folder = embedder.disk.folder if embedder.disk is not None else None
    key = (table.fingerprint, embedder.fingerprint, str(folder))
    if key not in _OPEN_TABLES:
        _OPEN_TABLES[key] = FeatureTable(table, embedder, folder)
    return _OPEN_TABLES[key]


__all__ = ["SCORE_BLOCK", "CorpusFeatures", "FeatureTable", "corpus_features"]
