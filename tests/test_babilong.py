"""BABILong assembly on real files, rewards, lengths and the error paths."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import qrag_gym  # noqa: F401  (registers the ids)
from qrag_gym.data.babi import TASKS, BabiFormatError, parse_babi_lines
from qrag_gym.data.paths import DataNotFoundError
from qrag_gym.envs.retrieval import InvalidActionError


@pytest.mark.parametrize("task", TASKS)
def test_supporting_ids_point_at_the_supporting_facts(task: str, data_dir) -> None:
    env = gym.make("QRAG-Babilong-v0", task=task, num_sentences=160)
    source = env.unwrapped._source
    for seed in range(20):
        _, info = env.reset(seed=seed)
        chunks, meta = env.unwrapped.chunks, env.unwrapped.episode.meta
        story = next(s for s in source.samples if s.story_index == meta["story_index"]
                     and len(s.facts) == meta["num_facts"] and s.question == info["question"])
        assert sorted(chunks[i] for i in info["supporting_ids"]) == sorted(story.facts[j] for j in story.supporting)
        fact_positions = [i for i, c in enumerate(chunks) if c in set(story.facts)]
        assert [chunks[i] for i in fact_positions] == list(story.facts)  # facts keep their order
        assert info["source"] == "babi-real+gutenberg"


def test_episodes_are_corpus_ids_whose_texts_and_tokens_are_the_chunks(make_env) -> None:
    """An episode is an array of ids into the env's corpus (books, story facts, then questions): the ids give
    back its texts and its measured length, facts sit in the second table and the question in the third."""
    base = make_env("qa2").unwrapped
    corpus = base.corpus
    books, facts, questions = corpus.tables
    assert len(books) > 1_000 and len(set(facts.texts)) == len(facts)  # distinct facts, one id each
    assert len(set(questions.texts)) == len(questions)
    for seed in range(5):
        _, info = base.reset(seed=seed)
        ids = base.episode.chunk_ids
        assert corpus.texts(ids) == base.chunks
        assert int(corpus.tokens(ids).sum()) == info["num_tokens"]
        assert (ids[list(info["supporting_ids"])] >= len(books)).all()  # every supporting chunk is a fact
        assert (ids < len(books) + len(facts)).all() and base.episode.question_id >= len(books) + len(facts)
        assert corpus.texts([base.episode.question_id]) == (base.question,)
    with pytest.raises(ValueError, match=f"chunk id {len(corpus)} is outside this corpus"):
        corpus.texts(np.array([0, len(corpus)]))


def test_context_tokens_are_measured(data_dir) -> None:
    env = gym.make("QRAG-Babilong-v0", task="qa1", context_tokens=4_000)
    for seed in range(5):
        _, info = env.reset(seed=seed)
        assert 4_000 <= info["num_tokens"] < 4_000 + 400


def test_shaped_reward_and_termination(data_dir) -> None:
    env = gym.make("QRAG-Babilong-v0", task="qa2", num_sentences=50)
    obs, info = env.reset(seed=3)
    noise = next(i for i in np.flatnonzero(obs["action_mask"]) if i not in info["supporting_ids"])
    rewards = [env.step(int(noise))[1]]
    for index in info["supporting_ids"]:
        _, reward, terminated, truncated, info = env.step(index)
        rewards.append(reward)
    assert rewards[:-1] == [0.0] * (len(rewards) - 1)
    assert rewards[-1] == pytest.approx(0.5 + 0.5 * 2 / 3) and terminated and not truncated


def test_binary_reward_never_terminate_runs_max_steps(data_dir) -> None:
    env = gym.make("QRAG-Babilong-v0", task="qa1", num_sentences=50, reward="binary", never_terminate=True, max_steps=3)
    obs, info = env.reset(seed=0)
    _, reward, terminated, truncated, _ = env.step(info["supporting_ids"][0])
    assert (reward, terminated, truncated) == (1.0, False, False)  # paid once, when the fact is in
    others = [int(i) for i in np.flatnonzero(env.unwrapped.action_masks())[:2]]
    assert env.step(others[0])[1] == 0.0
    _, reward, terminated, truncated, _ = env.step(others[1])
    assert (reward, terminated, truncated) == (0.0, False, True)


@pytest.mark.parametrize("order", ["fact first", "fact last", "fact missed"])
def test_binary_return_is_the_same_under_gymnasiums_time_limit(data_dir, order: str) -> None:
    """``gym.make(max_episode_steps=2)`` truncates outside the env; the return must still be 1 exactly
    when the supporting fact is in the final state, as with the env's own ``max_steps=2``."""
    returns = []
    for limits in ({"max_steps": 2}, {"max_steps": 6, "max_episode_steps": 2}):
        env = gym.make("QRAG-Babilong-v0", task="qa1", num_sentences=50, reward="binary", never_terminate=True,
                       **limits)
        _, info = env.reset(seed=3)
        fact = int(info["supporting_ids"][0])
        noise = [int(i) for i in np.flatnonzero(env.unwrapped.action_masks()) if i != fact][:2]
        actions = {"fact first": [fact, noise[0]], "fact last": [noise[0], fact], "fact missed": noise}[order]
        total, ended = 0.0, []
        for action in actions:
            _, reward, terminated, truncated, _ = env.step(action)
            total += reward
            ended.append(terminated or truncated)
        assert ended == [False, True]
        returns.append(total)
    assert returns[0] == returns[1] == (0.0 if order == "fact missed" else 1.0)


