"""The benchmark harness: argument handling, a tiny real run producing every output file, resuming."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qrag_agents import BaseAgent
from qrag_benchmarks import report
from qrag_benchmarks.studies.qa1_first_step import position_slope
from qrag_benchmarks.run import QUICK, main, parse_args
from qrag_gym.tasks import parse_length

pytestmark = pytest.mark.usefixtures("single_thread")


class LastAvailableAgent(BaseAgent):
    """A user's agent named ``module:Class`` on the command line."""

    def act(self, obs: dict[str, Any], info: dict[str, Any], document) -> int:
        return int(np.flatnonzero(obs["action_mask"])[-1])


@pytest.mark.parametrize("text, expected", [("4K", ("4K", 4_000)), ("1m", ("1M", 1_000_000)),
                                            ("2500", ("2500", 2_500)), ("1.5K", ("1.5K", 1_500))])
def test_parse_length(text: str, expected: tuple[str, int]) -> None:
    assert parse_length(text) == expected


@pytest.mark.parametrize("argv, message", [
    (["--lengths", "lots"], "bad length 'lots'"),
    (["--agents", "nope"], "unknown agent 'nope'"),
    (["--episodes-at", "128K"], "expected LENGTH=N"),
    (["--episodes", "0"], "--episodes must be at least 1"),
    (["--tasks", "qa9"], "unknown task 'qa9'"),
    (["--tasks", "niah:single_9"], "unknown task 'niah:single_9'"),
    (["--tasks", "niah"], "niah:multivalue"),  # the error lists the accepted names
    (["--lengths", "inf"], "bad length 'inf'"),
    (["--lengths", str(10**12)], "must be between 1 and"),
    (["--seeds", "-1"], "--seeds must be non-negative"),
    (["--threads", "-1"], "--threads must be at least 1"),
    (["--max-steps", "0"], "--max-steps must be at least 1"),
    (["--resume", "--overwrite"], "give one"),
])
def test_bad_arguments_are_named(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_quick_preset_yields_to_explicit_options() -> None:
    args = parse_args(["--quick", "--tasks", "qa3"])
    assert args.agents == QUICK["agents"] and args.episodes == QUICK["episodes"] and args.tasks == ["qa3"]


def test_write_atomic_leaves_no_temporary_files(tmp_path: Path) -> None:
    report.write_atomic(tmp_path / "a.txt", b"one")
    report.write_atomic(tmp_path / "a.txt", b"two")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and (tmp_path / "a.txt").read_bytes() == b"two"


def test_tiny_run_writes_every_output_and_resumes(data_dir: Path, tmp_path: Path, capsys) -> None:
    agents = ["random", "oracle", f"{__name__}:LastAvailableAgent"]
    argv = ["--agents", *agents, "--tasks", "qa1", "qa2", "--lengths", "1K", "--episodes", "3",
            "--data-dir", str(data_dir), "--out", str(tmp_path)]
    assert main(argv) == 0
    names = {report.EPISODES_JSON, report.EPISODES_CSV, report.SUMMARY_MD, report.PLOT_PNG, report.RUN_JSON}
    assert names <= {p.name for p in tmp_path.iterdir()}
    records = report.load_records(tmp_path)
    assert len(records) == 3 * 2 * 3 and {r["agent"] for r in records} == set(agents)
    with gzip.open(tmp_path / report.EPISODES_CSV, "rt") as stream:
        assert len(list(csv.DictReader(stream))) == len(records)
    summary = (tmp_path / report.SUMMARY_MD).read_text()
    assert "| oracle | 1K | 1.00 [0.44, 1.00] | 1.00 [0.44, 1.00] |" in summary  # Wilson 95% of 3/3
    assert (tmp_path / report.PLOT_PNG).read_bytes().startswith(b"\x89PNG")
    oracle = [r for r in records if r["agent"] == "oracle"]
    assert all(r["success_at_k"] == 1.0 and r["f1"] == 1.0 and r["answer_correct"] == 1.0 for r in oracle)
    assert {r["split"] for r in records} == {"test"} and all(r["steps"] == 6 for r in records)

    # a folder that holds results is refused without --resume or --overwrite, and is left as it was
    before = (tmp_path / report.EPISODES_JSON).read_bytes()
    with pytest.raises(SystemExit):
        main(argv)
    assert "--resume" in capsys.readouterr().err and (tmp_path / report.EPISODES_JSON).read_bytes() == before

    # an interrupted cell (fewer episodes than asked) is run again; finished cells are kept as they are
    cut = [r for r in records if not (r["agent"] == "random" and r["task"] == "qa2" and r["episode"] == 2)]
    report.write_records(tmp_path / report.EPISODES_JSON, cut)
    assert main([*argv, "--resume"]) == 0
    again = report.load_records(tmp_path)
    assert len(again) == len(records)
    assert json.loads((tmp_path / report.RUN_JSON).read_text())["cells_skipped_as_finished"] == 5
    drop_time = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    order = lambda r: (r["agent"], r["task"], r["episode"])  # noqa: E731
    # the re-run cell gives the records the first run gave: same seeds, tie-breaks reseeded per episode
    assert [drop_time(r) for r in sorted(again, key=order)] == [drop_time(r) for r in sorted(records, key=order)]

    # cells run under other settings are dropped and re-run, and the run says which
    assert main([*argv, "--resume", "--max-steps", "2"]) == 0
    assert "--resume drops random qa1 1K seed 0: run under other settings" in capsys.readouterr().err
    changed = report.load_records(tmp_path)
    assert len(changed) == len(records) and all(r["steps"] == 2 for r in changed)
    assert len(json.loads((tmp_path / report.RUN_JSON).read_text())["cells_dropped_on_resume"]) == 6

    assert main([*argv, "--overwrite"]) == 0  # an explicit --overwrite replaces them
    assert all(r["steps"] == 6 for r in report.load_records(tmp_path))

    # one recorded episode, rebuilt from its ids and rendered
    capsys.readouterr()
    assert main(["show", str(tmp_path), "--agent", "oracle", "--task", "qa2", "--episode", "1",
                 "--data-dir", str(data_dir)]) == 0
    shown = capsys.readouterr().out.splitlines()
    record = next(r for r in report.load_records(tmp_path) if r["agent"] == "oracle" and r["task"] == "qa2"
                  and r["episode"] == 1)
    picks = [line for line in shown if line[:3].strip().rstrip(".").isdigit()]
    assert shown[1].startswith("Q: ") and len(picks) == 6
    assert [("*" in line[:6], "kept" in line) for line in picks[:2]] == [(True, True), (True, True)]
    assert shown[-1] == "supporting chunks never picked: none" and f"question {record['question_index']}" in shown[0]
    with pytest.raises(SystemExit):
        main(["show", str(tmp_path), "--agent", "oracle", "--task", "qa9", "--episode", "0"])
    assert "the run has: " in capsys.readouterr().err


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    target = tmp_path / "results.txt"
    target.write_text("mine")
    with pytest.raises(SystemExit):
        parse_args(["--out", str(target)])
    assert "is a file" in capsys.readouterr().err and target.read_text() == "mine"


def test_merge_runs_combines_folders(tmp_path: Path) -> None:
    base = {"task": "qa1", "length": "1K", "context_tokens": 1_000, "seed": 0, "episode": 0, "success_at_k": 1.0,
            "success_at_t": 1.0, "f1": 1.0, "seconds": 0.1, "answer_correct": 1.0, "source": "test"}
    for name in ("a", "b"):
        report.write_records(tmp_path / name / report.EPISODES_JSON, [{**base, "agent": name}])
    assert report.main([str(tmp_path / "out"), str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "| b | 1K | 1.00 [0.21, 1.00] |" in (tmp_path / "out" / report.SUMMARY_MD).read_text()
    with pytest.raises(SystemExit):  # a folder with results is only replaced when asked
        report.main([str(tmp_path / "out"), str(tmp_path / "a")])
    assert "| b | 1K |" in (tmp_path / "out" / report.SUMMARY_MD).read_text()
    assert report.main([str(tmp_path / "out"), str(tmp_path / "a"), "--overwrite"]) == 0
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "out2"), str(tmp_path / "missing")])


