"""On-disk embedding cache: vectors keyed by (model fingerprint, text), safe under interruption.

Each model fingerprint has its own folder of shards (``.npz`` with 16-byte text digests and float32
vectors). A shard is written to a temporary name and renamed into place, so a kill leaves either the
whole shard or none of it. Many small shards are merged into one; past ``max_bytes`` the oldest
shards are dropped. ``qrag-cache clear`` (or :meth:`EmbeddingDiskCache.clear`) empties it.

The cache root holds a ``CACHEDIR.TAG`` (the Cache Directory Tagging Specification, which backup tools
also honour) written when the cache first writes there. Clearing refuses a folder without it and even
then deletes only the files this module writes (shards, their temporary and moved-aside copies), never
anything else a mistyped ``$QRAG_CACHE_DIR`` might point at.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from qrag_gym.atomic import atomic_write

CACHE_ENV_VAR = "QRAG_CACHE_DIR"
DEFAULT_MAX_BYTES = 4 * 2**30
MAX_SHARDS = 32
FLUSH_EVERY = 2048
STALE_TEMP_SECONDS = 3600
"""A ``.tmp`` file this old is the leftover of a killed writer (a live one renames within seconds)."""

MARKER = "CACHEDIR.TAG"
MARKER_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This folder is the qrag-gym embedding cache (https://bford.info/cachedir/).\n"
    "# `qrag-cache clear` deletes only the shard files inside its model folders.\n"
)
_SHARD = re.compile(r"shard-\d+-\d+\.npz")
_OWN_FILE = re.compile(r"(?:shard-\d+-\d+\.npz(?:\.unreadable)?|\.shard-\d+-\d+\.npz\.\w+\.tmp"
                       r"|counts-[0-9a-f]{32}\.npy|\.counts-[0-9a-f]{32}\.npy\.\w+\.tmp"
                       r"|table-[0-9a-f]{32}(?:\.npy|\.filled\.npz)|\.table-[0-9a-f]{32}(?:\.npy|\.filled\.npz)\.\w+\.tmp)")
"""Every name this module (and :mod:`qrag_gym.features`) writes inside a cache subfolder: shards, moved-aside
shards, token-count arrays, feature tables and their bitmaps, and their temporary files."""
TOKEN_COUNTS = "token-counts"
"""Subfolder of the cache root holding per-corpus token counts (:func:`cached_token_counts`)."""
_FINGERPRINT = re.compile(r"[0-9A-Za-z_.-]+")


class CacheClearRefused(RuntimeError):
    """``clear`` was asked to delete a folder that is not (or not only) an embedding cache."""


def mark_cache_root(root: Path) -> None:
    """Tag ``root`` as a cache folder (idempotent); the marker is what allows ``clear`` there."""
    marker = root / MARKER
    if not marker.is_file():
        atomic_write(marker, lambda temporary: Path(temporary).write_text(MARKER_TEXT))


def is_cache_root(root: Path) -> bool:
    """True when ``root`` carries the marker this module writes."""
    try:
        return (root / MARKER).read_text().startswith(MARKER_TEXT.split("\n", 1)[0])
    except OSError:
        return False


def _delete_own_files(folder: Path) -> int:
    """Delete the shard files of one model folder (and the folder when nothing else is left in it)."""
    removed = 0
    for path in folder.iterdir():
        if path.is_file() and _OWN_FILE.fullmatch(path.name):
            path.unlink(missing_ok=True)
            removed += 1
    try:
        folder.rmdir()  # only succeeds when empty: foreign files keep their folder
    except OSError:
        pass
    return removed


def default_cache_root() -> Path:
    """``$QRAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/qrag-gym/embeddings``, else ``~/.cache/qrag-gym/embeddings``."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qrag-gym" / "embeddings"


