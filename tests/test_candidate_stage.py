"""Q-RAG's candidate stage (``candidate_stage=true``, issue 16): off it changes nothing, on it can learn
"the later of two identical facts", acting and the update read the same Q, and it saves and loads."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from qrag_agents.qrag.agent import QRAGAgent
from qrag_agents.qrag.candidates import FLOOR_MARGIN, SelectedContext, candidate_delta, refine
from qrag_agents.qrag.checkpoint import CheckpointError, load_model, save_model
from qrag_agents.qrag.config import ConfigError, cpu_config
from qrag_agents.qrag.inference import embed_document, encode_document, step_q_values
from qrag_agents.qrag.learner import Learner, ScoreTiers, summed_selected
from qrag_agents.qrag.networks import QNetwork
from qrag_agents.qrag.pretrained import pretrained_folder
from qrag_agents.qrag.rotary import relative_positions, relative_positions_batch
from qrag_agents.qrag.train import make_train_envs, train
from qrag_gym.document import Document
from qrag_gym.embedding import shared_embedder
from qrag_gym.envs.babilong import BabilongEnv
from qrag_gym.evaluation import Cell, make_eval_env, run_cell, summarize

FACTS = ["Mary moved to the bathroom.", "John went to the hallway.", "Daniel travelled to the office.",
         "Sandra journeyed to the garden.", "John picked up the football.", "Mary got the milk there.",
         "Daniel dropped the apple.", "Sandra went back to the kitchen.", "John put down the football.",
         "Mary travelled to the bedroom.", "Daniel grabbed the apple there.", "Sandra moved to the office."]


def stage_network(seed: int = 0, **overrides) -> QNetwork:
    torch.manual_seed(seed)
    return QNetwork(cpu_config(candidate_stage=True, **overrides), shared_embedder("default"))


def test_config_rejects_a_stage_that_cannot_compare() -> None:
    with pytest.raises(ConfigError, match="candidate_count=1"):
        cpu_config(candidate_count=1)
    with pytest.raises(ConfigError, match="candidate_hidden=30"):
        cpu_config(candidate_hidden=30, candidate_heads=4)


def test_stage_off_scores_exactly_as_faithful_q_rag(data_dir) -> None:
    """A faithful shipped model (qa3: its config.json predates the stage) and a fresh stage-off network both
    score every chunk with the faithful formula, bit for bit; a new stage starts at the faithful model too."""
    shipped = load_model(pretrained_folder("qa3"))
    assert shipped.candidate_stage is None
    env = make_eval_env("qa3", 1_000, "validation")
    _, info = env.reset(seed=3)
    base = env.unwrapped
    chunks = embed_document(shipped, base.chunks)
    selected = [int(info["supporting_ids"][0])]
    mask = np.ones(len(base.chunks), dtype=bool)
    mask[selected] = False
    q = step_q_values(shipped, chunks, base.question, base.chunks, selected, mask)
    with torch.no_grad():
        state = shipped.embed_states([base.question], [[base.chunks[i] for i in selected]])
        config = shipped.config
        rho = torch.from_numpy(relative_positions(len(base.chunks), selected, config.position_step, config.position_span,
                                                  config.integer_positions)).float()
        faithful = shipped.q_halves(state, chunks, rho).sum(-1).masked_fill(~torch.from_numpy(mask), -torch.inf)
    assert torch.equal(q, faithful)

    torch.manual_seed(0)
    off = QNetwork(cpu_config(), shared_embedder("default"))
    on = stage_network(0)
    assert all(torch.equal(value, on.state_dict()[name]) for name, value in off.state_dict().items())
    assert any(name.startswith("candidate_stage.") for name in on.state_dict())
    assert torch.equal(step_q_values(on, chunks, base.question, base.chunks, selected, mask),
                       step_q_values(off, chunks, base.question, base.chunks, selected, mask))


def later_of_two_batch(network: QNetwork, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, ...]:
    """``size`` candidate sets of real bAbI sentences in which one sentence appears twice (at two chunk ids):
    the target corrects the later copy up by 0.1 and the earlier one down by 0.1, the others by 0."""
    count = network.config.candidate_count
    with torch.no_grad():
        vectors = network.embed_chunks(FACTS)
        states = network.embed_states(["Where is the football?"] * size, [[]] * size)
    picks = np.stack([rng.choice(len(FACTS), count - 1, replace=False) for _ in range(size)])
    picks = np.concatenate([picks, picks[:, :1]], axis=1)  # the last slot repeats the first sentence
    index = torch.from_numpy(np.stack([rng.choice(60, count, replace=False) for _ in range(size)]))
    chunks = vectors[torch.from_numpy(picks)]
    positions = index.float() * 0.9
    with torch.no_grad():
        base = network.q_halves(states.unsqueeze(1), chunks, positions)
    later_is_last = index[:, -1] > index[:, 0]
    target = torch.zeros(size, count)
    target[:, -1] = torch.where(later_is_last, 0.1, -0.1)
    target[:, 0] = -target[:, -1]
    return states, chunks, base, positions, index, target


def test_stage_learns_to_prefer_the_later_of_two_identical_candidates(data_dir) -> None:
    """Without positions the two copies get the same base Q; only the stage (document-order rank) can tell them apart."""
    network = stage_network(1, positions="none")
    stage = network.candidate_stage
    optimizer = torch.optim.Adam(stage.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    valid = torch.ones(64, network.config.candidate_count, dtype=torch.bool)
    for _ in range(150):
        states, chunks, base, positions, index, target = later_of_two_batch(network, rng, 64)
        delta = candidate_delta(network, states, chunks, base, positions, index, valid).sum(-1)
        loss = torch.nn.functional.mse_loss(delta, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    states, chunks, base, positions, index, _ = later_of_two_batch(network, np.random.default_rng(1), 64)
    with torch.no_grad():
        final = (base + candidate_delta(network, states, chunks, base, positions, index, valid)).sum(-1)
    later_wins = torch.where(index[:, -1] > index[:, 0], final[:, -1] > final[:, 0], final[:, 0] > final[:, -1])
    assert torch.equal(base[:, 0], base[:, -1])  # the two copies are indistinguishable to faithful Q-RAG
    assert later_wins.float().mean() >= 0.95


@pytest.mark.parametrize("context, question", [(False, False), (True, False), (True, True)])
def test_update_scores_the_action_with_the_q_the_policy_acted_on(small_data_dir, context: bool, question: bool) -> None:
    """The learner's update re-scores an action inside the candidate set it was taken from and gets the
    final Q :func:`refine` gave it while acting; an action outside the set keeps its base Q. Checked in a
    state with two chunks selected, with ``candidate_context`` (the stage reads them too) and with
    ``candidate_question`` (and the question), where the rollout's Q must also be the Q that acting
    (:func:`step_q_values`, the question embedded from its text there) gives the same state."""
    config = cpu_config(task="qa2", candidate_stage=True, candidate_context=context, candidate_question=question,
                        num_envs=1, train_num_sentences=30)
    embedder = shared_embedder("default")
    torch.manual_seed(0)
    online, target = QNetwork(config, embedder), QNetwork(config, embedder)
    with torch.no_grad():  # a stage that already corrects, so agreement is not 0 == 0
        for parameter in online.candidate_stage.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    learner = Learner(config, make_train_envs(config, str(small_data_dir)), online, target)
    width = int(learner.num_chunks[0])
    picked = [3, 7]
    ordered = np.full((1, config.max_steps), -1)
    ordered[0, : len(picked)] = picked
    rho = torch.from_numpy(relative_positions_batch(learner.num_chunks, ordered, width, config.position_step,
                                                    config.position_span, config.integer_positions)).float()
    valid = torch.from_numpy(learner.slots.action_masks()[:, :width])
    valid[0, picked] = False
    count = torch.full((1, 1), len(picked) / config.max_steps)
    ordered_t = torch.from_numpy(ordered)
    with torch.no_grad():
        states, base = learner._base_q(online, (learner.question, summed_selected(learner.features, ordered_t), count),
                                       learner.chunks, ScoreTiers(online, learner.num_chunks, rho))
        final, ids = learner._q_halves(online, states, base, learner.chunks[:, :width], rho, valid, ordered_t)
    assert not torch.allclose(final, base)
    episode = learner.slots.episodes[0]
    acting = step_q_values(online, learner.chunks[0, :width], episode.question, episode.chunks, picked, valid[0].numpy())
    assert torch.allclose(acting[valid[0]], final[0].sum(-1)[valid[0]], atol=1e-5)
    inside, outside = int(ids[0, 2]), int(next(i for i in range(width) if i not in ids[0].tolist() + picked))
    sets = learner._candidate_sets([learner._candidate_set(ids, rho, torch.tensor([action]), ordered_t)
                                    for action in (inside, outside)])
    assert (sets.context_index is not None) == context
    with torch.no_grad():
        action_q = online.q_halves(states.expand(2, -1), learner.chunks[0, [inside, outside]], rho[0, [inside, outside]])
        scored = learner._candidate_q(states.expand(2, -1), action_q, sets, learner.question.expand(2, -1))
    assert torch.allclose(scored[0], final[0, inside], atol=1e-5)
    assert torch.equal(scored[1], action_q[1]) and torch.allclose(scored[1], final[0, outside], atol=1e-5)


def test_context_stage_depends_on_which_chunks_are_selected() -> None:
    """With ``candidate_context`` the same candidates and state get another correction when the selected
    chunks differ; without it the selected chunks are not read at all. A context-stage needs the context, and a
    ``candidate_question`` stage the question, whose correction then changes with the question."""
    network = stage_network(8, candidate_context=True)
    with torch.no_grad():
        for parameter in network.candidate_stage.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    count = network.config.candidate_count
    chunks = torch.nn.functional.normalize(torch.randn(1, count, network.dim), dim=-1)
    states = torch.nn.functional.normalize(torch.randn(1, network.dim), dim=-1)
    base, valid = torch.rand(1, count, 2), torch.ones(1, count, dtype=torch.bool)
    index, positions = torch.arange(10, 10 + count).unsqueeze(0), torch.full((1, count), 25.0)
    others = torch.nn.functional.normalize(torch.randn(1, 12, network.dim), dim=-1)
    one = SelectedContext.gather(others, torch.tensor([[2, -1]]))
    two = SelectedContext.gather(others, torch.tensor([[5, -1]]))
    with torch.no_grad():
        first = candidate_delta(network, states, chunks, base, positions, index, valid, one)
        second = candidate_delta(network, states, chunks, base, positions, index, valid, two)
    assert not torch.allclose(first, second)
    with pytest.raises(ValueError, match="candidate_context"):
        candidate_delta(network, states, chunks, base, positions, index, valid)
    asking = stage_network(8, candidate_context=True, candidate_question=True)
    with torch.no_grad():
        for parameter in asking.candidate_stage.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
        by_question = [candidate_delta(asking, states, chunks, base, positions, index, valid,
                                       SelectedContext.gather(others, torch.tensor([[2, -1]]), others[:, row]))
                       for row in (0, 1)]
    assert not torch.allclose(*by_question)  # the question is read: another question, another correction
    with pytest.raises(ValueError, match="candidate_question"):
        candidate_delta(asking, states, chunks, base, positions, index, valid, one)
    with pytest.raises(ConfigError, match="candidate_question=true adds the question"):
        cpu_config(candidate_stage=True, candidate_question=True)
    with pytest.raises(ConfigError, match="candidate_context=true is built for the adapter build"):
        cpu_config(candidate_stage=True, candidate_context=True, finetune_encoder=True)


@pytest.mark.parametrize("floor", [False, True])
def test_floor_keeps_acting_inside_the_candidates(floor: bool) -> None:
    """A stage that pushes every candidate far down (how a qa3 stage collapsed) sends the argmax outside its
    candidates; with ``candidate_floor`` each candidate ends just above the best other chunk's base Q, and a
    candidate already above it keeps its Q."""
    network = stage_network(3, candidate_floor=floor)
    with torch.no_grad():
        network.candidate_stage.out.bias.fill_(-1.0)
    count, chunks_n = network.config.candidate_count, 20
    states = torch.nn.functional.normalize(torch.randn(1, network.dim), dim=-1)
    chunks = torch.nn.functional.normalize(torch.randn(1, chunks_n, network.dim), dim=-1)
    base = torch.linspace(1.0, 0.0, chunks_n).view(1, -1, 1).expand(-1, -1, 2) / 2  # chunk i: Q 1 - i/19
    valid = torch.ones(1, chunks_n, dtype=torch.bool)
    with torch.no_grad():
        final, ids = refine(network, states, chunks, base.clone(), torch.zeros(1, chunks_n), valid)
    total, ninth = final[0].sum(-1), float(base[0, count].sum())
    assert sorted(ids[0].tolist()) == list(range(count))
    if floor:
        assert int(total.argmax()) < count and torch.allclose(total[:count], torch.full((count,), ninth + FLOOR_MARGIN))
        assert torch.equal(total[count:], base[0, count:].sum(-1))  # the others keep their base Q
        with torch.no_grad():
            network.candidate_stage.out.bias.fill_(0.0)
            kept, _ = refine(network, states, chunks, base.clone(), torch.zeros(1, chunks_n), valid)
        assert torch.equal(kept, base)  # nothing below the floor: nothing lifted
    else:
        assert int(total.argmax()) == count  # the best non-candidate wins: the collapse
    with pytest.raises(ConfigError, match="candidate_floor=true holds"):
        cpu_config(candidate_floor=True)


def test_stage_checkpoint_round_trip(tmp_path, data_dir) -> None:
    network = stage_network(2)
    with torch.no_grad():
        for parameter in network.candidate_stage.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    save_model(network, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.config.candidate_stage and loaded.candidate_stage is not None
    chunks = embed_document(network, tuple(FACTS))
    mask = np.ones(len(FACTS), dtype=bool)
    args = ("Where is the football?", tuple(FACTS), [4], mask)
    assert torch.equal(step_q_values(network, chunks, *args), step_q_values(loaded, embed_document(loaded, tuple(FACTS)), *args))
    faithful = (tmp_path / "model" / "config.json").read_text().replace('"candidate_stage": true', '"candidate_stage": false')
    (tmp_path / "model" / "config.json").write_text(faithful)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(tmp_path / "model")


@pytest.mark.slow
def test_short_training_with_the_stage_on_qa1_beats_random(small_data_dir, tmp_path) -> None:
    """The same short real run as faithful Q-RAG's test (tests/test_qrag.py), with the stage on."""
    config = cpu_config(task="qa1", candidate_stage=True, train_num_sentences=50, eval_num_sentences=50, num_envs=32,
                        total_updates=120, warmup_updates=10, eval_every=1000, eval_episodes=100, random_transitions=128)
    metrics = train(config, tmp_path / "run", data_dir=str(small_data_dir), show_progress=False)
    env = BabilongEnv(task="qa1", num_sentences=50, split="validation", never_terminate=True, data_dir=str(small_data_dir))
    rng = np.random.default_rng(0)
    random_success = []
    for seed in range(100):
        _, info = env.reset(seed=10_000 + seed)
        random_success.append(float(rng.choice(env.num_chunks) in info["supporting_ids"]))
    assert metrics["success_at_k"] >= 0.6 > np.mean(random_success) + 0.4
    loaded = load_model(tmp_path / "run" / "model")
    assert any(float(p.abs().max()) > 0 for p in loaded.candidate_stage.out.parameters())  # the stage trained
    agent = QRAGAgent(model=str(tmp_path / "run" / "model"))
    assert summarize(run_cell(Cell("qrag", "qa1", "50s", None, 0, 20), agent, env))["success_at_k"] >= 0.5


