"""Features by id: the memory-mapped tables give the text path's vectors bit for bit, persist across
processes, survive interrupted writes, score long documents in blocks and are cleared with the cache."""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from qrag_gym import features as features_module
from qrag_gym.cache import clear_all
from qrag_gym.corpus import Corpus, TextTable
from qrag_gym.data.babi import load_split
from qrag_gym.embedding import TextEmbedder
from qrag_gym.envs import retrieval as retrieval_module
from qrag_gym.features import CorpusFeatures, FeatureTable


@pytest.fixture(scope="module")
def facts(data_dir: Path) -> list[str]:
    """60 distinct real bAbI facts (qa2 training stories)."""
    samples = load_split(data_dir / "babi" / "en-10k", "qa2", "train")
    return sorted({fact for sample in samples[:40] for fact in sample.facts})[:60]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> TextEmbedder:
    return TextEmbedder(cache_dir=tmp_path_factory.mktemp("cache"))


def _damage(path: Path) -> None:
    """Put a file that is not this table at ``path`` (a new file: truncating the mapped one in place would
    crash every process mapping it, which the package itself never does)."""
    other = path.with_name("damaged.npy")
    np.save(other, np.zeros((2, 2), dtype=np.float32))
    os.replace(other, path)


def _table(texts: list[str]) -> TextTable:
    return TextTable.of(texts, np.ones(len(texts), dtype=np.int64))