def text_digest(text: str) -> bytes:
    """16-byte BLAKE2b digest of a text: fixed-size keys, collision odds negligible at 10^7 texts."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _as_digest_rows(keys: np.ndarray) -> np.ndarray:
    """Keys as ``(n, 16)`` uint8 rows. (numpy's ``S16`` scalars drop trailing zero bytes, so digests are
    never handled as ``S16`` values; the raw buffer is the same either way.)"""
    return np.ascontiguousarray(keys).view(np.uint8).reshape(-1, 16)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Write an ``.npy`` atomically (see :mod:`qrag_gym.atomic`)."""

    def write(temporary: str) -> None:
        with open(temporary, "wb") as out:  # a file object: np.save would append ".npy" to a name
            np.save(out, array)

    atomic_write(path, write)


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` atomically (see :mod:`qrag_gym.atomic`)."""

    def write(temporary: str) -> None:
        with open(temporary, "wb") as out:  # a file object: np.savez would append ".npz" to a name
            np.savez(out, **arrays)

    atomic_write(path, write)


class EmbeddingDiskCache:
    """Persistent text -> vector store for one model fingerprint."""

    def __init__(self, fingerprint: str, dim: int, root: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.folder = (root or default_cache_root()) / fingerprint
        self.dim = dim
        self.max_bytes = max_bytes
        self._index: dict[bytes, int] = {}
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._pending: dict[bytes, np.ndarray] = {}
        self._writable = True
        self._load()
        atexit.register(self.flush)

    def _shards(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("shard-*.npz"), key=lambda p: p.name)  # names start with time_ns

    def _read_shards(self, attempts: int = 5) -> tuple[list[Path], list[np.ndarray], list[np.ndarray]]:
        """Every readable shard on disk now (other processes may have added some).

        If another process compacts while we read (a listed shard vanishes), the listing is read
        again: its merged shard holds what vanished.
        """
        for _ in range(attempts):
            paths, keys, vectors, vanished = [], [], [], False
            for shard in self._shards():
                try:
                    with np.load(shard) as data:
                        shard_keys, shard_vectors = _as_digest_rows(data["keys"]), data["vectors"]
                except FileNotFoundError:
                    vanished = True
                    continue
                except Exception as err:  # noqa: BLE001 - numpy's header parser raises anything (TokenError...)
                    self._move_aside(shard, f"{type(err).__name__}: {err}")
                    continue
                if shard_vectors.shape != (len(shard_keys), self.dim):  # readable but not ours
                    self._move_aside(shard, f"vectors of shape {shard_vectors.shape}, expected (n, {self.dim})")
                    continue
                keys.append(shard_keys)
                vectors.append(shard_vectors)
                paths.append(shard)
            if not vanished:
                break
        return paths, keys, vectors

    def _move_aside(self, shard: Path, why: str) -> None:
        """Rename an unreadable shard to ``*.unreadable`` (out of every later process's way) and say so."""
        target = shard.with_name(shard.name + ".unreadable")
        try:
            os.replace(shard, target)
            where = f"moved to {target}"
        except OSError as err:
            where = f"could not move it aside ({err}); delete it by hand"
        warnings.warn(f"embedding cache shard {shard} is unreadable ({why[:200]}): skipped, {where}",
                      RuntimeWarning, stacklevel=3)

    def _load(self) -> None:
        _, keys, vectors = self._read_shards()
        if keys:
            all_keys = np.concatenate(keys)
            self._vectors = np.concatenate(vectors).astype(np.float32, copy=False)
            self._index = {k.tobytes(): i for i, k in enumerate(all_keys)}  # later shards win

    def __len__(self) -> int:
        return len(self._index) + len(self._pending)

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (found mask, vectors); rows of texts not in the cache are zero."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        found = np.zeros(len(texts), dtype=bool)
        for row, text in enumerate(texts):
            key = text_digest(text)
            index = self._index.get(key)
            if index is not None:
                out[row], found[row] = self._vectors[index], True
            elif key in self._pending:
                out[row], found[row] = self._pending[key], True
        return found, out

    def add(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Remember new vectors; they reach the disk in one shard per ``FLUSH_EVERY`` texts (and at exit)."""
        for text, vector in zip(texts, np.asarray(vectors, dtype=np.float32)):
            self._pending[text_digest(text)] = vector
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Write pending vectors as one shard (atomically), then compact or trim if needed."""
        if not self._pending:
            return
        keys = np.frombuffer(b"".join(self._pending), dtype=np.uint8).reshape(-1, 16)
        vectors = np.stack(list(self._pending.values()))
        if self._writable:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                mark_cache_root(self.folder.parent)
                atomic_save_npz(self.folder / f"shard-{time.time_ns()}-{os.getpid()}.npz", keys=keys, vectors=vectors)
            except OSError as err:  # read-only, full, or gone: a cache must never end the run
                self._writable = False
                warnings.warn(f"embedding cache {self.folder} cannot be written ({err}); this process keeps new "
                              "vectors in memory only", RuntimeWarning, stacklevel=2)
        start = len(self._vectors)
        self._vectors = np.concatenate([self._vectors, vectors])
        for offset, key in enumerate(keys):
            self._index[key.tobytes()] = start + offset
        self._pending = {}
        if not self._writable:
            return
        try:
            if len(self._shards()) > MAX_SHARDS:
                self._compact()
            self._trim()
        except OSError as err:
            warnings.warn(f"embedding cache {self.folder}: could not compact or trim ({err})", RuntimeWarning,
                          stacklevel=2)

    def _compact(self) -> None:
        """Merge the shards on disk into one, written before exactly those shards are removed.

        Shards are re-read from disk rather than taken from memory, so vectors that another process
        wrote meanwhile are merged too, never lost.
        """
        paths, keys, vectors = self._read_shards()
        if not keys:
            return
        all_keys, first = np.unique(np.concatenate(keys)[::-1], axis=0, return_index=True)  # newest copy wins
        merged = np.concatenate(vectors)[::-1][first]
        atomic_save_npz(self.folder / f"shard-{time.time_ns()}-{os.getpid()}.npz", keys=all_keys, vectors=merged)
        for shard in paths:
            shard.unlink(missing_ok=True)

    def _trim(self) -> None:
        """Drop the oldest shards past ``max_bytes`` and the temporary files of killed writers."""
        for temp in self.folder.glob("*.tmp"):
            try:
                if time.time() - temp.stat().st_mtime > STALE_TEMP_SECONDS:
                    temp.unlink()
            except FileNotFoundError:  # renamed or removed by its writer meanwhile
                continue
        shards = self._shards()
        while len(shards) > 1 and sum(s.stat().st_size for s in shards) > self.max_bytes:
            shards.pop(0).unlink(missing_ok=True)

    def size_bytes(self) -> int:
        return sum(s.stat().st_size for s in self._shards())

    def clear(self) -> None:
        """Delete this model's shard files (nothing else) and forget everything in memory."""
        if self.folder.is_dir():
            _delete_own_files(self.folder)
        self._index, self._pending = {}, {}
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)


def clear_all(root: Path | None = None) -> tuple[Path, int]:
    """Delete every model's shard files under the cache root; returns the root and the files removed.

    Raises :class:`CacheClearRefused` when the root exists but lacks the marker this module writes: it is
    then some other folder (``$QRAG_CACHE_DIR=.`` or a typo), and nothing in it is touched. Within a marked
    root only model folders' shard files go; other files, and the folders that hold them, stay.
    """
    folder = root or default_cache_root()
    if not folder.exists():
        return folder, 0
    if not is_cache_root(folder):
        raise CacheClearRefused(
            f"{folder} is not a qrag-gym embedding cache (it has no {MARKER} written by the cache), so nothing "
            f"was deleted. Check ${CACHE_ENV_VAR}; delete the folder by hand if it really is an old cache."
        )
    removed = 0
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink() and _FINGERPRINT.fullmatch(child.name):
            removed += _delete_own_files(child)
    if not any(path.name != MARKER for path in folder.iterdir()):
        (folder / MARKER).unlink(missing_ok=True)
        folder.rmdir()
    return folder, removed


_ONE_OFF: list[re.Pattern[str]] = []


def register_one_off_texts(pattern: re.Pattern[str]) -> None:
    """Texts matching ``pattern`` (full match) are freshly generated each time (NIAH's random needles):
    they are kept in memory but never written to the disk cache, where they would only push out the
    vectors that recur (book sentences) when the cache trims its oldest shards."""
    if pattern not in _ONE_OFF:
        _ONE_OFF.append(pattern)


def is_one_off(text: str) -> bool:
    """True when ``text`` is a registered generated text (see :func:`register_one_off_texts`)."""
    return any(pattern.fullmatch(text) for pattern in _ONE_OFF)


def cached_token_counts(texts: Sequence[str], tokenizer_name: str, count: Callable[[Sequence[str]], np.ndarray],
                        root: Path | None = None) -> np.ndarray:
    """Token counts of a corpus (``count(texts)``), kept on disk so a new process skips re-tokenising it.

    Keyed by the tokenizer's name and a digest of every text: a changed book folder, sentence splitter or
    tokenizer gives another key, never stale counts. An unreadable or unwritable file only costs the
    recount (about 5 s for the 45,000 book sentences on 2 cores).
    """
    digest = hashlib.sha256(f"token-counts-v1|{tokenizer_name}|{len(texts)}|".encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    root = root or default_cache_root()
    path = root / TOKEN_COUNTS / f"counts-{digest.hexdigest()[:32]}.npy"
    try:
        counts = np.load(path, allow_pickle=False)
        if counts.shape == (len(texts),):
            return counts
    except (OSError, ValueError):
        pass  # absent or unreadable: count again and rewrite it
    counts = np.asarray(count(texts), dtype=np.int64)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mark_cache_root(root)
        atomic_save_npy(path, counts)
    except OSError as err:
        warnings.warn(f"could not keep token counts in {path.parent} ({err}); they are recounted next time",
                      RuntimeWarning, stacklevel=2)
    return counts