def test_bounded_stage_never_moves_a_q_half_further_than_its_bound() -> None:
    """``candidate_bound``: however large the stage's raw output, each half moves by less than the bound, so a
    chunk the base Q ranks far below the best can never be lifted over it."""
    network = stage_network(4, candidate_bound=0.01)
    with torch.no_grad():
        network.candidate_stage.out.weight.normal_(0, 5.0)
        network.candidate_stage.out.bias.fill_(3.0)
    count = network.config.candidate_count
    chunks = torch.nn.functional.normalize(torch.randn(16, count, network.dim), dim=-1)
    states = torch.nn.functional.normalize(torch.randn(16, network.dim), dim=-1)
    base = torch.rand(16, count, 2)
    index = torch.arange(count).repeat(16, 1)
    valid = torch.ones(16, count, dtype=torch.bool)
    positions = torch.rand(16, count) * 40
    with torch.no_grad():
        delta = candidate_delta(network, states, chunks, base, positions, index, valid)
    assert float(delta.abs().max()) > 0.009  # the raw output is large: the bound is what holds it
    assert float(delta.abs().max()) < 0.01
    network.config.candidate_bound = 0.0
    with torch.no_grad():
        assert float(candidate_delta(network, states, chunks, base, positions, index, valid).abs().max()) > 1.0
    with pytest.raises(ConfigError, match="candidate_bound=-0.1"):
        cpu_config(candidate_stage=True, candidate_bound=-0.1)


