"""The one evaluation runner: episodes run to T, agents keep what they say they keep, cells are pure
functions of their settings, and BABILong reports on the official bAbI test stories."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from qrag_agents import make_agent
from qrag_gym.data.babi import load_babi_task, load_split, task_path
from qrag_gym.evaluation import (LABEL_INFO_KEYS, Cell, EvaluationError, is_privileged, make_eval_env, question_order,
                                  run_cell, run_episode, summarize)
from qrag_gym.metrics import wilson_interval
from qrag_gym.tasks import default_eval_split, parse_length

pytestmark = pytest.mark.usefixtures("single_thread")

KEEPS_EVERY_PICK = ("random", "bm25", "bm25-multistep", "dense", "dense-multistep")


@pytest.fixture(scope="module")
def qa2_test_env(data_dir: Path) -> gym.Env:
    return make_eval_env("qa2", 1_000, "test", data_dir=str(data_dir))


@pytest.mark.parametrize("name", [*KEEPS_EVERY_PICK, "oracle"])
def test_episodes_run_to_T_and_each_agent_keeps_what_it_documents(qa2_test_env: gym.Env, name: str) -> None:
    records = run_cell(Cell(name, "qa2", "1K", 1_000, 0, 3), make_agent(name, seed=0), qa2_test_env)
    for record in records:
        assert record["steps"] == 6 and len(record["selected"]) == 6  # never stopped by the gold facts
        if name == "oracle":  # privileged: keeps exactly the supporting facts, the rest fills T
            assert record["kept"] == record["supporting"] and record["f1"] == 1.0
        else:  # no stop signal of their own: all T picks go to the reader
            assert record["kept"] == sorted(record["selected"]) and record["num_kept"] == 6
            assert record["precision"] == pytest.approx(len(set(record["supporting"]) & set(record["kept"])) / 6)


def test_runner_refuses_an_env_that_ends_episodes_on_the_gold_facts(data_dir: Path) -> None:
    env = gym.make("QRAG-Babilong-v0", task="qa1", context_tokens=1_000, split="validation", data_dir=str(data_dir))
    with pytest.raises(EvaluationError, match="oracle stop"):
        run_episode(make_agent("oracle"), env, 0)


def test_kept_chunks_must_be_selected(qa2_test_env: gym.Env) -> None:
    class Cheater:
        privileged = True  # declared, so it is given the labels it then tries to keep unseen

        def reset(self, obs, info, document) -> None:
            self.supporting = info["supporting_ids"]

        def act(self, obs, info, document) -> int:
            return int(np.flatnonzero(info["action_mask"])[0])

        def kept(self, info) -> list[int]:
            return list(self.supporting)

    with pytest.raises(EvaluationError, match="never selected"):
        for seed in range(5):  # some episode has a supporting fact outside the first six chunks
            run_episode(Cheater(), qa2_test_env, seed)


class Snoop:
    """A user's agent that looks for the gold labels everywhere it is handed something."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.reached_env = False

    def reset(self, obs, info, document) -> None:
        self.seen |= set(info) | set(obs)
        try:
            document.unwrapped
            self.reached_env = True
        except AttributeError:
            pass

    def act(self, obs, info, document) -> int:
        self.seen |= set(info) | set(obs)
        return int(np.flatnonzero(obs["action_mask"])[0])

    def kept(self, info) -> list[int]:
        self.seen |= set(info)
        return list(info["selected_order"])


class PrivilegedSnoop(Snoop):
    privileged = True


@pytest.mark.parametrize("task, tokens", [("qa2", 1_000), ("niah:multivalue", 1_000), ("hotpotqa", None)])
def test_agents_never_see_the_gold_labels(data_dir: Path, task: str, tokens: int | None) -> None:
    """The runner strips the labels from what an agent gets and still measures with them; the env is never
    reachable from the document. Only a class that declares ``privileged = True`` gets the labels."""
    env = make_eval_env(task, tokens, "validation", data_dir=str(data_dir))
    snoop, privileged = Snoop(), PrivilegedSnoop()
    record = run_episode(snoop, env, 0, task)
    assert "selected_order" in snoop.seen and "action_mask" in snoop.seen and "task" in snoop.seen
    assert not snoop.seen & LABEL_INFO_KEYS and not snoop.reached_env
    assert record["supporting"] and record["recall"] == pytest.approx(
        len(set(record["supporting"]) & set(record["kept"])) / len(record["supporting"]))
    run_episode(privileged, env, 0, task)
    assert {"supporting_ids", "hits", "completed"} <= privileged.seen and not privileged.reached_env
    assert is_privileged(make_agent("oracle")) and not is_privileged(make_agent("dense")) and not is_privileged(snoop)