def test_niah_and_hotpotqa_run_in_one_harness_run(data_dir: Path, tmp_path: Path) -> None:
    """NIAH (RULER string match of the kept chunks) and HotpotQA (one natural length, no answer metric)
    through the same CLI; the tables group tasks by family and HotpotQA shows "–" for the answer."""
    if not (data_dir / "hotpotqa" / "dev_subsampled_400.jsonl").is_file():
        pytest.skip("no hotpotqa data file")
    agents = ["random", "oracle", "bm25-multistep"]
    argv = ["--agents", *agents, "--tasks", "niah:single_1", "hotpotqa", "--lengths", "1K", "2K",
            "--episodes", "3", "--data-dir", str(data_dir), "--out", str(tmp_path)]
    assert main(argv) == 0
    names = {report.EPISODES_JSON, report.EPISODES_CSV, report.SUMMARY_MD, report.PLOT_PNG, report.RUN_JSON}
    assert names <= {p.name for p in tmp_path.iterdir()}
    records = report.load_records(tmp_path)
    niah = [r for r in records if r["task"] == "niah:single_1"]
    hotpot = [r for r in records if r["task"] == "hotpotqa"]
    assert len(niah) == 3 * 2 * 3 and len(hotpot) == 3 * 3  # lengths are ignored for HotpotQA
    assert {r["length"] for r in hotpot} == {"doc"} and all(r["context_tokens"] is None for r in hotpot)
    assert all(r["answer_correct"] is None for r in hotpot)
    assert all(0.0 <= r["answer_correct"] <= 1.0 for r in niah)
    for r in records:  # the oracle keeps every needle / supporting paragraph; NIAH's reader then finds every value
        if r["agent"] == "oracle":
            assert r["success_at_k"] == 1.0 and r["f1"] == 1.0 and (r["task"] == "hotpotqa" or r["answer_correct"] == 1.0)
    # HotpotQA walks its validation questions in a fixed order: three different questions, the same for every agent
    docs = {a: [(r["num_chunks"], r["num_tokens"]) for r in hotpot if r["agent"] == a] for a in agents}
    assert len(set(docs["oracle"])) == 3 and docs["random"] == docs["oracle"] == docs["bm25-multistep"]
    summary = (tmp_path / report.SUMMARY_MD).read_text()
    assert "### RULER NIAH" in summary and "### HotpotQA" in summary and "| single_1 |" in summary
    assert "| oracle | 1K | 1.00 [0.44, 1.00] |" in summary and "| oracle | doc | 1.00 [0.44, 1.00] |" in summary
    answers = summary.split("## answer accuracy")[1].split("## F1")[0]
    assert "| oracle | doc | – |" in answers and "| oracle | 1K | 1.00 [0.44, 1.00] |" in answers
    assert all(r["steps"] == (2 if r["task"] == "hotpotqa" else 5) for r in records)  # every episode ran to T
    assert (tmp_path / report.PLOT_PNG).read_bytes().startswith(b"\x89PNG")
    info = json.loads((tmp_path / report.RUN_JSON).read_text())
    assert info["env_id"] == {"niah": "QRAG-NIAH-v0", "hotpotqa": "QRAG-HotpotQA-v0"}


