"""QRAG-HotpotQA-v0: compliance, the split, supporting paragraphs as marked in the file, errors, answer metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import qrag_gym
from qrag_gym.data.hotpotqa import HotpotQAFormatError, load_hotpotqa, split_questions
from qrag_gym.data.paths import DataNotFoundError
from qrag_gym.metrics import answer_exact_match, answer_f1, normalize_answer, retrieval_metrics
from qrag_gym.models import count_tokens, length_tokenizer

torch.set_num_threads(1)

DATA = Path(os.environ.get("QRAG_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
FILE = DATA / "hotpotqa" / "dev_subsampled_400.jsonl"
needs_file = pytest.mark.skipif(not FILE.is_file(), reason="no hotpotqa data file")

PROCESSED = {
    "question_id": "q1", "question_text": "Which river flows through the capital?",
    "answers_objects": [{"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": ["The Thames"]}],
    "contexts": [
        {"id": "0", "title": "London", "paragraph_text": "London is the capital.  It lies on the Thames.", "is_supporting": True},
        {"id": "1", "title": "Paris", "paragraph_text": "Paris lies on the Seine.", "is_supporting": False},
        {"id": "2", "title": "Thames", "paragraph_text": "The Thames is a river.", "is_supporting": True},
    ],
}
OFFICIAL = {
    "_id": "q2", "question": "Is Paris in France?", "answer": "yes",
    "context": [["Seine", ["The Seine is a river."]], ["Paris", ["Paris is the capital", " of France."]]],
    "supporting_facts": [["Paris", 0], ["Paris", 1]],
}


def write_jsonl(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_registered():
    assert "QRAG-HotpotQA-v0" in qrag_gym.ENV_IDS


@needs_file
@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
def test_check_env():
    env = gym.make("QRAG-HotpotQA-v0", data_dir=str(DATA))
    check_env(env.unwrapped, skip_render_check=True)
    check_env(env, skip_render_check=True)


@needs_file
def test_supporting_ids_are_the_marked_paragraphs():
    raw = {r["question_id"]: r for r in map(json.loads, FILE.read_text(encoding="utf-8").splitlines())}
    env = gym.make("QRAG-HotpotQA-v0", split="all", path=str(FILE)).unwrapped
    assert len(env.questions) == len(raw) == 400
    assert env.max_chunks == 10 and env.max_steps == 2
    for index in range(len(env.questions)):
        episode = env.episode_at(index)
        record = raw[episode.meta["qid"]]
        marked = [i for i, c in enumerate(record["contexts"]) if c["is_supporting"]]
        assert list(episode.supporting_ids) == marked and len(marked) == 2
        for i in marked:
            title = record["contexts"][i]["title"]
            assert episode.chunks[i].startswith(title + " ")
        assert episode.answer == record["answers_objects"][0]["spans"][0]


@needs_file
def test_same_seed_same_episode_and_split_is_a_partition():
    first = gym.make("QRAG-HotpotQA-v0", data_dir=str(DATA)).unwrapped
    second = gym.make("QRAG-HotpotQA-v0", data_dir=str(DATA)).unwrapped
    _, info = first.reset(seed=3)
    second.reset(seed=3)
    assert first.episode == second.episode
    _, reward, terminated, _, info = first.step(info["supporting_ids"][0])
    assert not terminated and reward == 0.0
    _, reward, terminated, _, info = first.step(info["supporting_ids"][1])
    assert terminated and reward == 1.0
    questions = load_hotpotqa(FILE)
    train = {q.qid for q in split_questions(questions, "train")}
    validation = {q.qid for q in split_questions(questions, "validation")}
    assert not train & validation and len(train | validation) == 400
    assert 40 <= len(validation) <= 120
    assert {q.qid for q in gym.make("QRAG-HotpotQA-v0", split="validation", path=str(FILE)).unwrapped.questions} == validation


def test_both_schemas(tmp_path):
    path = write_jsonl(tmp_path / "mini.jsonl", json.dumps(PROCESSED), "", json.dumps(OFFICIAL))
    processed, official = load_hotpotqa(path)
    assert processed.chunks[0] == "London London is the capital. It lies on the Thames."
    assert processed.supporting == (0, 2) and processed.answers == ("The Thames",)
    assert official.supporting == (1,) and official.chunks[1] == "Paris Paris is the capital of France."
    env = gym.make("QRAG-HotpotQA-v0", split="all", path=str(path)).unwrapped
    assert env.max_chunks == 3
    _, info = env.reset(options={"episode": env.episode_at(1)})
    assert info["answers"] == ["yes"] and info["num_chunks"] == 2
    assert not info["action_mask"][2]


@pytest.mark.parametrize(
    "bad, expected",
    [
        ("{not json", r"mini\.jsonl:2: not a HotpotQA record"),
        (json.dumps({"question_id": "x"}), r"mini\.jsonl:2: .*neither 'contexts'"),
        (json.dumps({**PROCESSED, "question_text": None} | {"answers_objects": "oops"}), r"mini\.jsonl:2: "),
        (json.dumps({k: v for k, v in PROCESSED.items() if k != "question_id"}), r"mini\.jsonl:2: .*missing field 'question_id'"),
        (json.dumps({**PROCESSED, "contexts": [{**c, "is_supporting": False} for c in PROCESSED["contexts"]]}),
         r"mini\.jsonl:2: .*no paragraph is marked as supporting"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, expected):
    path = write_jsonl(tmp_path / "mini.jsonl", json.dumps(PROCESSED), bad)
    with pytest.raises(HotpotQAFormatError, match=expected):
        load_hotpotqa(path)


def test_missing_data(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        gym.make("QRAG-HotpotQA-v0", path=str(tmp_path / "nope.jsonl"))
    monkeypatch.setenv("QRAG_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with pytest.raises(DataNotFoundError) as err:
        gym.make("QRAG-HotpotQA-v0")
    assert str(tmp_path / "env" / "hotpotqa") in str(err.value)
    assert str(tmp_path / "xdg" / "qrag-gym" / "hotpotqa") in str(err.value)
    (tmp_path / "env" / "hotpotqa").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="not dev_subsampled_400.jsonl"):
        gym.make("QRAG-HotpotQA-v0")
    with pytest.raises(ValueError, match="unknown split"):
        split_questions([], "test")


def test_answer_metrics():
    assert normalize_answer("The  Queen-City!") == "queencity"
    assert normalize_answer('"Queen City"') == "queen city"
    assert answer_exact_match("queen city", '"Queen City"') == 1.0
    assert answer_exact_match("Queen City of Maine", "Queen City") == 0.0
    assert answer_f1("Queen City of Maine", "Queen City") == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))
    assert answer_f1("the Chief of Protocol", ["ambassador", "Chief of Protocol"]) == 1.0
    assert answer_f1("no", "yes") == 0.0 and answer_f1("yes it is", "yes") == 0.0
    assert answer_exact_match("Yes.", "yes") == 1.0
    with pytest.raises(ValueError):
        answer_f1("x", [])


def test_fact_metrics_reuse_retrieval_metrics():
    scores = retrieval_metrics([2, 5], [2, 6])
    assert scores["f1"] == 0.5 and scores["success_at_t"] == 0.0
    assert retrieval_metrics([6, 2], [2, 6])["success_at_t"] == 1.0


def test_paragraphs_are_ids_into_one_table_per_file(tmp_path):
    """BEIR's shape: a paragraph shown with several questions has one id in the file's table, a question asked
    twice has one id in its questions table, and an episode is the ids of its paragraphs and of its question
    (features and token counts gathered by id)."""
    again = {**PROCESSED, "question_id": "again"}
    path = write_jsonl(tmp_path / "mini.jsonl", json.dumps(PROCESSED), json.dumps(again), json.dumps(OFFICIAL))
    env = gym.make("QRAG-HotpotQA-v0", split="all", path=str(path)).unwrapped
    episodes = [env.episode_at(index) for index in range(3)]
    assert episodes[0].corpus is episodes[2].corpus
    np.testing.assert_array_equal(episodes[0].chunk_ids, episodes[1].chunk_ids)
    paragraphs, questions = episodes[0].corpus.tables
    assert len(paragraphs) == len({chunk for episode in episodes for chunk in episode.chunks})
    assert len(questions) == len({episode.question for episode in episodes}) == 2
    assert episodes[0].question_id == episodes[1].question_id != episodes[2].question_id
    for episode in episodes:
        assert episode.corpus.texts(episode.chunk_ids) == episode.chunks
        assert episode.corpus.texts([episode.question_id]) == (episode.question,)
        assert episode.num_tokens == int(count_tokens(length_tokenizer(), list(episode.chunks)).sum())
