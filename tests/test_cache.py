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


def test_clear_refuses_a_folder_the_cache_did_not_mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Issue 14.1: ``QRAG_CACHE_DIR=/tmp/x qrag-cache clear`` used to ``rmtree`` /tmp/x, thesis included."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "thesis.tex").write_text("years of work")
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        cache_cli(["clear"])
    assert stopped.value.code == 2
    assert "not a qrag-gym embedding cache" in capsys.readouterr().err
    assert (tmp_path / "thesis.tex").read_text() == "years of work" and (tmp_path / "sub").is_dir()
    monkeypatch.chdir(tmp_path)  # QRAG_CACHE_DIR=. : the working folder stays as it is
    monkeypatch.setenv("QRAG_CACHE_DIR", ".")
    with pytest.raises(SystemExit):
        cache_cli(["clear"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "thesis.tex"]


def test_clear_in_a_marked_folder_deletes_only_shard_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache written into a folder that holds other files marks it, and clearing removes only shards."""
    (tmp_path / "thesis.tex").write_text("keep")
    cache = _filled(tmp_path, ["x", "y"])
    assert (tmp_path / cache_module.MARKER).is_file()
    (cache.folder / "notes.txt").write_text("mine, not the cache's")
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path))
    cache_cli(["clear"])
    assert (tmp_path / "thesis.tex").read_text() == "keep"
    assert (cache.folder / "notes.txt").is_file() and not list(cache.folder.glob("shard-*"))
    cache.clear()  # the per-model clear keeps foreign files too
    assert (cache.folder / "notes.txt").is_file()


def _npy_with_broken_header() -> bytes:
    """An .npy whose header dict opens an unterminated string: numpy's parser raises tokenize.TokenError."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.zeros((1, 16), np.uint8))
    raw = bytearray(buffer.getvalue())
    at = raw.find(b"'descr'")
    raw[at:at + 3] = b"'''"
    return bytes(raw)


def test_shard_with_damaged_header_is_moved_aside_and_named(tmp_path: Path) -> None:
    """Issue 14.10: a TokenError from a shard's header broke every later process until removed by hand."""
    import zipfile

    texts = [f"t{i}" for i in range(5)]
    cache = _filled(tmp_path, texts)
    broken = cache.folder / "shard-9-9.npz"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("keys.npy", _npy_with_broken_header())
        archive.writestr("vectors.npy", _npy_with_broken_header())
    with pytest.warns(RuntimeWarning, match=r"shard-9-9\.npz is unreadable"):
        reloaded = EmbeddingDiskCache("model", DIM, root=tmp_path)
    assert reloaded.lookup(texts)[0].all()
    assert not broken.exists() and (cache.folder / "shard-9-9.npz.unreadable").is_file()
    EmbeddingDiskCache("model", DIM, root=tmp_path)  # the next process loads without a word


def test_unwritable_cache_folder_warns_once_and_keeps_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14.11: a read-only or full cache folder ended the run at the first flush. (A full disk is
    simulated: this suite may run as root, which writes into read-only folders.)"""
    import errno

    def disk_full(path, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(cache_module, "atomic_save_npz", disk_full)
    cache = EmbeddingDiskCache("model", DIM, root=tmp_path)
    with pytest.warns(RuntimeWarning, match="cannot be written") as caught:
        for batch in range(3):
            cache.add([f"b{batch}-{i}" for i in range(cache_module.FLUSH_EVERY)], _vectors(cache_module.FLUSH_EVERY, batch))
    assert len([w for w in caught if "cannot be written" in str(w.message)]) == 1
    found, vectors = cache.lookup(["b0-0", "b2-1"])
    assert found.all()
    np.testing.assert_array_equal(vectors[1], _vectors(cache_module.FLUSH_EVERY, 2)[1])


def test_token_counts_are_kept_on_disk_keyed_by_texts_and_tokenizer(tmp_path) -> None:
    """A second process reads a corpus's token counts instead of re-tokenising it; other texts or another
    tokenizer get their own entry, and `qrag-cache clear` removes them with the shards."""
    from qrag_gym.cache import TOKEN_COUNTS, cached_token_counts, clear_all

    calls = []

    def count(texts):
        calls.append(len(texts))
        return np.array([len(t.split()) for t in texts])

    texts = ["One two three.", "Four five."]
    assert cached_token_counts(texts, "tok-a", count, root=tmp_path).tolist() == [3, 2]
    assert cached_token_counts(texts, "tok-a", count, root=tmp_path).tolist() == [3, 2]
    assert calls == [2]  # the second call read the file
    cached_token_counts(texts, "tok-b", count, root=tmp_path)
    cached_token_counts([*texts, "Six."], "tok-a", count, root=tmp_path)
    assert calls == [2, 2, 3] and len(list((tmp_path / TOKEN_COUNTS).iterdir())) == 3
    for path in (tmp_path / TOKEN_COUNTS).iterdir():
        path.write_bytes(b"garbage")  # damaged: counted again, not trusted
    assert cached_token_counts(texts, "tok-a", count, root=tmp_path).tolist() == [3, 2] and len(calls) == 4
    (tmp_path / TOKEN_COUNTS / "mine.txt").write_text("not the cache's")
    assert clear_all(tmp_path)[1] == 3 and [p.name for p in (tmp_path / TOKEN_COUNTS).iterdir()] == ["mine.txt"]