def test_position_slope_separates_trend_from_noise() -> None:
    offsets = np.array([-1.0, 0.0, 1.0, -1.0, 0.0, 1.0])
    slope, noise = position_slope(offsets, 0.5 * offsets + np.array([0.1, -0.2, 0.1, -0.1, 0.2, -0.1]))
    assert slope == pytest.approx(0.5)
    assert noise == pytest.approx(np.sqrt(0.02))


def test_studies_write_only_into_out_and_never_over_earlier_results(data_dir: Path, tmp_path: Path, monkeypatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from qrag_benchmarks.studies import babi_overlap

    monkeypatch.chdir(tmp_path)  # the default --out is relative to the working folder, never the package
    babi_overlap.main(["--data-dir", str(data_dir), "--out", str(tmp_path / "mine")])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "mine/babi_overlap.json", "mine/babi_overlap.md"]
    rows = json.loads((tmp_path / "mine" / "babi_overlap.json").read_text())
    assert {r["task"]: r["test_questions"] for r in rows} == {f"qa{i}": 1_000 for i in range(1, 6)}
    assert next(r for r in rows if r["task"] == "qa4")["also_in_train"] > 500  # bAbI's qa4 repeats most of its test set
    (tmp_path / "mine" / "babi_overlap.md").write_text("a result the user keeps")
    with pytest.raises(SystemExit):  # a second run refuses to replace it, before doing any work
        babi_overlap.main(["--data-dir", str(data_dir), "--out", str(tmp_path / "mine")])
    assert "already exist: pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "mine" / "babi_overlap.md").read_text() == "a result the user keeps"
    babi_overlap.main(["--data-dir", str(data_dir), "--out", str(tmp_path / "mine"), "--overwrite"])
    assert (tmp_path / "mine" / "babi_overlap.md").read_text().startswith("# Official bAbI test questions")