def test_every_info_key_is_sorted_into_labels_or_not(data_dir: Path) -> None:
    """A new info key has to be classified here: left unlisted, a label would reach every agent."""
    shown = {"question", "selected_order", "num_chunks", "num_tokens", "source", "task", "split", "split_rule",
             "steps", "invalid_action", "action_mask", "variant", "qid"}
    for task, tokens in [("qa2", 1_000), ("niah:multivalue", 1_000), ("hotpotqa", None)]:
        env = make_eval_env(task, tokens, "validation", data_dir=str(data_dir))
        _, info = env.reset(seed=0)
        _, _, _, _, after = env.step(int(np.flatnonzero(info["action_mask"])[0]))
        unsorted = (set(info) | set(after)) - shown - LABEL_INFO_KEYS
        assert not unsorted, f"{task}: info keys {sorted(unsorted)} are neither labels nor known to be safe"


def _comparable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.mark.parametrize("name", ["random", "bm25"])
def test_a_cell_gives_the_same_records_alone_or_after_other_cells(data_dir: Path, name: str) -> None:
    """Tie-breaking agents are reseeded per episode: what ran before never shifts a cell."""
    env_1k = make_eval_env("qa1", 1_000, "test", data_dir=str(data_dir))
    env_4k = make_eval_env("qa1", 4_000, "test", data_dir=str(data_dir))
    cell = Cell(name, "qa1", "4K", 4_000, 0, 8)
    alone = run_cell(cell, make_agent(name, seed=0), env_4k)
    agent = make_agent(name, seed=0)
    run_cell(Cell(name, "qa1", "1K", 1_000, 0, 8), agent, env_1k)
    assert _comparable(run_cell(cell, agent, env_4k)) == _comparable(alone)


def test_episodes_walk_the_test_questions_once(data_dir: Path) -> None:
    """n episodes ask every test question once (a fixed permutation); the same question at every length."""
    order = question_order(1_000)
    assert sorted(order) == list(range(1_000))
    env_1k = make_eval_env("qa1", 1_000, "test", data_dir=str(data_dir))
    env_4k = make_eval_env("qa1", 4_000, "test", data_dir=str(data_dir))
    short = run_cell(Cell("dense", "qa1", "1K", 1_000, 0, 4), make_agent("dense"), env_1k)
    long = run_cell(Cell("dense", "qa1", "4K", 4_000, 0, 4), make_agent("dense"), env_4k)
    assert [r["question_index"] for r in short] == [r["question_index"] for r in long] == list(order[:4])
    assert all(r["num_tokens"] > 3_000 for r in long) and all(r["num_tokens"] < 1_500 for r in short)


def test_summary_reports_means_and_wilson_intervals() -> None:
    records = [{"success_at_k": float(i < 9), "f1": 0.5, "answer_correct": None} for i in range(10)]
    summary = summarize(records)
    assert summary["episodes"] == 10 and summary["success_at_k"] == 0.9 and summary["f1"] == 0.5
    assert (summary["success_at_k_low"], summary["success_at_k_high"]) == pytest.approx((0.596, 0.982), abs=1e-3)
    assert "answer_correct" not in summary
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(0, 20)[1] == pytest.approx(0.161, abs=1e-3)


# ----- the official bAbI test split --------------------------------------------------------------------
@pytest.mark.parametrize("task", ["qa1", "qa2", "qa3", "qa4", "qa5"])
def test_test_split_reads_the_official_test_file(data_dir: Path, task: str) -> None:
    babi_dir = data_dir / "babi" / "en-10k"
    if not task_path(babi_dir, task, "test").is_file():
        pytest.skip(f"no official test file for {task} in {babi_dir}")
    test = load_split(babi_dir, task, "test")
    assert len(test) == 1_000  # bAbI v1.2: 1,000 test questions per task
    first_question = next(line for line in task_path(babi_dir, task, "test").read_text().splitlines() if "\t" in line)
    assert test[0].question == first_question.split(" ", 1)[1].split("\t")[0].strip()
    assert default_eval_split(task, data_dir) == ("test", None)


