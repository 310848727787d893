"""Every baseline on real episodes: valid actions, the oracle's upper bound, retrievers far above chance."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qrag_agents import BUILTIN_AGENTS, BaseAgent, make_agent, resolve_agent_class
from qrag_gym.evaluation import Cell, run_cell
from conftest import play_checking_valid_actions

CHEAP = ("random", "oracle", "bm25", "bm25-multistep", "dense", "dense-multistep")

pytestmark = pytest.mark.usefixtures("single_thread")


class FirstAvailableAgent(BaseAgent):
    """A user's agent, named by ``module:Class`` in the tests: always the first available chunk."""

    def act(self, obs: dict[str, Any], info: dict[str, Any], document) -> int:
        return int(np.flatnonzero(obs["action_mask"])[0])


def success(agent_name: str, env, task: str, episodes: int) -> dict[str, float]:
    cell = Cell(agent_name, task, "1K", 1_000, seed=0, episodes=episodes)
    records = run_cell(cell, make_agent(agent_name, seed=0), env)
    return {metric: float(np.mean([r[metric] for r in records])) for metric in ("success_at_k", "success_at_t", "recall")}


def test_registry_resolves_every_builtin_name() -> None:
    for name in BUILTIN_AGENTS:
        assert callable(resolve_agent_class(name).act)


@pytest.mark.parametrize("name, message", [
    ("bm26", "unknown agent 'bm26'"),
    ("no_such_module_xyz:Agent", "cannot import module"),
    ("qrag_agents.base:NoSuchAgent", "has no class 'NoSuchAgent'"),
])
def test_registry_errors_name_the_problem(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_agent(name)


def test_custom_agent_runs_by_module_name(make_env) -> None:
    agent = make_agent(f"{__name__}:FirstAvailableAgent", seed=3)  # seed is dropped: __init__ takes none
    assert isinstance(agent, FirstAvailableAgent)
    records = run_cell(Cell(f"{__name__}:FirstAvailableAgent", "qa1", "1K", 1_000, 0, 3), agent,
                       make_env(never_terminate=True))
    assert [r["steps"] >= 1 for r in records] == [True] * 3


@pytest.mark.parametrize("task", ["qa1", "qa2", "qa3"])
def test_oracle_is_the_upper_bound(make_env, task: str) -> None:
    assert success("oracle", make_env(task, never_terminate=True), task, 10)["success_at_k"] == 1.0


@pytest.mark.parametrize("name", CHEAP)
def test_baselines_only_take_valid_actions(make_env, name: str) -> None:
    env, agent = make_env("qa2"), make_agent(name, seed=0)
    play_checking_valid_actions(agent, env, range(3))


@pytest.mark.slow
def test_retrievers_beat_random_on_qa1(make_env) -> None:
    env = make_env("qa1", never_terminate=True)
    chance = success("random", env, "qa1", 30)["success_at_k"]
    for name in ("bm25", "bm25-multistep", "dense", "dense-multistep"):
        scores = success(name, env, "qa1", 30)
        assert scores["success_at_k"] >= chance + 0.25, (name, scores, chance)
        assert scores["success_at_t"] >= 0.8, (name, scores)


def test_agent_settings_after_a_question_mark() -> None:
    assert make_agent("random?seed=7", seed=0).seed == 7  # written settings win over what the harness offers
    agent = make_agent("qrag?threshold=0.4&models_dir=elsewhere")
    assert agent.threshold == 0.4 and str(agent.models_dir) == "elsewhere"
    with pytest.raises(ValueError, match=r"takes no margin"):
        make_agent(f"{__name__}:FirstAvailableAgent?margin=0.1")
    with pytest.raises(ValueError, match="key=value pairs"):
        make_agent("random?seed")


def test_agent_module_in_the_working_folder_resolves_without_python_m(tmp_path, monkeypatch) -> None:
    """Console scripts do not put the working folder on sys.path; the README's my_agents:Class must still load."""
    (tmp_path / "my_agents_for_test.py").write_text(
        "from qrag_agents import BaseAgent\n\nclass Last(BaseAgent):\n    def act(self, obs, info, document):\n"
        "        return int(info['action_mask'].nonzero()[0][-1])\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    assert resolve_agent_class("my_agents_for_test:Last").__name__ == "Last"


def test_readme_custom_agent_runs_on_the_observation_and_document_alone(make_env, tmp_path, monkeypatch) -> None:
    """The README's RecentDense, copied from the README as it stands, through the runner (which gives it
    no env). With a margin wider than any score gap it takes the latest available chunk every step."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n((?:(?!```).)*class RecentDense\(BaseAgent\):.*?)```", readme, re.S).group(1)
    assert "unwrapped" not in code
    (tmp_path / "readme_agents.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    env = make_env("qa1", never_terminate=True)
    cell = Cell("readme_agents:RecentDense", "qa1", "1K", 1_000, seed=0, episodes=3)
    for record in run_cell(cell, make_agent("readme_agents:RecentDense"), env):
        assert len(set(record["selected"])) == 6
    for record in run_cell(cell, make_agent("readme_agents:RecentDense?margin=1e9"), env):
        last = record["num_chunks"] - 1
        assert record["selected"] == list(range(last, last - 6, -1))