def test_masked_action_is_a_flagged_no_op(data_dir) -> None:
    env = gym.make("QRAG-Babilong-v0", task="qa1", num_sentences=50)
    _, info = env.reset(seed=0)
    env.step(0)
    _, reward, _, _, info = env.step(0)
    assert info["invalid_action"] and reward == pytest.approx(-0.1) and info["selected_order"] == [0]
    padding = env.unwrapped.num_chunks
    if padding < env.unwrapped.max_chunks:
        assert env.step(padding)[4]["invalid_action"]


@pytest.mark.parametrize("action", [-1, 10**9, "three", 1.5])
def test_out_of_space_action_raises(action, data_dir) -> None:
    env = gym.make("QRAG-Babilong-v0", task="qa1", num_sentences=50).unwrapped
    env.reset(seed=0)
    with pytest.raises(InvalidActionError):
        env.step(action)


def test_validation_split_is_disjoint(data_dir) -> None:
    train = gym.make("QRAG-Babilong-v0", task="qa1", num_sentences=50, split="train").unwrapped
    valid = gym.make("QRAG-Babilong-v0", task="qa1", num_sentences=50, split="validation").unwrapped
    assert {s.story_index for s in train._source.samples}.isdisjoint({s.story_index for s in valid._source.samples})
    assert set(train._source.noise.book_names).isdisjoint(valid._source.noise.book_names)
    assert "validation" in valid.reset(seed=0)[1]["split_rule"]


def test_unknown_task_and_bad_lengths() -> None:
    with pytest.raises(ValueError, match="unknown bAbI task 'qa9'"):
        gym.make("QRAG-Babilong-v0", task="qa9")
    with pytest.raises(ValueError, match="not both"):
        gym.make("QRAG-Babilong-v0", context_tokens=1000, num_sentences=50)
    with pytest.raises(ValueError, match="positive"):
        gym.make("QRAG-Babilong-v0", context_tokens=0)
    with pytest.raises(ValueError, match="reward variant"):
        gym.make("QRAG-Babilong-v0", reward="dense")


def test_missing_data_folder_says_where_it_looked(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QRAG_DATA_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="Searched, in order") as error:
        gym.make("QRAG-Babilong-v0", source="real")
    assert str(tmp_path / "babi/en-10k") in str(error.value)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        gym.make("QRAG-Babilong-v0", data_dir=str(tmp_path / "nowhere"))


def test_malformed_babi_lines_name_file_and_line() -> None:
    with pytest.raises(BabiFormatError, match=r"story.txt:2: expected '<id> <text>'"):
        parse_babi_lines(["1 Mary went home.", "oops"], "qa1", origin="story.txt")
    with pytest.raises(BabiFormatError, match=r"story.txt:2: supporting ids"):
        parse_babi_lines(["1 Mary went home.", "2 Where is Mary?\thome\t7"], "qa1", origin="story.txt")
    with pytest.raises(BabiFormatError, match=r":3: line id 5 follows id 2"):
        parse_babi_lines(["1 a b c.", "2 d e f.", "5 g h i."], "qa1")


