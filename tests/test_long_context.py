"""Long documents: the certified faiss shortlist picks what the full scan picks; batched work equals one-shot work."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest
import torch

import qrag_gym  # noqa: F401  (registers the envs)
from qrag_agents.qrag import inference
from qrag_agents.qrag.config import cpu_config
from qrag_agents.qrag.agent import QRAGAgent
from qrag_agents.qrag.inference import embed_document, rotation_bounds, shortlist_step, step_q_values
from qrag_agents.qrag.networks import QNetwork
from qrag_agents.qrag.rotary import rotary_frequencies, rotate
from qrag_gym.document import Document
from qrag_gym.embedding import TextEmbedder, shared_embedder
from qrag_gym.evaluation import run_episode
from qrag_agents.qrag.shortlist import ChunkIndex, certified_argmax, certified_top

SENTENCES = 2_000


@pytest.fixture(scope="module")
def env(small_data_dir) -> gym.Env:
    env = gym.make("QRAG-Babilong-v0", task="qa2", num_sentences=SENTENCES, data_dir=str(small_data_dir),
                   source="real", embedder=shared_embedder("default"))
    env.reset(seed=3)
    return env


def _network(integer: bool, perturbed: bool, stage: bool = False, context: bool = False, **overrides) -> QNetwork:
    config = cpu_config(integer_positions=integer, candidate_stage=stage, candidate_context=context, **overrides)
    network = QNetwork(config, shared_embedder("default")).eval()
    if perturbed:  # adapters no longer the identity: a scorer unlike the plain dense retriever
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return network


def follow_full_scan(network: QNetwork, base, chunks: torch.Tensor, index: ChunkIndex) -> int:
    """Six greedy steps on ``base``'s episode, the shortlist's action and max-Q checked against the full scan's
    at each; returns at how many steps a candidate stage changed the base Q's choice (0 without one)."""
    selected: list[int] = []
    mask = np.ones(base.num_chunks, dtype=bool)
    overturned = 0
    for _ in range(6):
        q = step_q_values(network, chunks, base.question, base.chunks, selected, mask)
        found = shortlist_step(network, index, chunks, base.question, base.chunks, selected, mask, k=8)
        action = int(q.argmax())
        assert found.action == action
        assert found.value == pytest.approx(float(q[action]), abs=1e-5)
        assert found.shortlisted + found.fallback < base.num_chunks  # it did not just score everything
        if network.candidate_stage is not None:
            network.candidate_stage, stage = None, network.candidate_stage  # the base Q's own choice
            overturned += int(step_q_values(network, chunks, base.question, base.chunks, selected, mask).argmax()) != action
            network.candidate_stage = stage
        selected.append(action)
        mask[action] = False
    return overturned


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("perturbed", [False, True])
def test_shortlist_matches_full_scan_on_real_episode(env: gym.Env, integer: bool, perturbed: bool) -> None:
    network = _network(integer, perturbed)
    chunks = embed_document(network, env.unwrapped.chunks)
    follow_full_scan(network, env.unwrapped, chunks, ChunkIndex(chunks.numpy()))


@pytest.mark.parametrize("integer, context, floor", [(False, False, False), (True, False, False), (False, True, False),
                                                     (False, True, True)])
def test_shortlist_matches_full_scan_with_a_candidate_stage(env: gym.Env, integer: bool, context: bool, floor: bool) -> None:
    """A model with a candidate stage: the certified top ``candidate_count + 1`` of the base Q, the stage's
    correction on the first ``candidate_count``, give the full scan's argmax and max-Q at every step (the
    stage's weights perturbed, so it does overturn base-Q orders), also with fewer valid chunks than candidates;
    with a stage that reads the selected chunks (``candidate_context``), and one that also reads the question
    and holds its candidates above the other chunks (``candidate_question``, ``candidate_floor``)."""
    base = env.unwrapped
    network = _network(integer, perturbed=True, stage=True, context=context, candidate_question=floor, candidate_floor=floor)
    chunks = embed_document(network, base.chunks)
    index = ChunkIndex(chunks.numpy())
    assert follow_full_scan(network, base, chunks, index)  # the stage changed a choice: the paths can differ
    few = np.zeros(base.num_chunks, dtype=bool)
    few[np.random.default_rng(0).choice(base.num_chunks, 5, replace=False)] = True  # fewer than candidate_count
    q = step_q_values(network, chunks, base.question, base.chunks, [], few)
    found = shortlist_step(network, index, chunks, base.question, base.chunks, [], few, k=2)
    assert found.action == int(q.argmax()) and found.value == pytest.approx(float(q.max()), abs=1e-5)