def test_test_env_hides_test_stories_among_held_out_books(data_dir: Path) -> None:
    env = gym.make("QRAG-Babilong-v0", task="qa1", num_sentences=60, split="test", data_dir=str(data_dir))
    validation = gym.make("QRAG-Babilong-v0", task="qa1", num_sentences=60, split="validation", data_dir=str(data_dir))
    assert env.unwrapped._source.noise.book_names == validation.unwrapped._source.noise.book_names
    _, info = env.reset(seed=0, options={"question_index": 3})
    sample = load_babi_task(data_dir / "babi" / "en-10k", "qa1", "test")[3]
    assert info["question"] == sample.question and info["split"] == "test" and "official" in info["split_rule"]
    chunks = env.unwrapped.chunks
    assert [chunks[i] for i in info["supporting_ids"]] == [sample.facts[i] for i in sorted(sample.supporting)]


def _official_layout(root: Path, test_lines: str | None) -> Path:
    """A hand-made data folder in the official format: train file, optional test file, one book."""
    babi = root / "babi" / "en-10k"
    babi.mkdir(parents=True)
    story = "1 Mary moved to the bathroom.\n2 John went to the hallway.\n3 Where is Mary? \tbathroom\t1\n"
    (babi / "qa1_single-supporting-fact_train.txt").write_text(story * 3)
    if test_lines is not None:
        (babi / "qa1_single-supporting-fact_test.txt").write_text(test_lines)
    books = root / "noise" / "gutenberg"
    books.mkdir(parents=True)
    text = " ".join(f"The lantern number {i} burned quietly in the window." for i in range(400))
    for name in ("a", "b", "c", "d", "e", "f"):
        (books / f"{name}.txt").write_text(text)
    return root


def test_missing_test_file_names_the_expected_path(tmp_path: Path) -> None:
    root = _official_layout(tmp_path, None)
    expected = root / "babi" / "en-10k" / "qa1_single-supporting-fact_test.txt"
    with pytest.raises(FileNotFoundError, match="qa1_single-supporting-fact_test.txt") as caught:
        gym.make("QRAG-Babilong-v0", task="qa1", num_sentences=20, split="test", data_dir=str(root))
    assert str(expected) in str(caught.value)
    split, notice = default_eval_split("qa1", root)
    assert split == "validation" and str(expected) in notice


def test_hand_made_test_file_in_the_official_format(tmp_path: Path) -> None:
    test = "1 Daniel journeyed to the office.\n2 Sandra went back to the garden.\n3 Where is Sandra? \tgarden\t2\n"
    root = _official_layout(tmp_path, test)
    env = make_eval_env("qa1", split="test", num_sentences=20, data_dir=str(root))
    record = run_episode(make_agent("oracle"), env, 0)
    assert record["question_index"] == 0 and record["answer_correct"] == 1.0 and record["split"] == "test"
    assert default_eval_split("qa1", root) == ("test", None)


@pytest.mark.parametrize("text", ["inf", "nan", "-4K", "10000000000000", "lots"])
def test_bad_lengths_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="bad length"):
        parse_length(text)


def test_each_seed_draws_its_own_sample_of_questions(data_dir: Path) -> None:
    """Seed s used to shift seed 0's window by 3 questions (1,000,003 % 1,000 = 3), so seeds shared 47 of
    50 questions and pooled them as independent trials."""
    env = make_eval_env("qa1", 1_000, "test", data_dir=str(data_dir))
    cells = [run_cell(Cell("random", "qa1", "1K", 1_000, seed, 50), make_agent("random"), env) for seed in (0, 1)]
    first, second = ({r["question_index"] for r in records} for records in cells)
    assert len(first) == len(second) == 50 and len(first & second) < 10  # about 2.5 expected by chance
    assert [r["question_index"] for r in cells[0]] == list(question_order(1_000)[:50])  # seed 0 as before
