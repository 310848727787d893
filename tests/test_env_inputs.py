"""Hostile inputs to the environments and loaders (issue 14): each either works or fails naming the cause.

Real bAbI stories with six small real books (``small_data_dir``) or hand-made files in ``tmp_path``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qrag_gym.cache import EmbeddingDiskCache
from qrag_gym.data.babi import BabiFormatError, load_babi_file, parse_babi_lines
from qrag_gym.data.hotpotqa import HotpotQAFormatError, load_hotpotqa
from qrag_gym.data.noise import MAX_SENTENCE_WORDS, NoiseCorpusError, load_book_corpus
from qrag_gym.data.paths import DataNotFoundError
from qrag_gym.embedding import TextEmbedder
from qrag_gym.models import ModelLoadError
from qrag_gym.envs.babilong import BabilongEnv
from qrag_gym.envs.niah import NiahEnv
from qrag_gym.envs.retrieval import DocumentTooShortWarning, EpisodeEndedError

from conftest import SMALL_BOOKS


def _babilong(data_dir: Path, **kwargs) -> BabilongEnv:
    kwargs.setdefault("split", "validation")
    return BabilongEnv(task="qa1", data_dir=str(data_dir), **kwargs)


def _link_books(folder: Path, source: Path, names: tuple[str, ...]) -> None:
    folder.mkdir(parents=True)
    for name in names:
        (folder / f"{name}.txt").symlink_to(source / "noise" / "gutenberg" / f"{name}.txt")


# ----- item 4: async vector envs return the real question ------------------------------------------
def test_async_vector_env_returns_the_real_question(small_data_dir: Path) -> None:
    """Gymnasium read ``Text`` spaces out of shared memory once: every question was 2,048 spaces."""
    envs = gym.make_vec("QRAG-Babilong-v0", num_envs=2, vectorization_mode="async", task="qa1", num_sentences=50,
                        data_dir=str(small_data_dir))
    try:
        obs, info = envs.reset(seed=0)
        assert list(obs["question"]) == list(info["question"]) and obs["question"][0].startswith("Where is")
        for _ in range(3):
            obs, _, _, _, info = envs.step(np.zeros(2, dtype=np.int64))
            assert list(obs["question"]) == list(info["question"])
            assert all(q.strip() for q in obs["question"])
    finally:
        envs.close()


# ----- item 5: documents never silently shorter than asked ---------------------------------------
def test_too_few_chunks_for_the_length_asked_warns(small_data_dir: Path) -> None:
    env = _babilong(small_data_dir, context_tokens=4_000, max_chunks=10)
    with pytest.warns(DocumentTooShortWarning, match=r"tokens for context_tokens=4000.*max_chunks=10"):
        env.reset(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = _babilong(small_data_dir, context_tokens=4_000).reset(seed=0)
    assert info["num_tokens"] >= 4_000


def test_a_book_without_sentence_breaks_neither_makes_a_giant_chunk_nor_shrinks_documents(
        data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "babi").mkdir(parents=True)
    (root / "babi" / "en-10k").symlink_to(data_dir / "babi" / "en-10k")
    _link_books(root / "noise" / "gutenberg", data_dir, SMALL_BOOKS)
    (root / "noise" / "gutenberg" / "aaa-no-breaks.txt").write_text(" ".join(["and then the river ran on"] * 6_000))
    corpus = load_book_corpus(root / "noise" / "gutenberg", "train")
    assert max(len(s.split()) for s in corpus.sentences) <= MAX_SENTENCE_WORDS
    env = BabilongEnv(task="qa1", context_tokens=8_000, split="train", data_dir=str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DocumentTooShortWarning)
        for seed in range(5):
            assert env.reset(seed=seed)[1]["num_tokens"] >= 8_000


# ----- item 6: an explicit data_dir is the only source, and cache keys hold every folder ------------
def test_explicit_data_dir_is_never_topped_up_from_the_environment(data_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QRAG_DATA_DIR", str(data_dir))  # holds everything: it must not be consulted
    only_babi = tmp_path / "only-babi"
    (only_babi / "babi").mkdir(parents=True)
    (only_babi / "babi" / "en-10k").symlink_to(data_dir / "babi" / "en-10k")
    with pytest.raises(DataNotFoundError, match=rf"(?s)no 'noise/gutenberg'.*{only_babi / 'noise/gutenberg'}") as err:
        BabilongEnv(task="qa1", data_dir=str(only_babi))
    assert str(data_dir) not in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError, match="babi/en-10k"):  # not generated stories either
        BabilongEnv(task="qa1", data_dir=str(empty))
    with pytest.raises(DataNotFoundError, match="noise/gutenberg"):
        NiahEnv(variant="single_2", data_dir=str(empty))


def test_source_cache_key_holds_the_book_folder(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stories from the user data folder, books from $QRAG_DATA_DIR: changing the books must change the env."""
    xdg = tmp_path / "xdg"
    (xdg / "qrag-gym" / "babi").mkdir(parents=True)
    (xdg / "qrag-gym" / "babi" / "en-10k").symlink_to(data_dir / "babi" / "en-10k")
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    first, second = SMALL_BOOKS[:3], SMALL_BOOKS[3:]
    for name, books in (("a", first), ("b", second)):
        _link_books(tmp_path / name / "noise" / "gutenberg", data_dir, books)
    monkeypatch.setenv("QRAG_DATA_DIR", str(tmp_path / "a"))
    assert set(BabilongEnv(task="qa1", num_sentences=20)._source.noise.book_names) == set(first)
    monkeypatch.setenv("QRAG_DATA_DIR", str(tmp_path / "b"))
    assert set(BabilongEnv(task="qa1", num_sentences=20)._source.noise.book_names) == set(second)