def test_qrag_episode_same_with_and_without_shortlist(small_data_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    network = _network(integer=False, perturbed=True)
    env = gym.make("QRAG-Babilong-v0", task="qa2", num_sentences=SENTENCES, data_dir=str(small_data_dir),
                   source="real", never_terminate=True)
    full_agent, short_agent = QRAGAgent(network=network), QRAGAgent(network=network, shortlist=8)
    full = run_episode(full_agent, env, 5)
    monkeypatch.setattr(inference, "SHORTLIST_MIN_CHUNKS", 0)
    short = run_episode(short_agent, env, 5)
    assert short["selected"] == full["selected"] and short["kept"] == full["kept"]
    np.testing.assert_allclose(short_agent._max_q, full_agent._max_q, atol=1e-5)


def test_dense_inner_product_shortlist(env: gym.Env) -> None:
    base = env.unwrapped
    vectors = base.chunk_vectors()
    query = vectors[:3].sum(0)
    mask = np.ones(base.num_chunks, dtype=bool)
    mask[[int(np.argmax(vectors @ query))]] = False  # the best chunk is already taken
    found = certified_argmax(ChunkIndex(vectors), query[None], np.full(1, 1e-4), np.zeros(1, dtype=np.int64),
                             mask, 4, lambda ids: vectors[ids] @ query)
    assert found.action == int(np.argmax(np.where(mask, vectors @ query, -np.inf)))


def test_rotation_bound_holds() -> None:
    """|<R(p)^T s - R(c)^T s, e>| never exceeds the bound for |p - c| <= half-width."""
    torch.manual_seed(0)
    dim = 32
    frequencies = rotary_frequencies(dim // 2)
    state = torch.randn(dim)
    chunks = torch.nn.functional.normalize(torch.randn(500, dim), dim=-1)
    for half_width in (0.05, 0.5, 3.0, 50.0):
        centre = 40.0
        positions = centre + (torch.rand(500) * 2 - 1) * half_width
        exact = (state * rotate(chunks, positions, frequencies)).sum(-1)
        approx = chunks @ rotate(state, torch.tensor(-centre), frequencies)
        bound = rotation_bounds(state.numpy(), frequencies.numpy(), np.array([half_width]), max_norm=1.0)[0]
        assert float((exact - approx).abs().max()) <= bound


def test_batched_embedding_and_scoring_equal_one_shot(env: gym.Env, monkeypatch: pytest.MonkeyPatch) -> None:
    base = env.unwrapped
    network = _network(integer=False, perturbed=True)
    texts = base.chunks[:300]
    one_shot = network.embed_chunks(list(texts)).detach()
    monkeypatch.setattr(inference, "CHUNK_BATCH", 7)
    streamed = embed_document(network, texts)
    torch.testing.assert_close(streamed, one_shot, atol=1e-6, rtol=1e-5)
    selected, mask = [4, 100], np.ones(len(texts), dtype=bool)
    q_streamed = step_q_values(network, streamed, base.question, texts, selected, mask)
    monkeypatch.setattr(inference, "CHUNK_BATCH", 10_000)
    q_one_shot = step_q_values(network, streamed, base.question, texts, selected, mask)
    torch.testing.assert_close(q_streamed, q_one_shot)


def test_encoder_batches_and_cache_dir(env: gym.Env, tmp_path) -> None:
    texts = list(env.unwrapped.chunks[:24])
    small = TextEmbedder(batch_size=5, disk_cache=False)
    large = TextEmbedder(batch_size=24, cache_dir=tmp_path)
    np.testing.assert_allclose(small.encode_uncached(texts), large.encode(texts), atol=1e-5)
    large.disk.flush()
    assert list((tmp_path / large.fingerprint).glob("shard-*.npz"))


def test_agent_shortlist_option_acts_like_full_scan(env: gym.Env, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qrag_agents.qrag.agent import QRAGAgent
    from qrag_agents.qrag.checkpoint import save_model

    save_model(_network(integer=False, perturbed=True), tmp_path / "model")
    monkeypatch.setattr(inference, "SHORTLIST_MIN_CHUNKS", 0)
    runs = []
    for shortlist in (None, 8):
        agent = QRAGAgent(model=str(tmp_path / "model"), shortlist=shortlist)
        obs, info = env.reset(seed=11)
        document = Document(env.unwrapped)
        agent.reset(obs, info, document)
        actions = []
        for _ in range(3):
            actions.append(agent.act(obs, info, document))
            obs, _, _, _, info = env.step(actions[-1])
        runs.append((actions, agent._max_q))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_allclose(runs[0][1], runs[1][1], atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), ranges=st.integers(1, 6), k=st.integers(1, 5), count=st.integers(1, 12),
       noise=st.floats(0.0, 0.3), ties=st.booleans())
def test_certified_top_is_the_exact_top_count(seed: int, ranges: int, k: int, count: int, noise: float, ties: bool) -> None:
    """Any ranges, per-range queries off by up to their bounds, invalid chunks and duplicated vectors (exact
    ties): the certified top ``count`` is the brute-force top ``count`` (ties lowest id first)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((60, 8)).astype(np.float32)
    if ties:
        vectors[30:40] = vectors[:10]
    query = rng.standard_normal(8).astype(np.float32)
    starts = np.unique(np.concatenate([[0], rng.integers(1, 60, ranges - 1)])).astype(np.int64)
    offsets = (noise * rng.standard_normal((len(starts), 8))).astype(np.float32)
    queries = query + offsets
    norm = float(np.linalg.norm(vectors, axis=1).max())
    bounds = np.linalg.norm(offsets, axis=1) * norm + 1e-4
    valid = rng.random(60) > 0.2
    valid[0] = True
    exact = lambda ids: (vectors[ids] * query).sum(1)  # noqa: E731 - row by row: the same bits in any subset
    top = certified_top(ChunkIndex(vectors), queries, bounds, starts, valid, k, exact, count=count)
    ids = np.flatnonzero(valid)
    expected = ids[np.lexsort((ids, -exact(ids)))][:count]
    assert top.ids.tolist() == expected.tolist()
    np.testing.assert_array_equal(top.values, exact(expected))