@pytest.mark.parametrize("module", ["qrag_benchmarks.run", "qrag_agents.qrag.evaluate", "qrag_agents.qrag.cli"])
def test_command_line_modules_answer_help_without_loading_torch(module: str) -> None:
    """--help and argument errors come before the heavy imports (torch, matplotlib, SB3)."""
    import subprocess
    import sys

    code = (f"import sys, {module} as m\n"
            "heavy = [name for name in ('torch', 'matplotlib', 'stable_baselines3', 'transformers') if name in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_results_from_generated_stories_say_so_in_title_and_file_names(tmp_path: Path, monkeypatch, capsys) -> None:
    """Without a data folder the envs fall back to generated stories; the outputs must never pass for
    benchmark results."""
    monkeypatch.delenv("QRAG_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "empty"))
    assert main(["--agents", "random", "oracle", "--tasks", "qa1", "--lengths", "1K", "--episodes", "2",
                 "--out", str(tmp_path / "run")]) == 0
    assert "notice: no official bAbI test file" in capsys.readouterr().err
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"summary-GENERATED-DATA.md", "success_vs_length-GENERATED-DATA.png"} <= files
    assert report.SUMMARY_MD not in files and report.PLOT_PNG not in files
    text = (tmp_path / "run" / "summary-GENERATED-DATA.md").read_text()
    assert text.startswith("# Benchmark summary - GENERATED stories") and "babi-generated" in text


def test_installed_names_do_not_clash_with_another_agents_package(tmp_path: Path) -> None:
    """The repository's agents/ and benchmarks/ install as qrag_agents and qrag_benchmarks: a user's
    environment with another top-level `agents` (the OpenAI Agents SDK's import name) imports both."""
    import subprocess
    import sys

    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "__init__.py").write_text("OWNER = 'someone else'\n")
    code = ("import agents, qrag_agents, qrag_benchmarks.run, qrag_gym\n"
            "assert agents.OWNER == 'someone else'\n"
            "assert type(qrag_agents.make_agent('random')).__name__ == 'RandomAgent'\n"
            "assert qrag_agents.BUILTIN_AGENTS['random'].startswith('qrag_agents.')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env={**__import__("os").environ,
                   "PYTHONPATH": str(tmp_path)})


def test_plot_error_bars_survive_all_or_nothing_cells() -> None:
    """At n/n successes the Wilson upper bound can round to just under 1.0 (n = 10, for one): the error bar
    must not come out negative (matplotlib refuses it and the run stopped at its first such cell)."""
    records = [{"agent": "a", "task": "qa1", "length": f"{n}K", "context_tokens": n * 1_000, "success_at_k": value,
                "source": "test"} for n in (4, 10, 14) for value in [1.0] * n] + [
               {"agent": "b", "task": "qa1", "length": "10K", "context_tokens": 10_000, "success_at_k": 0.0,
                "source": "test"}] * 10
    assert report.plot_png(records).startswith(b"\x89PNG")