# ----- item 9: duplicated supporting ids, stepping past the end ------------------------------------
def test_duplicated_supporting_id_is_refused() -> None:
    lines = ["1 Mary went to the garden.", "2 John went to the hallway.", "3 Where is Mary?\tgarden\t1 1"]
    with pytest.raises(BabiFormatError, match=r"story.txt:3: supporting ids '1 1' name a statement more than once"):
        parse_babi_lines(lines, "qa1", origin="story.txt")


@pytest.mark.parametrize("reward", ["binary", "shaped"])
def test_step_after_the_episode_ended_raises(small_data_dir: Path, reward: str) -> None:
    env = _babilong(small_data_dir, num_sentences=20, reward=reward, max_steps=2)
    _, info = env.reset(seed=0)
    done, total = False, 0.0
    for action in list(info["supporting_ids"]) + [i for i in range(env.num_chunks) if i not in info["supporting_ids"]]:
        _, reward_now, terminated, truncated, info = env.step(action)
        total += reward_now
        if terminated or truncated:
            break
    with pytest.raises(EpisodeEndedError, match="call reset"):
        env.step(0)
    assert info["steps"] <= 2 and total <= 1.0


# ----- item 12: one-off generated texts stay out of the disk cache ---------------------------------
def test_niah_needles_are_not_written_to_the_disk_cache(tmp_path: Path, single_thread) -> None:
    embedder = TextEmbedder(cache_dir=tmp_path)
    env = NiahEnv(variant="single_1", context_tokens=120, embedder=embedder)
    env.reset(seed=0)
    env.chunk_vectors()
    embedder.disk.flush()
    needles = [env.chunks[i] for i in env.episode.meta["needle_ids"]]
    haystack = [c for i, c in enumerate(env.chunks) if i not in env.episode.meta["needle_ids"]]
    found, _ = EmbeddingDiskCache(embedder.fingerprint, embedder.dim, root=tmp_path).lookup(needles + haystack)
    assert not found[: len(needles)].any() and found[len(needles):].all()


