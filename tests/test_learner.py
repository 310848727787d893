"""The id-and-tensor learner (issue 15, item 4) plays and learns exactly what the per-episode learner did.

The previous learner is kept, frozen, as the baseline of ``benchmarks/studies/learner_speed.py``; these
tests hold the two together update for update on real data, and check the batched pieces (positions,
summed features) against the per-episode functions they replace.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qrag_agents.qrag.config import ConfigError, cpu_config
from qrag_agents.qrag.learner import EnvSlots, Learner, ScoreTiers, cheapest_base_width, summed_selected
from qrag_agents.qrag.networks import QNetwork
from qrag_agents.qrag.rotary import relative_positions, relative_positions_batch
from qrag_agents.qrag.train import make_train_envs
from qrag_benchmarks.studies.baseline_learner import Learner as BaselineLearner, _today_q_halves
from qrag_gym.embedding import shared_embedder


def test_batched_positions_equal_the_per_episode_ones_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    for integer in (False, True):
        num_chunks = rng.integers(1, 40, size=32)
        selected = np.full((32, 6), -1)
        for row, n in enumerate(num_chunks):
            picks = rng.choice(n, size=rng.integers(0, min(n, 6) + 1), replace=False)
            selected[row, : len(picks)] = picks
        batch = relative_positions_batch(num_chunks, selected, 45, 20.0, 18.0, integer)
        for row, n in enumerate(num_chunks):
            expected = relative_positions(int(n), selected[row][selected[row] >= 0], 20.0, 18.0, integer)
            assert np.array_equal(batch[row, :n], expected)
            assert not batch[row, n:].any()


def test_summed_selected_equals_index_add_in_document_order() -> None:
    torch.manual_seed(0)
    features = torch.randn(3, 10, 8)
    ordered = torch.tensor([[1, 4, 9], [-1, -1, -1], [0, 7, -1]])
    expected = torch.zeros(3, 8)
    for row, ids in enumerate(ordered.tolist()):
        real = [i for i in ids if i >= 0]
        expected[row] = torch.zeros(1, 8).index_add(0, torch.zeros(len(real), dtype=torch.long), features[row, real])[0]
    assert torch.equal(summed_selected(features, ordered), expected)


@pytest.fixture(scope="module")
def network(data_dir) -> QNetwork:
    torch.manual_seed(0)
    return QNetwork(cpu_config(), shared_embedder("default"))


def test_complex_rotation_scores_equal_the_cos_sin_formula_bit_for_bit(network: QNetwork) -> None:
    """The one-pass complex rotation and per-half sums of :meth:`QNetwork.q_halves` give the very floats of
    the cos/sin products and slice sums they replaced, with and without gradients."""
    torch.manual_seed(1)
    states = torch.randn(5, network.dim)
    chunks = torch.randn(5, 30, network.dim, requires_grad=True)
    positions = torch.rand(5, 30) * 120
    new = network.q_halves(states.unsqueeze(1), chunks, positions)
    old = _today_q_halves(network, states.unsqueeze(1), chunks, positions)
    assert torch.equal(new, old)
    (new_grad,), (old_grad,) = (torch.autograd.grad(q.sum(), chunks) for q in (new, old))
    assert torch.allclose(new_grad, old_grad, atol=1e-6)
    assert torch.equal(network.q_halves(states.unsqueeze(1), chunks, turn=network.rotation(positions)), new)


def _pair(config, data_dir):
    embedder = None if config.finetune_encoder else shared_embedder(config.encoder, config.chunk_max_tokens)
    learners = []
    for cls in (BaselineLearner, Learner):
        torch.manual_seed(config.seed)
        online, target = QNetwork(config, embedder), QNetwork(config, embedder)
        learners.append(cls(config, make_train_envs(config, str(data_dir)), online, target))
    return learners


FULL_BUILD = {"finetune_encoder": True, "num_envs": 4, "train_num_sentences": 20, "random_transitions": 0}


@pytest.mark.parametrize("task, extra, updates", [("qa2", {"per_fact_reward": 0.1}, 4), ("qa3", {"candidate_stage": True}, 4),
                                                  ("qa2", FULL_BUILD, 2)])
def test_learner_matches_the_per_episode_learner_update_for_update(small_data_dir, single_thread, task, extra,
                                                                    updates) -> None:
    """Same seed, same networks: the same episodes, Boltzmann draws and features, so the same td_loss and Q
    to the last bit through the random warm-up and the Boltzmann phase, with envs that never terminate and
    envs that do (two vector envs); for qa2 with the per-fact shaping both add to their rollouts, for qa3 with
    the candidate stage, and for the full fine-tune build (its text path)."""
    settings = {"num_envs": 8, "train_num_sentences": 50, "random_transitions": 32, **extra}
    config = cpu_config(task=task, warmup_updates=2, full_episode_share=0.25, **settings)
    baseline, learner = _pair(config, small_data_dir)
    assert len(learner.slots.groups) == 2
    finished = 0
    for _ in range(updates):
        old_batch, new_batch = baseline.rollout(), learner.rollout()
        assert torch.equal(old_batch.targets, new_batch.targets)
        assert old_batch.episode_success == new_batch.episode_success
        assert old_batch.episode_returns == new_batch.episode_returns
        finished += len(new_batch.episode_success)
        old, new = baseline.update(old_batch), learner.update(new_batch)
        assert old == new
    assert finished > 0  # episodes ended and slots were reset within rollouts


def test_env_slots_keep_the_given_env_order_across_groups(small_data_dir) -> None:
    config = cpu_config(task="qa1", num_envs=4, train_num_sentences=50, full_episode_share=0.5)
    envs = make_train_envs(config, str(small_data_dir))
    slots = EnvSlots(envs)
    slots.reset([7, 8, 9, 10])
    assert [episode.question for episode in slots.episodes] == [env.question for env in envs]
    assert [rows.tolist() for _, rows in slots.groups] == [[0, 1], [2, 3]]
    assert [envs[0].never_terminate, envs[2].never_terminate] == [True, False]
    masks = slots.action_masks()
    assert masks.shape == (4, envs[0].max_chunks) and masks[:, 0].all()


def test_bfloat16_rollout_scores_chunks_near_float32_and_updates_in_float32(small_data_dir, single_thread) -> None:
    """``rollout_precision=bfloat16`` changes only the rollout's chunk encoding: the frozen features by id stay
    exact, the chunk vectors move by less than 5e-3 (and do move: the adapter really ran in bfloat16), and an
    update of the same batch gives the same loss as float32's, since the update runs in float32."""
    embedder = shared_embedder("default")
    learners = {}
    for precision in ("float32", "bfloat16"):
        config = cpu_config(task="qa1", num_envs=4, train_num_sentences=50, random_transitions=0,
                            rollout_precision=precision)
        torch.manual_seed(0)
        online, target = QNetwork(config, embedder), QNetwork(config, embedder)
        torch.nn.init.normal_(online.chunk_adapter[-1].weight, std=0.05)  # a trained adapter, not the identity
        learners[precision] = Learner(config, make_train_envs(config, str(small_data_dir)), online, target)
    exact, fast = learners["float32"], learners["bfloat16"]
    assert torch.equal(exact.features, fast.features)
    gap = float((exact.chunks - fast.chunks).abs().max())
    assert 0 < gap < 5e-3
    batch = exact.rollout()
    assert exact.update(batch) == fast.update(batch)