def test_stage_base_loads_a_faithful_model_and_freezes_all_but_the_stage(tmp_path, data_dir) -> None:
    from qrag_agents.qrag.checkpoint import load_stage_base

    torch.manual_seed(5)
    faithful = QNetwork(cpu_config(), shared_embedder("default"))
    with torch.no_grad():
        for parameter in faithful.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    save_model(faithful, tmp_path / "base")
    network = stage_network(6, stage_base=str(tmp_path / "base"))
    load_stage_base(network, tmp_path / "base")
    for name, value in faithful.state_dict().items():
        assert torch.equal(network.state_dict()[name], value), name
    trainable = {name for name, p in network.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("candidate_stage.") for name in trainable)
    # A fresh stage on the loaded base scores exactly as the base (its output layer starts at zero).
    chunks = embed_document(network, tuple(FACTS))
    args = ("Where is the football?", tuple(FACTS), [4], np.ones(len(FACTS), dtype=bool))
    assert torch.equal(step_q_values(network, chunks, *args), step_q_values(faithful, chunks, *args))

    with pytest.raises(ConfigError, match="needs candidate_stage=true"):
        cpu_config(stage_base=str(tmp_path / "base"))
    with pytest.raises(FileNotFoundError, match="stage_base=.*is not a Q-RAG model folder"):
        load_stage_base(stage_network(6), tmp_path)
    with pytest.raises(ConfigError, match="other settings.*adapter_hidden"):
        load_stage_base(stage_network(6, adapter_hidden=64), tmp_path / "base")
    save_model(network, tmp_path / "staged")
    with pytest.raises(ConfigError, match="expected a faithful adapter-build model"):
        load_stage_base(stage_network(6), tmp_path / "staged")