def test_rows_are_the_text_paths_vectors_and_persist(facts: list[str], embedder: TextEmbedder,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    table = _table(facts)
    first = FeatureTable(table, embedder, embedder.disk.folder)
    ids = np.array([5, 0, 5, 59, 17])
    np.testing.assert_array_equal(first.rows(ids), embedder.encode([facts[i] for i in ids.tolist()]))
    assert first.filled.sum() == 4 and first.path.is_file() and first.filled_path.is_file()
    # Another process (a new table object on the same file) reads marked rows without encoding anything.
    monkeypatch.setattr(embedder, "encode", lambda texts, **_: pytest.fail(f"re-encoded {texts}"))
    again = FeatureTable(table, embedder, embedder.disk.folder)
    np.testing.assert_array_equal(again.rows(np.array([59, 0])), first.rows(np.array([59, 0])))


def test_a_table_keeps_its_vectors_by_id_only(facts: list[str], tmp_path: Path) -> None:
    """Filling a table leaves no second copy keyed by text in the embedder's memory, and gives the vectors a
    text-keyed call gives (from the disk cache: same bits)."""
    embedder = TextEmbedder(cache_dir=tmp_path)
    rows = FeatureTable(_table(facts[:6]), embedder, embedder.disk.folder).rows(np.arange(6))
    assert len(embedder._cache) == 0  # noqa: SLF001 - the point of the test
    embedder.disk.flush()
    fresh = TextEmbedder(cache_dir=tmp_path)
    np.testing.assert_array_equal(rows, fresh.encode(facts[:6]))


def test_unmarked_rows_are_encoded_again_and_a_foreign_shape_is_rebuilt(facts: list[str], embedder: TextEmbedder) -> None:
    """A process killed after writing rows but before the bitmap leaves rows no reader trusts; a table file
    of another shape (not this table's) is rebuilt with a warning, not read."""
    table = _table(facts[:10])
    written = FeatureTable(table, embedder, embedder.disk.folder)
    expected = written.rows(np.arange(10)).copy()
    written.filled_path.unlink()  # the kill: rows on disk, no bitmap
    written.vectors[:] = 7.0  # what a half-written row could hold
    written.vectors.flush()
    reread = FeatureTable(table, embedder, embedder.disk.folder)
    assert not reread.filled.any()
    np.testing.assert_array_equal(reread.rows(np.arange(10)), expected)
    _damage(reread.path)
    with pytest.warns(RuntimeWarning, match=r"shape \(2, 2\).*rebuilt"):
        rebuilt = FeatureTable(table, embedder, embedder.disk.folder)
    np.testing.assert_array_equal(rebuilt.rows(np.arange(10)), expected)


def test_an_unwritable_folder_keeps_the_table_in_memory(facts: list[str], embedder: TextEmbedder, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder would be")
    with pytest.warns(RuntimeWarning, match="keeps it in memory"):
        table = FeatureTable(_table(facts[:4]), embedder, blocked / "model")
    assert table.path is None
    np.testing.assert_array_equal(table.rows(np.arange(4)), embedder.encode(facts[:4]))


def test_corpus_ids_span_tables_and_score_in_blocks(facts: list[str], embedder: TextEmbedder,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = Corpus((_table(facts[:25]), _table(facts[25:])))
    tables = [FeatureTable(table, embedder, None) for table in corpus.tables]
    features = CorpusFeatures(corpus, tables)
    ids = np.random.default_rng(0).integers(0, len(corpus), 200)
    vectors = features.rows(ids)
    np.testing.assert_array_equal(vectors, embedder.encode([facts[i] for i in ids.tolist()]))
    monkeypatch.setattr(features_module, "SCORE_BLOCK", 7)
    query = vectors[3]
    np.testing.assert_allclose(features.scores(ids, query), vectors @ query, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="chunk id -1 is outside"):
        features.rows(np.array([-1]))


def test_env_scores_a_long_document_block_by_block(make_env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``SCORE_BLOCK`` chunks the env scores from the table without gathering the whole document; the
    scores are the gathered path's."""
    env = make_env("qa1", 1_000, embedder="default").unwrapped
    env.reset(seed=3)
    query = env.embedder.encode([env.question])[0]
    gathered = env.chunk_vectors() @ query
    env.reset(seed=3)
    monkeypatch.setattr(retrieval_module, "SCORE_BLOCK", 8)
    monkeypatch.setattr(features_module, "SCORE_BLOCK", 8)
    scores = env.score(query)
    assert env._vectors is None  # noqa: SLF001 - the point: nothing was gathered whole
    np.testing.assert_allclose(scores[: env.num_chunks], gathered, rtol=0, atol=1e-6)
    assert np.isneginf(scores[env.num_chunks:]).all()


def test_info_counts_and_clear_removes_feature_tables(facts: list[str], tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from qrag_gym.cache_cli import main as cache_cli

    embedder = TextEmbedder(cache_dir=tmp_path)
    table = FeatureTable(_table(facts[:3]), embedder, embedder.disk.folder)
    table.rows(np.arange(3))
    embedder.disk.flush()
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path))
    cache_cli(["info"])
    assert ": 1 shards, " in capsys.readouterr().out  # the table's .filled.npz bitmap is not counted as a shard
    (table.path.parent / "notes.txt").write_text("not the cache's")
    clear_all(tmp_path)
    assert not table.path.exists() and not table.filled_path.exists()
    assert (table.path.parent / "notes.txt").is_file()


def test_training_env_prefetch_fills_every_row(make_env) -> None:
    from qrag_agents.qrag.train import prefetch_features

    env = make_env("qa1", 1_000, embedder="default").unwrapped
    prefetch_features(env, env.embedder)
    features = features_module.corpus_features(env.corpus, env.embedder)
    assert all(table.filled.all() for table in features.tables)
    env.reset(seed=0)
    np.testing.assert_array_equal(env.chunk_vectors(), env.embedder.encode(env.chunks))


def test_gym_make_episode_ids_survive_vector_envs(data_dir) -> None:
    env = gym.make_vec("QRAG-Babilong-v0", num_envs=2, vectorization_mode="vector_entry_point", task="qa1",
                       context_tokens=1_000, split="validation", source="real", data_dir=str(data_dir))
    env.reset(seed=[1, 2])
    for episode in env.unwrapped.episodes:
        assert episode.corpus.texts(episode.chunk_ids) == episode.chunks


def test_openers_share_one_file_and_marks_survive_concurrent_fills(facts: list[str], embedder: TextEmbedder) -> None:
    """A second opener maps the file the first published (never replaces it), and each filler's bitmap keeps
    the rows the other marked meanwhile."""
    table = _table(facts[20:30])
    first = FeatureTable(table, embedder, embedder.disk.folder)
    second = FeatureTable(table, embedder, embedder.disk.folder)
    assert np.array_equal(first.identity, second.identity)
    first.fill(np.array([0, 1]))
    second.fill(np.array([2]))  # second's own marks are only {2}: the bitmap it writes must still hold 0 and 1
    assert np.flatnonzero(FeatureTable(table, embedder, embedder.disk.folder).filled).tolist() == [0, 1, 2]


def test_marks_made_for_a_replaced_file_are_never_read(facts: list[str], embedder: TextEmbedder) -> None:
    """A process still writing into a table file that another process replaced (a rebuild) writes its bitmap
    for the old file: a reader of the new file ignores it, instead of reading zeros as written rows."""
    table = _table(facts[30:40])
    old = FeatureTable(table, embedder, embedder.disk.folder)
    _damage(old.path)  # the next opener rebuilds it
    with pytest.warns(RuntimeWarning, match="rebuilt"):
        FeatureTable(table, embedder, embedder.disk.folder)
    old.fill(np.arange(10))  # rows go to the file `old` maps; its bitmap names that file
    reader = FeatureTable(table, embedder, embedder.disk.folder)
    assert not reader.filled.any()
    np.testing.assert_array_equal(reader.rows(np.arange(10)), embedder.encode(facts[30:40]))


def test_episode_ids_must_be_integers_and_name_the_episodes_texts(make_env) -> None:
    from dataclasses import replace

    base = make_env("qa1", 1_000).unwrapped
    base.reset(seed=0)
    episode = base.episode
    with pytest.raises(ValueError, match="integer numpy array"):
        replace(episode, chunk_ids=episode.chunk_ids.tolist())
    with pytest.raises(ValueError, match="must be integers"):
        episode.corpus.texts(episode.chunk_ids.astype(float))
    shuffled = replace(episode, chunk_ids=episode.chunk_ids[::-1].copy())
    with pytest.raises(ValueError, match="chunk_ids name other texts"):
        base.reset(options={"episode": shuffled})
    with pytest.raises(TypeError, match="must be a qrag_gym.episode.Episode"):
        base.reset(options={"episode": {"chunks": episode.chunks}})
    base.reset(options={"episode": replace(episode, chunk_ids=None, corpus=None, question_id=None)})  # text only: allowed
    assert base.chunks == episode.chunks and base.episode.chunk_ids is None