def test_rollout_precision_is_checked_by_name() -> None:
    with pytest.raises(ConfigError, match=r"rollout_precision='float16': choose one of \('float32', 'bfloat16'\)"):
        cpu_config(rollout_precision="float16")


@pytest.mark.parametrize("sizes", [[100] * 6, [100, 100, 174, 100, 212, 100], [3, 7, 7, 40, 1, 2], [9]])
def test_score_tiers_give_the_padded_batch_scores_bit_for_bit(network: QNetwork, sizes: list[int]) -> None:
    """Scoring all slots up to a base width and the longer slots beyond it gives each (slot, chunk) the very
    Q of the padded batch at the widest episode's width, zero past each slot's chunks."""
    torch.manual_seed(2)
    num_chunks = np.array(sizes)
    width = int(num_chunks.max())
    chunks = torch.randn(len(sizes), width + 5, network.dim)  # the buffer is wider than this step's episodes
    chunks[torch.arange(width + 5)[None, :] >= torch.from_numpy(num_chunks)[:, None]] = 0.0
    states = torch.randn(len(sizes), network.dim)
    positions = torch.from_numpy(relative_positions_batch(num_chunks, np.full((len(sizes), 2), -1), width)).float()
    tiers = ScoreTiers(network, num_chunks, positions)
    padded = network.q_halves(states.unsqueeze(1), chunks[:, :width], positions)
    assert torch.equal(tiers.q_halves(network, states, chunks), padded)
    if len(set(sizes)) > 1 and max(sizes) > 2 * min(sizes):
        assert tiers.base < width  # the long slots were scored on their own


def test_cheapest_base_width_scores_the_fewest_pairs() -> None:
    assert cheapest_base_width(np.array([100] * 62 + [174, 212]), 212) == 100
    assert cheapest_base_width(np.array([100, 100]), 100) == 100
    assert cheapest_base_width(np.array([10, 200, 200, 200]), 200) == 10  # 610 pairs against 800


def test_a_shorter_episode_clears_what_the_longer_one_before_it_left(small_data_dir) -> None:
    """The padded buffers hold zeros past each slot's chunks (the scores of padding are zero): a new episode
    clears the rows its slot's previous, longer episode wrote, and leaves its own rows as adapted."""
    config = cpu_config(task="qa2", num_envs=2, train_num_sentences=30, random_transitions=0)
    torch.manual_seed(0)
    embedder = shared_embedder("default")
    learner = Learner(config, make_train_envs(config, str(small_data_dir)), QNetwork(config, embedder),
                      QNetwork(config, embedder))
    size = int(learner.num_chunks[0])
    width = learner.chunks.shape[1]
    assert size < width
    for buffer in (learner.chunks, learner.target_chunks, learner.features):
        buffer[0].fill_(7.0)  # as if the slot's last episode had filled every row
    learner.num_chunks[0] = width
    learner.slots.reset([5, 6])
    learner._start_episodes(np.array([0]))
    new_size = int(learner.num_chunks[0])
    for buffer in (learner.chunks, learner.target_chunks, learner.features):
        assert not buffer[0, new_size:].any()
        assert buffer[0, :new_size].ne(7.0).all()
    episode = learner.slots.episodes[0]
    assert torch.equal(learner.features[0, :new_size], learner.online.episode_features([episode]))