def test_offline_generated_source_is_labelled(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QRAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    env = gym.make("QRAG-Babilong-v0", task="qa3", num_sentences=80)
    _, info = env.reset(seed=0)
    assert info["source"] == "babi-generated+synthetic-noise"
    assert len(info["supporting_ids"]) == 3


def test_embedder_scores_every_candidate_once(data_dir) -> None:
    env = gym.make("QRAG-Babilong-v0", task="qa1", num_sentences=50, embedder="default").unwrapped
    _, info = env.reset(seed=0)
    vectors = env.chunk_vectors()
    assert env.chunk_vectors() is vectors  # encoded once per episode
    query = env.embedder.encode([info["question"]], persist=False)[0]
    scores = env.score(query)
    assert scores.shape == (env.max_chunks,) and np.isneginf(scores[env.num_chunks:]).all()
    env.step(int(np.argmax(scores)))
    assert np.isneginf(env.score(query)[int(np.argmax(scores))])


def test_per_fact_reward_wrapper_pays_each_supporting_fact_once(data_dir) -> None:
    """The training-only shaping is a wrapper: a bonus on the step that selects a supporting chunk, none for
    a noise chunk or an invalid repeat; the env itself pays only the MDP's reward."""
    from qrag_gym.wrappers import PerFactReward

    env = PerFactReward(gym.make("QRAG-Babilong-v0", task="qa2", num_sentences=50, never_terminate=True), bonus=0.1)
    _, info = env.reset(seed=5)
    first, second = info["supporting_ids"]
    noise = next(i for i in range(info["num_chunks"]) if i not in info["supporting_ids"])
    assert env.step(first)[1] == pytest.approx(0.1)
    assert env.step(noise)[1] == pytest.approx(0.0)
    assert env.step(first)[1] == pytest.approx(-0.1)  # an invalid repeat: the env's penalty, no bonus
    assert env.step(second)[1] == pytest.approx(0.1 + 0.5 + 0.5 * 2 / 3)  # shaped completion, k=2 of 3 selected
    env.reset(seed=6)
    with pytest.raises(ValueError, match="bonus=nan"):
        PerFactReward(env.unwrapped, bonus=float("nan"))


def test_document_length_does_not_depend_on_the_embedder(data_dir, tmp_path) -> None:
    """A "1K" document holds the same sentences whatever model scores them: lengths come from the one
    length tokenizer. The other model here splits on whitespace only, so it counts far fewer tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from qrag_gym.models import count_tokens, load_tokenizer

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "[CLS]": 2, "[SEP]": 3, "the": 4}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    tokenizer.save_pretrained(tmp_path)
    BertModel(BertConfig(vocab_size=5, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=8)).save_pretrained(tmp_path)
    episodes = [gym.make("QRAG-Babilong-v0", task="qa2", context_tokens=1_000, split="validation",
                         embedder=embedder).unwrapped for embedder in (None, str(tmp_path))]
    for env in episodes:
        env.reset(seed=5)
    default_env, other_env = episodes
    assert other_env.chunks == default_env.chunks and other_env.max_chunks == default_env.max_chunks
    chunks = list(default_env.chunks)
    assert count_tokens(load_tokenizer(str(tmp_path)), chunks).sum() < 0.8 * count_tokens(load_tokenizer(None), chunks).sum()


def test_real_plus_generated_adds_generated_training_stories_only(data_dir) -> None:
    """``source="real+generated"``: the real training stories plus generated ones among the same real books;
    validation and test refuse it (they are real stories only)."""
    from qrag_gym.envs.babilong import AUGMENT_STORY_OFFSET, load_source

    real = load_source("qa3", "train", "real", str(data_dir))
    mixed = load_source("qa3", "train", "real+generated", str(data_dir))
    assert mixed.samples[: len(real.samples)] == real.samples
    added = mixed.samples[len(real.samples):]
    assert len(added) > len(real.samples) and all(s.story_index >= AUGMENT_STORY_OFFSET for s in added)
    assert mixed.noise is real.noise and mixed.label == "babi-real+generated+gutenberg"
    for split in ("validation", "test"):
        with pytest.raises(ValueError, match="adds generated stories to training only"):
            load_source("qa3", split, "real+generated", str(data_dir))
