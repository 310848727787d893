"""QRAG-NIAH-v0: Gymnasium compliance, determinism, needles where the supporting ids say, error paths."""

from __future__ import annotations

import os
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import qrag_gym
from qrag_gym.data.niah import REPEAT_SENTENCES, VARIANTS, distinct_values, random_values
from qrag_gym.data.noise import load_book_corpus
from qrag_gym.data.paths import DataNotFoundError
from qrag_gym.models import count_tokens
from qrag_gym.metrics import retrieval_metrics, ruler_string_match

torch.set_num_threads(1)

DATA = Path(os.environ.get("QRAG_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_books = pytest.mark.skipif(not (DATA / "noise" / "gutenberg").is_dir(), reason="no noise/gutenberg data")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
NEEDLE = re.compile(r"^One of the special magic (\w+) for (\S+) is: (\S+)\.$")


def make(variant: str, **kwargs):
    kwargs.setdefault("context_tokens", 1500)
    return gym.make("QRAG-NIAH-v0", variant=variant, data_dir=str(DATA), **kwargs)


def test_registered():
    assert "QRAG-NIAH-v0" in qrag_gym.ENV_IDS


@needs_books
@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
@pytest.mark.parametrize("variant", ["single_1", "multivalue"])
def test_check_env(variant):
    env = make(variant)
    check_env(env.unwrapped, skip_render_check=True)
    check_env(env, skip_render_check=True)


@needs_books
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_supporting_ids_are_the_asked_needles(variant):
    config = VARIANTS[variant]
    env = make(variant).unwrapped
    for seed in range(3):
        _, info = env.reset(seed=seed)
        episode = env.episode
        answers = info["answers"]
        asked = set(episode.meta["asked_keys"])
        assert len(asked) == config.num_needle_q
        assert len(answers) == len(set(answers)) == config.num_supporting
        needles = {i: NEEDLE.match(c) for i, c in enumerate(episode.chunks)}
        real = {i: m for i, m in needles.items() if m and m.group(2) in episode.meta["keys"]}
        assert sorted(real) == sorted(episode.meta["needle_ids"])
        assert len(real) == config.num_needles
        assert sorted(i for i, m in real.items() if m.group(2) in asked) == list(info["supporting_ids"])
        assert sorted(real[i].group(3) for i in info["supporting_ids"]) == sorted(answers)
        for i in info["supporting_ids"]:
            assert real[i].group(1) == config.type_needle_v
            value = real[i].group(3)
            assert UUID.match(value) if config.type_needle_v == "uuids" else re.fullmatch(r"\d{7}", value)
        for key in asked:
            assert key in episode.question
        if config.haystack == "needle":  # distractor needles never reuse a real key
            distractors = [m for i, m in needles.items() if m and i not in real]
            assert len(distractors) > 10
            assert not {m.group(2) for m in distractors} & set(episode.meta["keys"])
        if config.haystack == "repeat":
            assert set(episode.chunks) - {episode.chunks[i] for i in real} <= set(REPEAT_SENTENCES)
        assert episode.task == variant
        assert ruler_string_match(episode.answer, answers) == 1.0


@needs_books
def test_same_seed_same_episode_and_terminates_on_completion():
    first, second = make("multiquery").unwrapped, make("multiquery").unwrapped
    first.reset(seed=7)
    second.reset(seed=7)
    assert first.episode == second.episode
    second.reset(seed=8)
    assert second.episode.chunks != first.episode.chunks
    supporting = first.episode.supporting_ids
    for step, index in enumerate(supporting, start=1):
        _, reward, terminated, truncated, info = first.step(index)
        assert terminated == (step == len(supporting)) and not truncated
    assert reward == 1.0 and info["completed"]
    assert retrieval_metrics(info["selected_order"], supporting)["success_at_k"] == 1.0


@needs_books
@pytest.mark.parametrize("variant", ["single_1", "single_2", "multikey_3"])
def test_length_is_measured_in_tokens(variant):
    env = make(variant, context_tokens=20_000).unwrapped
    _, info = env.reset(seed=0)
    assert 20_000 <= info["num_tokens"] < 20_000 + 300
    counted = count_tokens(env._tokenizer, list(env.chunks)).sum()
    assert counted == info["num_tokens"]


@needs_books
def test_validation_uses_held_out_books():
    env = make("single_2", split="validation").unwrapped
    env.reset(seed=0)
    books = set(load_book_corpus(DATA / "noise" / "gutenberg", "validation").sentences)
    haystack = [c for i, c in enumerate(env.chunks) if i not in env.episode.meta["needle_ids"]]
    assert haystack and set(haystack) <= books
    assert env.episode.source == "niah-gutenberg"


def test_generated_source_is_labelled():
    env = gym.make("QRAG-NIAH-v0", variant="single_2", source="generated", context_tokens=800).unwrapped
    env.reset(seed=0)
    assert env.episode.source == "niah-synthetic-noise"


def test_overrides_change_the_counts():
    env = gym.make("QRAG-NIAH-v0", variant="multikey_2", context_tokens=800, num_needle_k=3, num_needle_v=2,
                   num_needle_q=2).unwrapped
    _, info = env.reset(seed=0)
    assert len(info["supporting_ids"]) == 4 and len(env.episode.meta["needle_ids"]) == 6
    assert env.question.startswith("What are all the special magic numbers for ")


def test_values_come_from_the_seeded_generator():
    for kind in ("words", "numbers", "uuids"):
        a = random_values(kind, np.random.default_rng(3), 5)
        assert a == random_values(kind, np.random.default_rng(3), 5)
    assert all(UUID.match(u) for u in random_values("uuids", np.random.default_rng(0), 20))
    values = distinct_values("numbers", np.random.default_rng(0), 50, exclude={"1234567"})
    assert len(set(values)) == 50 and "1234567" not in values


def test_errors():
    with pytest.raises(ValueError, match="unknown NIAH variant 'single_9'.*multiquery"):
        gym.make("QRAG-NIAH-v0", variant="single_9")
    with pytest.raises(ValueError, match="num_needle_q=5 asks more keys"):
        gym.make("QRAG-NIAH-v0", variant="multiquery", num_needle_q=5)
    with pytest.raises(ValueError, match="max_steps=3 is below the 4 needles"):
        gym.make("QRAG-NIAH-v0", variant="multivalue", max_steps=3, source="generated")
    with pytest.raises(ValueError, match="unknown type_needle_v 'colours'"):
        gym.make("QRAG-NIAH-v0", variant="single_1", type_needle_v="colours")


def test_missing_books_name_every_place_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("QRAG_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with pytest.raises(DataNotFoundError) as err:
        gym.make("QRAG-NIAH-v0", variant="single_2", source="real")
    message = str(err.value)
    assert str(tmp_path / "env" / "noise" / "gutenberg") in message
    assert str(tmp_path / "xdg" / "qrag-gym" / "noise" / "gutenberg") in message
    with pytest.raises(DataNotFoundError, match="does not exist"):
        gym.make("QRAG-NIAH-v0", variant="single_2", data_dir=str(tmp_path / "nowhere"))


def test_ruler_string_match():
    assert ruler_string_match("The special magic number is 1234567.", ["1234567"]) == 1.0
    assert ruler_string_match("1234567 and 7654321", ["1234567", "7654321", "1111111", "2222222"]) == 0.5
    assert ruler_string_match("UUID: ABCDEF12-0000", ["abcdef12-0000"]) == 1.0
    assert ruler_string_match("nothing here", ["1234567"]) == 0.0
    with pytest.raises(ValueError):
        ruler_string_match("x", [])


@needs_books
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_chunks_are_ids_books_shared_and_made_texts_episode_local(variant):
    """Every chunk has an id: essay haystacks keep the books table's ids (the same table, by fingerprint, as
    BABILong's books of that split, so their features are shared), the texts an episode makes (needles, generated
    haystacks) and its question (the last row) are in an episode-local table that never joins the process-wide
    registry of feature tables; the features by id are the embedder's own vectors of the texts."""
    from qrag_gym.envs.babilong import BabilongEnv
    from qrag_gym.features import _OPEN_TABLES

    env = make(variant, split="validation").unwrapped
    for seed in range(2):
        env.reset(seed=seed)
        episode = env.episode
        assert episode.corpus.texts(episode.chunk_ids) == episode.chunks
        assert int(episode.corpus.tokens(episode.chunk_ids).sum()) == episode.num_tokens
        local = episode.corpus.tables[-1]
        assert episode.question_id == len(episode.corpus) - 1 and local.texts[-1] == episode.question
        needles = {episode.chunks[i] for i in episode.meta["needle_ids"]}
        assert local.episode_local and needles <= set(local.texts) and len(set(local.texts)) == len(local.texts)
        if VARIANTS[variant].haystack == "essay":
            books = episode.corpus.tables[0]
            babilong = BabilongEnv(task="qa1", split="validation", data_dir=str(DATA), source="real")
            assert not books.episode_local and books.fingerprint == babilong.corpus.tables[0].fingerprint
            assert set(local.texts) == needles | {episode.question}
        np.testing.assert_array_equal(env.chunk_vectors(), env.embedder.encode(list(episode.chunks)))
        assert all(key[0] != local.fingerprint for key in _OPEN_TABLES)