def test_training_on_a_stage_base_changes_only_the_stage(small_data_dir, tmp_path) -> None:
    """A few real updates on qa1: the saved model holds the base's weights bit for bit and a trained stage."""
    torch.manual_seed(7)
    save_model(QNetwork(cpu_config(task="qa1"), shared_embedder("default")), tmp_path / "base")
    config = cpu_config(task="qa1", candidate_stage=True, stage_base=str(tmp_path / "base"), train_num_sentences=30,
                        eval_num_sentences=30, num_envs=8, total_updates=6, warmup_updates=1, eval_every=1000,
                        eval_episodes=5, random_transitions=0)
    train(config, tmp_path / "run", data_dir=str(small_data_dir), show_progress=False)
    base, trained = load_model(tmp_path / "base"), load_model(tmp_path / "run" / "model")
    for name, value in base.state_dict().items():
        assert torch.equal(trained.state_dict()[name], value), name
    assert any(float(p.detach().abs().max()) > 0 for p in trained.candidate_stage.out.parameters())
    # The learner adapts each chunk once from the base it loads: resuming on a base replaced since is refused.
    torch.manual_seed(8)
    save_model(QNetwork(cpu_config(task="qa1"), shared_embedder("default")), tmp_path / "base")
    more = dataclasses.replace(config, total_updates=8)
    with pytest.raises(ConfigError, match="not the base this run was trained on"):
        train(more, tmp_path / "run", resume=True, data_dir=str(small_data_dir), show_progress=False)