# ----- item 13: clear errors naming the argument or file:line --------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"context_tokens": "4K"}, r"context_tokens='4K': expected a whole number"),
    ({"num_sentences": 2.7}, r"num_sentences=2.7: expected a whole number"),
    ({"context_tokens": 10**12}, r"context_tokens=1,000,000,000,000 is above the supported maximum"),
    ({"num_sentences": 50, "max_chunks": 10**12}, r"max_chunks=.* is above the supported maximum"),
    ({"context_tokens": 1_000, "max_steps": "6"}, r"max_steps='6'"),
])
def test_bad_lengths_name_the_argument(small_data_dir: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _babilong(small_data_dir, **kwargs)


def test_unknown_embedder_names_the_model(small_data_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="'no/such-model'"):
        _babilong(small_data_dir, num_sentences=20, embedder="no/such-model")


def test_folder_of_near_empty_books_is_an_error_naming_it(tmp_path: Path) -> None:
    books = tmp_path / "noise" / "gutenberg"
    books.mkdir(parents=True)
    for i in range(6):
        (books / f"b{i}.txt").write_text("CHAPTER I\n\nYes.\n")
    with pytest.raises(NoiseCorpusError, match=rf"{books}.*no sentence"):
        load_book_corpus(books, "all")


def test_hotpotqa_null_fields_and_non_utf8_name_file_and_line(tmp_path: Path) -> None:
    record = {"question_id": "q1", "question_text": "Who?", "answers_objects": [{"spans": ["x"]}],
              "contexts": [{"title": "A", "paragraph_text": None, "is_supporting": True}]}
    path = tmp_path / "h.jsonl"
    path.write_text("\n" + json.dumps(record) + "\n")
    with pytest.raises(HotpotQAFormatError, match=rf"{path}:2: .*'paragraph_text' is null"):
        load_hotpotqa(path)
    official = {"_id": "q2", "question": None, "answer": "y", "context": [["A", ["s."]]], "supporting_facts": [["A", 0]]}
    path.write_text(json.dumps(official) + "\n")
    with pytest.raises(HotpotQAFormatError, match=rf"{path}:1: .*'question' is null"):
        load_hotpotqa(path)
    path.write_bytes(b'{"a": 1}\n{"question": "caf\xe9"}\n')
    with pytest.raises(HotpotQAFormatError, match=rf"{path}:1: not a HotpotQA"):
        load_hotpotqa(path)
    path.write_bytes(json.dumps(official).replace("null", '"ok"').encode() + b'\n{"question": "caf\xe9"}\n')
    with pytest.raises(HotpotQAFormatError, match=rf"{path}:2: not UTF-8"):
        load_hotpotqa(path)


def test_non_utf8_babi_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "qa1.txt"
    path.write_bytes(b"1 Mary went to the garden.\n2 Where is Mary?\tgard\xe9n\t1\n")
    with pytest.raises(BabiFormatError, match=rf"{path}:2: not UTF-8"):
        load_babi_file(path, "qa1")


def test_max_chunks_below_the_longest_story_is_refused_at_construction(small_data_dir: Path) -> None:
    """Hypothesis found it: max_chunks=1 built an env whose every reset failed."""
    with pytest.raises(ValueError, match=r"max_chunks=1 cannot hold the \d+ facts of the longest qa1 validation story"):
        _babilong(small_data_dir, num_sentences=30, max_chunks=1)


# ----- fuzz: random kwargs, actions and bAbI lines -----------------------------------------------
DOCUMENTED = (ValueError, FileNotFoundError)
"""What the env and parser may raise for bad input (ValueError covers InvalidActionError, BabiFormatError,
ModelLoadError, NoiseCorpusError; FileNotFoundError covers DataNotFoundError)."""

_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 400), st.floats(allow_nan=True, width=32),
                    st.sampled_from(["", "qa1", "qa3", "train", "validation", "binary", "shaped", "4K", "all"]))
_KWARGS = st.dictionaries(st.sampled_from(["task", "context_tokens", "num_sentences", "split", "max_steps", "reward",
                                           "max_chunks", "penalize_extra_steps", "never_terminate",
                                           "invalid_action_penalty", "source"]), _VALUES, max_size=5)
_ACTIONS = st.lists(st.one_of(st.integers(-2, 60), st.floats(width=32), st.text(max_size=2), st.none()), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kwargs=_KWARGS, actions=_ACTIONS, seed=st.integers(0, 2**16))
def test_fuzz_env_kwargs_and_actions(small_data_dir: Path, kwargs: dict, actions: list, seed: int) -> None:
    kwargs.setdefault("num_sentences" if "context_tokens" not in kwargs else "max_steps", 30)
    try:
        env = BabilongEnv(data_dir=str(small_data_dir), **kwargs)
    except DOCUMENTED:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DocumentTooShortWarning)
        obs, info = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    ended = False
    for action in actions:
        try:
            obs, reward, terminated, truncated, info = env.step(action)
        except EpisodeEndedError:
            assert ended
            continue
        except DOCUMENTED:
            continue
        assert not ended, "a step after the end was accepted"
        assert env.observation_space.contains(obs) and np.isfinite(reward)
        assert info["steps"] <= env.max_steps and reward <= 1.0
        ended = terminated or truncated


_BABI_LINE = st.one_of(
    st.builds(lambda i, w: f"{i} {w}", st.integers(0, 6), st.sampled_from(["Mary went home.", "John left.", ""])),
    st.builds(lambda i, a, ids: f"{i} Where is Mary?\t{a}\t{ids}", st.integers(1, 6), st.sampled_from(["home", ""]),
              st.sampled_from(["1", "1 1", "2 1", "9", "x", "", "-1"])),
    st.text(max_size=20),
)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(_BABI_LINE, max_size=10))
def test_fuzz_babi_parser(lines: list[str]) -> None:
    try:
        samples = parse_babi_lines(lines, "qa1", origin="fuzz.txt")
    except BabiFormatError as err:
        assert str(err).startswith("fuzz.txt:")
        return
    for sample in samples:
        assert sample.supporting and len(set(sample.supporting)) == len(sample.supporting)
        assert all(0 <= i < len(sample.facts) for i in sample.supporting) and sample.answer
