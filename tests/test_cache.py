"""The on-disk embedding cache survives interrupted writes, stays under its byte bound and clears."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from qrag_gym import cache as cache_module
from qrag_gym.cache import EmbeddingDiskCache
from qrag_gym.cache_cli import main as cache_cli

DIM = 8


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _filled(root: Path, texts: list[str], seed: int = 0) -> EmbeddingDiskCache:
    cache = EmbeddingDiskCache("model", DIM, root=root)
    cache.add(texts, _vectors(len(texts), seed))
    cache.flush()
    return cache


def test_round_trip_through_disk(tmp_path: Path) -> None:
    texts = [f"sentence {i}" for i in range(10)]
    _filled(tmp_path, texts)
    found, vectors = EmbeddingDiskCache("model", DIM, root=tmp_path).lookup(texts + ["unseen"])
    assert found.tolist() == [True] * 10 + [False]
    np.testing.assert_array_equal(vectors[:10], _vectors(10))


def test_interrupted_write_leaves_no_shard_and_keeps_pending(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer killed inside ``np.savez`` (simulated by an exception mid-write) leaves nothing behind."""
    texts = ["a", "b"]
    cache = _filled(tmp_path, texts)
    cache.add(["c"], _vectors(1, seed=1))

    def killed(out, **arrays):
        out.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.flush()
    monkeypatch.undo()
    assert not list(cache.folder.glob("*.tmp"))
    assert len(list(cache.folder.glob("shard-*.npz"))) == 1
    cache.flush()  # the vector that failed to persist is still pending and reaches the disk now
    assert EmbeddingDiskCache("model", DIM, root=tmp_path).lookup(["a", "b", "c"])[0].all()


def test_truncated_shard_and_leftover_temp_never_break_loading(tmp_path: Path) -> None:
    """What a SIGKILL or a full disk can leave: a half-written temp file, a truncated or foreign shard."""
    texts = [f"t{i}" for i in range(20)]
    cache = _filled(tmp_path, texts)
    good = next(cache.folder.glob("shard-*.npz"))
    data = good.read_bytes()
    (cache.folder / "shard-1-1.npz").write_bytes(data[: len(data) // 2])  # truncated zip
    (cache.folder / "shard-2-1.npz").write_bytes(b"")  # empty file
    np.savez(cache.folder / "shard-3-1.npz", keys=np.zeros((2, 16), np.uint8), vectors=np.zeros((2, DIM + 1)))
    stale = cache.folder / "tmpabc.tmp"
    stale.write_bytes(data[:100])
    reloaded = EmbeddingDiskCache("model", DIM, root=tmp_path)
    found, vectors = reloaded.lookup(texts)
    assert found.all()
    np.testing.assert_array_equal(vectors, _vectors(20))
    old = time.time() - cache_module.STALE_TEMP_SECONDS - 10
    os.utime(stale, (old, old))
    fresh = cache.folder / "tmpdef.tmp"  # a live writer's temp file must survive
    fresh.write_bytes(b"x")
    reloaded.add(["new"], _vectors(1, seed=2))
    reloaded.flush()
    assert not stale.exists() and fresh.exists()


def test_compaction_keeps_newest_vector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "MAX_SHARDS", 3)
    cache = EmbeddingDiskCache("model", DIM, root=tmp_path)
    for seed in range(5):
        cache.add(["same", f"other{seed}"], _vectors(2, seed))
        cache.flush()
    assert len(list(cache.folder.glob("shard-*.npz"))) <= 3
    found, vectors = EmbeddingDiskCache("model", DIM, root=tmp_path).lookup(["same", "other0"])
    assert found.all()
    np.testing.assert_array_equal(vectors[0], _vectors(2, 4)[0])


def test_max_bytes_drops_oldest_shards(tmp_path: Path) -> None:
    cache = EmbeddingDiskCache("model", DIM, root=tmp_path, max_bytes=1)
    for batch in range(4):
        cache.add([f"b{batch}-{i}" for i in range(50)], _vectors(50, batch))
        cache.flush()
    shards = list(cache.folder.glob("shard-*.npz"))
    assert len(shards) == 1  # the newest shard is always kept, even past the bound
    found, _ = EmbeddingDiskCache("model", DIM, root=tmp_path).lookup(["b0-0", "b3-0"])
    assert found.tolist() == [False, True]
    bound = 2 * shards[0].stat().st_size + 10
    bounded = EmbeddingDiskCache("model", DIM, root=tmp_path, max_bytes=bound)
    for batch in range(4, 8):
        bounded.add([f"b{batch}-{i}" for i in range(50)], _vectors(50, batch))
        bounded.flush()
        assert bounded.size_bytes() <= bound


def test_clear_methods_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    cache = _filled(tmp_path, ["x"])
    cache.clear()
    assert not cache.folder.exists() and len(cache) == 0
    _filled(tmp_path, ["y"])
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path))
    cache_cli(["info"])
    assert "1 shards" in capsys.readouterr().out
    cache_cli(["clear"])
    assert not tmp_path.exists()
    assert not EmbeddingDiskCache("model", DIM, root=tmp_path).lookup(["y"])[0].any()