def test_frozen_base_learner_shares_the_base_and_plays_as_the_general_path(small_data_dir, single_thread) -> None:
    """On a frozen base (``stage_base``) the learner adapts each chunk id once and computes E_s and the base Q once
    for online and target (:class:`ChunkVectors`, kept for the run); it must play and learn what the general path (every
    episode's chunks adapted by both networks, the base scored twice) plays: the same episodes and draws, the
    same targets and losses up to float rounding, over the random warm-up and the Boltzmann phase."""
    config = cpu_config(task="qa3", candidate_stage=True, candidate_context=True, candidate_question=True,
                        candidate_floor=True, num_envs=8, train_num_sentences=50, random_transitions=32,
                        warmup_updates=2, full_episode_share=0.25)
    embedder = shared_embedder("default")
    learners = []
    for share in (True, False):
        torch.manual_seed(3)
        online, target = QNetwork(config, embedder), QNetwork(config, embedder)
        with torch.no_grad():  # a trained-looking base and a stage that already corrects
            for name, parameter in online.named_parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
                parameter.requires_grad_(name.startswith("candidate_stage."))
        learners.append(Learner(config, make_train_envs(config, str(small_data_dir)), online, target,
                                share_frozen_base=share))
    fast, general = learners
    assert fast.frozen_base and not general.frozen_base and fast.target_chunks is fast.chunks
    for _ in range(4):
        fast_batch, general_batch = fast.rollout(), general.rollout()
        assert fast_batch.episode_success == general_batch.episode_success
        assert torch.equal(fast_batch.candidates.index, general_batch.candidates.index)
        assert torch.allclose(fast_batch.targets, general_batch.targets, atol=1e-5)
        fast_logs, general_logs = fast.update(fast_batch), general.update(general_batch)
        assert fast_logs["losses/td_loss"] == pytest.approx(general_logs["losses/td_loss"], rel=1e-4, abs=1e-7)
    assert fast_batch.candidates.adapted and not general_batch.candidates.adapted
    assert len(fast.chunk_vectors) == 1 and len(general.chunk_vectors) == 2
    table = next(iter(fast.chunk_vectors[0].tables.values()))
    assert 0 < table[2].sum() < len(table[2])  # ids adapted on first use only
    for name, value in fast.online.state_dict().items():
        assert torch.allclose(value, general.online.state_dict()[name], atol=1e-5), name


