"""The read-only Document handle agents get instead of the env: the env's own texts and scores, bound to one episode."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qrag_gym.document import Document, StaleDocumentError
from qrag_gym.wrappers import state_text

pytestmark = pytest.mark.usefixtures("single_thread")


def test_document_reads_the_episode_through_the_envs_own_methods(make_env) -> None:
    env = make_env("qa2")
    obs, info = env.reset(seed=3)
    base, document = env.unwrapped, Document(env.unwrapped)
    assert document.question == base.question == info["question"]
    assert document.texts == base.chunks and document.num_chunks == info["num_chunks"] == len(base.chunks)
    assert document.text(document.num_chunks - 1) == base.chunks[-1]
    query = document.encode(document.question)
    np.testing.assert_array_equal(query, base.embedder.encode([base.question], persist=False)[0])
    np.testing.assert_array_equal(document.score(query), base.score(query))
    np.testing.assert_array_equal(document.vectors([4, 1]), base.chunk_vectors()[[4, 1]])
    assert document.vectors().shape == (document.num_chunks, document.dim)
    env.step(5)
    env.step(2)
    assert document.selected == [5, 2] and document.max_steps == 6
    assert state_text(document) == " ".join([base.question, base.chunks[2], base.chunks[5]])
    assert document.score(query)[5] == -np.inf  # scores follow the live mask


def test_document_features_cannot_be_changed(make_env) -> None:
    env = make_env()
    env.reset(seed=0)
    document = Document(env.unwrapped)
    with pytest.raises(ValueError, match="read-only"):
        document.vectors()[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        document.vectors([0])[0, 0] = 1.0
    assert not isinstance(document.texts, list)  # a tuple: no agent edits another's texts


@pytest.mark.parametrize("bad", [-1, 10**6, 1.5, True, "3"])
def test_bad_chunk_id_is_named(make_env, bad) -> None:
    env = make_env()
    env.reset(seed=0)
    with pytest.raises(IndexError, match="chunk_id must be an int"):
        Document(env.unwrapped).text(bad)


def test_a_handle_from_an_earlier_episode_refuses_to_answer(make_env) -> None:
    env = make_env()
    env.reset(seed=0)
    document = Document(env.unwrapped)
    env.reset(seed=1)
    with pytest.raises(StaleDocumentError, match="earlier episode"):
        document.texts
    assert Document(env.unwrapped).texts == env.unwrapped.chunks


def test_document_is_not_the_env(make_env) -> None:
    """Code written for the old ``act(obs, info, env)`` signature fails with a message naming the new reads."""
    env = make_env()
    with pytest.raises(RuntimeError, match="call env.reset"):
        Document(env.unwrapped)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="pass env.unwrapped"):
        Document(env)
    with pytest.raises(AttributeError, match="document.question, .texts"):
        Document(env.unwrapped).unwrapped
    assert not hasattr(Document(env.unwrapped), "step")


def _repeated(env, seed: int, ids: bool):
    """The env's episode for ``seed`` with its chunks repeated as a long document repeats them (book sentences
    in 7 copies at 10M tokens): chunks 0..m-1, then the first half again, then chunk 3 once more."""
    env.reset(seed=seed)
    episode = env.unwrapped.episode
    order = np.concatenate([np.arange(len(episode.chunks)), np.arange(len(episode.chunks) // 2), [3]])
    chunks = tuple(episode.chunks[i] for i in order)
    changes = {"chunks": chunks, "chunk_ids": episode.chunk_ids[order] if ids else None,
               "corpus": episode.corpus if ids else None, "question_id": episode.question_id if ids else None}
    return dataclasses.replace(episode, **changes)


@pytest.mark.parametrize("ids", [True, False], ids=["corpus-ids", "texts"])
def test_distinct_chunks_name_each_repeat_once_in_document_order(make_env, ids: bool) -> None:
    env = make_env("qa1")
    episode = _repeated(env, 4, ids)
    env.reset(options={"episode": episode})
    first, owner = Document(env.unwrapped).distinct_chunks()
    texts = env.unwrapped.chunks
    assert len(set(texts)) == len(first) < len(texts)  # a copy is the same chunk however it is named
    assert [texts[i] for i in first[owner]] == list(texts)  # every chunk maps to a chunk with its text
    assert list(first) == sorted(first) and first[0] == 0  # first occurrences, in document order
    assert owner[-1] == 3 and owner[len(first)] == 0


def test_features_are_the_encoders_own_vectors_by_id_or_by_text(make_env) -> None:
    env = make_env("qa2")
    env.reset(seed=1)
    document, base = Document(env.unwrapped), env.unwrapped
    ids = [7, 0, 7]
    by_id = document.features(base.embedder, ids)  # from the corpus feature table
    np.testing.assert_array_equal(by_id, base.embedder.encode([base.chunks[i] for i in ids]))
    np.testing.assert_array_equal(by_id, base.chunk_vectors()[ids])
    env.reset(options={"episode": _repeated(env, 1, ids=False)})  # no ids: encoded from the texts
    np.testing.assert_array_equal(Document(env.unwrapped).features(base.embedder, ids), by_id)
    with pytest.raises(IndexError, match=r"chunk ids must be in \[0, "):
        Document(env.unwrapped).features(base.embedder, [0, env.unwrapped.num_chunks])


@pytest.mark.parametrize("family", ["babilong", "niah"])
def test_question_features_come_by_question_id_or_by_text(make_env, data_dir, family: str) -> None:
    """The question is a corpus text too (BABILong's questions table, NIAH's episode-local one): its features
    are the encoder's own vector, gathered by the episode's question id, and the same encoded from the text
    where the episode has no id; a wrong id is refused."""
    env = make_env("qa3") if family == "babilong" else gym.make(
        "QRAG-NIAH-v0", variant="multikey_1", context_tokens=1_000, data_dir=str(data_dir))
    env.reset(seed=2)
    base = env.unwrapped
    episode = base.episode
    assert episode.question_id is not None
    by_id = Document(base).question_features(base.embedder)
    np.testing.assert_allclose(by_id, base.embedder.encode([base.question], persist=False)[0], atol=1e-6)
    env.reset(options={"episode": dataclasses.replace(episode, question_id=None)})
    np.testing.assert_allclose(Document(base).question_features(base.embedder), by_id, atol=1e-6)
    wrong = int(episode.chunk_ids[0])
    with pytest.raises(ValueError, match=f"question_id {wrong} is not this episode's question"):
        dataclasses.replace(episode, question_id=wrong)
    with pytest.raises(ValueError, match="give chunk_ids and corpus too"):
        dataclasses.replace(episode, chunk_ids=None, corpus=None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.lists(st.integers(0, 9), min_size=1, max_size=60), ids=st.booleans())
def test_distinct_chunks_hold_for_any_repeats(make_env, order: list[int], ids: bool) -> None:
    """Any document made of repeats of ten chunks, named by corpus id or by text: ``first`` lists each distinct
    chunk once, at its first occurrence, and ``owner`` maps every chunk id to the one with its text."""
    env = make_env("qa1")
    env.reset(seed=0)
    base = env.unwrapped.episode
    picks = np.asarray(order)
    episode = dataclasses.replace(base, chunks=tuple(base.chunks[i] for i in picks), supporting_ids=(0,),
                                  chunk_ids=base.chunk_ids[picks] if ids else None, corpus=base.corpus if ids else None,
                                  question_id=base.question_id if ids else None)
    env.reset(options={"episode": episode})
    first, owner = Document(env.unwrapped).distinct_chunks()
    texts = episode.chunks
    assert [texts[i] for i in first[owner]] == list(texts)
    assert first.tolist() == sorted({texts.index(text) for text in texts})
