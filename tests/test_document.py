"""The read-only Document handle agents get instead of the env: the env's own texts and scores, bound to one episode."""

from __future__ import annotations

import numpy as np
import pytest

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