@pytest.mark.parametrize("name", ["qa2", "qa3-stage"])
def test_acting_by_chunk_id_scores_as_acting_from_the_texts(data_dir, name: str) -> None:
    """The agent encodes a document by chunk id (features from the encoder's corpus tables, states summed from
    rows by id: :func:`encode_document`); Q at every step is bit for bit the Q of the text path."""
    network = load_model(pretrained_folder(name))
    env = make_eval_env(name.split("-")[0], 1_000, "validation")
    for seed in range(3):
        _, info = env.reset(seed=seed)
        document = Document(env.unwrapped)
        encoded = encode_document(network, document)
        assert torch.equal(encoded.chunks, embed_document(network, document.texts))
        selected: list[int] = []
        for _ in range(3):
            state = encoded.state(network, selected)
            with torch.no_grad():
                from_texts = network.embed_states([document.question], [[document.text(i) for i in sorted(selected)]])
            assert torch.equal(state, from_texts)
            q = step_q_values(network, encoded.chunks, document.question, document.texts, selected, info["action_mask"],
                              state=state)
            assert torch.equal(q, step_q_values(network, encoded.chunks, document.question, document.texts, selected,
                                                info["action_mask"]))
            selected.append(int(q.argmax()))
            _, _, terminated, truncated, info = env.step(selected[-1])
            if terminated or truncated:
                break