def test_resume_keeps_cells_it_does_not_plan_and_trims_extra_episodes(data_dir: Path, tmp_path: Path, capsys) -> None:
    base = ["--tasks", "qa1", "--lengths", "1K", "--data-dir", str(data_dir), "--out", str(tmp_path)]
    assert main(["--agents", "random", "--episodes", "4", *base]) == 0
    # another agent under another step budget: the random cell is not planned now, so it stays untouched
    assert main(["--agents", "oracle", "--episodes", "2", "--max-steps", "2", "--resume", *base]) == 0
    records = report.load_records(tmp_path)
    assert sorted((r["agent"], r["steps"]) for r in records) == [("oracle", 2)] * 2 + [("random", 6)] * 4
    assert "drops" not in capsys.readouterr().err
    # asking for fewer episodes of a finished cell keeps the first ones, not all of them
    assert main(["--agents", "random", "--episodes", "3", "--resume", *base]) == 0
    assert sorted(r["episode"] for r in report.load_records(tmp_path) if r["agent"] == "random") == [0, 1, 2]


@pytest.mark.parametrize("argv, message", [
    (["--lengths", "4K", "--episodes-at", "4000=5"], None),  # 4000 is 4K: it applies
    (["--lengths", "4K", "--episodes-at", "128K=5"], "128K is not among --lengths"),
    (["--tasks", "qa1", "--episodes-at", "doc=5"], "no task with one natural length"),
    (["--tasks", "niah:single_1", "--split", "test"], "niah:single_1 has no test split"),
])
def test_lengths_and_splits_that_match_nothing_are_refused(argv: list[str], message: str | None, capsys) -> None:
    if message is None:
        args = parse_args(["--agents", "random", *argv])
        assert args.episodes_at == {"4K": 5}
        return
    with pytest.raises(SystemExit):
        parse_args(["--agents", "random", *argv])
    assert message in capsys.readouterr().err


def test_duplicate_values_plan_each_cell_once() -> None:
    args = parse_args(["--agents", "random", "random", "--tasks", "qa1", "qa1", "--seeds", "0", "0",
                       "--lengths", "4K", "4000"])
    from qrag_benchmarks.run import plan

    assert len(plan(args)) == 1


def test_qrag_without_a_model_for_a_task_is_refused_before_any_cell(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--agents", "qrag", "--tasks", "qa1", "--qrag-models", str(tmp_path)])
    assert "no trained Q-RAG model for qa1" in capsys.readouterr().err
    assert parse_args(["--agents", "qrag", "--tasks", "qa1", "niah:multikey_3", "hotpotqa"]).agents == ["qrag"]  # shipped


def test_merge_refuses_one_cell_under_two_settings(tmp_path: Path, capsys) -> None:
    base = {"agent": "a", "task": "qa1", "length": "1K", "context_tokens": 1_000, "seed": 0, "success_at_k": 1.0,
            "source": "test"}
    report.write_records(tmp_path / "x" / report.EPISODES_JSON, [{**base, "episode": 0, "split": "test"}])
    report.write_records(tmp_path / "y" / report.EPISODES_JSON, [{**base, "episode": 1, "split": "validation"}])
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "out"), str(tmp_path / "x"), str(tmp_path / "y")])
    assert "would mix one cell's episodes" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_outputs_of_the_other_label_do_not_linger(tmp_path: Path) -> None:
    real = [{"agent": "a", "task": "qa1", "length": "1K", "context_tokens": 1_000, "seed": 0, "episode": 0,
             "success_at_k": 1.0, "source": "babi-real+gutenberg"}]
    report.write_outputs(tmp_path, real, {})
    report.write_outputs(tmp_path, [{**real[0], "source": "babi-generated+synthetic-noise"}], {})
    names = {p.name for p in tmp_path.iterdir()}
    assert report.SUMMARY_MD not in names and report.PLOT_PNG not in names and "summary-GENERATED-DATA.md" in names
