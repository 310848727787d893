"""The one interface every agent follows, and the registry that turns a name into an agent.

An agent is any object with ``reset(obs, info, document)`` (called once per episode, after ``env.reset``)
and ``act(obs, info, document) -> int`` (a chunk index of the underlying ``Discrete(max_chunks)`` space).
It sees only what a policy may use (issue 15, "observation-only agents"):

- ``obs``: the question, the selected chunk ids (document order) and the action mask;
- ``info``: the env's info *without the gold labels* (:data:`qrag_gym.evaluation.LABEL_INFO_KEYS`:
  answer, supporting ids and what is derived from them); only an agent whose class sets
  ``privileged = True`` (the oracle, an upper bound by construction) gets them;
- ``document``: a read-only :class:`qrag_gym.document.Document` of the episode (question, chunk texts
  by id, the env's embedder vectors and scores), never the env itself.

Everything else is optional and looked up with ``getattr``, so a user's class needs no base class:

- ``learn(env, total_timesteps)``: train on a *training-split* env before evaluation (training reads
  rewards, so it gets the env);
- ``save(path)`` / ``load(path)``;
- ``kept(info) -> Sequence[int]``: the chunks handed to a reader (e.g. after a Q-threshold stop), from
  the last ``info`` as ``act`` gets it; precision/recall/F1 and the reader's answer use it. By default,
  every selection: evaluation episodes always run all T steps (:mod:`qrag_gym.evaluation`), so an agent
  that wants to stop early says so here, from its own signals, never from the gold labels;
- ``seed_episode(seed)``: called by the evaluation runner before every episode with that episode's
  reset seed; an agent that draws random numbers (tie-breaks) reseeds here, so its records in a
  benchmark cell never depend on which cells ran before.

Names: the built-ins in :data:`BUILTIN_AGENTS`, or ``"package.module:ClassName"`` for any class
importable from the current environment or the working folder, so a user's agent runs in every
benchmark unchanged. Constructor settings follow a ``?``: ``"my_agents:RecentDense?margin=0.1"``,
``"qrag?threshold=0.4&shortlist=16"`` (values parsed as JSON when they can be, else kept as text).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from abc import ABC, abstractmethod
import inspect
from typing import Any, Protocol, Sequence, runtime_checkable

from qrag_gym.document import Document


@runtime_checkable
class Agent(Protocol):
    """What the benchmark harness calls; see the module docstring for the optional methods."""

    def reset(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> None:
        """Start a new episode (build per-episode indexes here, never in ``act``)."""

    def act(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> int:
        """The next chunk to select: an index with ``info["action_mask"][index]`` true."""


class BaseAgent(ABC):
    """Convenience base: a no-op ``reset`` and ``kept`` = every selection. Subclassing is optional."""

    privileged: bool = False
    """True only for an agent that must see the gold labels (the oracle); the runner then passes them."""

    def reset(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> None:
        """Nothing to prepare by default."""

    @abstractmethod
    def act(self, obs: dict[str, Any], info: dict[str, Any], document: Document) -> int:
        """The next chunk to select (every agent decides this itself)."""

    def kept(self, info: dict[str, Any]) -> Sequence[int]:
        """The chunks a reader gets: all selected ones unless an agent stops itself earlier."""
        return list(info["selected_order"])


BUILTIN_AGENTS: dict[str, str] = {
    "random": "qrag_agents.baselines.simple:RandomAgent",
    "oracle": "qrag_agents.baselines.simple:OracleAgent",
    "bm25": "qrag_agents.baselines.bm25:BM25Agent",
    "bm25-multistep": "qrag_agents.baselines.bm25:MultiStepBM25Agent",
    "dense": "qrag_agents.baselines.dense:DenseAgent",
    "dense-multistep": "qrag_agents.baselines.dense:MultiStepDenseAgent",
    "maskable-ppo": "qrag_agents.baselines.sb3:MaskablePPOAgent",
    "dqn": "qrag_agents.baselines.sb3:DQNAgent",
    "qrag": "qrag_agents.qrag.agent:QRAGAgent",
    "qrag-stage": "qrag_agents.qrag.agent:StagedQRAGAgent",
}
"""Built-in names -> ``module:Class`` (imported lazily: naming ``random`` never imports SB3)."""


def parse_agent_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name?key=value&key=value"`` -> ``("name", {key: value, ...})``."""
    name, sep, query = spec.partition("?")
    settings: dict[str, Any] = {}
    for pair in query.split("&") if sep else []:
        key, eq, text = pair.partition("=")
        if not eq or not key.isidentifier():
            raise ValueError(f"agent {spec!r}: settings are key=value pairs joined by '&', got {pair!r}")
        try:
            settings[key] = json.loads(text)
        except json.JSONDecodeError:
            settings[key] = text
    return name, settings


def _import_module(module_name: str):
    """Import ``module_name``; if its top package is missing, look in the working folder too (console
    scripts, unlike ``python -m``, do not put it on the path)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        here = os.getcwd()
        if err.name != module_name.split(".")[0] or here in sys.path:
            raise
        sys.path.insert(0, here)
        return importlib.import_module(module_name)


def resolve_agent_class(spec: str) -> type:
    """The class behind a built-in name or a ``module.path:ClassName`` string (settings after ``?`` ignored)."""
    name = parse_agent_spec(spec)[0]
    target = BUILTIN_AGENTS.get(name, name)
    if ":" not in target:
        raise ValueError(
            f"unknown agent {name!r}: built-in agents are {', '.join(BUILTIN_AGENTS)}; "
            "a custom agent is named 'package.module:ClassName'"
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = _import_module(module_name)
    except ImportError as err:
        raise ValueError(f"agent {name!r}: cannot import module {module_name!r} ({err})") from err
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        raise ValueError(f"agent {name!r}: module {module_name!r} has no class {class_name!r}")
    missing = [method for method in ("reset", "act") if not callable(getattr(cls, method, None))]
    if missing:
        raise ValueError(f"agent {name!r}: class {class_name} lacks {' and '.join(missing)}(obs, info, document)")
    return cls


def make_agent(spec: str, **offered: Any) -> Agent:
    """Build an agent from a name with optional ``?key=value`` settings (:func:`parse_agent_spec`).

    ``offered`` keyword arguments the constructor does not accept are dropped: that is what lets the
    harness offer ``seed=`` (and training options) to every agent while a user's agent with a bare
    ``__init__(self)`` still works. Settings written in the name must be accepted, and win.
    """
    cls = resolve_agent_class(spec)
    settings = parse_agent_spec(spec)[1]
    unknown = sorted(set(settings) - set(accepted_kwargs(spec, settings)))
    if unknown:
        raise ValueError(f"agent {spec!r}: {cls.__name__}() takes no {', '.join(unknown)} "
                         f"(it takes {', '.join(inspect.signature(cls).parameters) or 'no arguments'})")
    return cls(**{**accepted_kwargs(spec, offered), **settings})


def accepted_kwargs(spec: str, offered: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``offered`` that the agent's constructor accepts."""
    parameters = inspect.signature(resolve_agent_class(spec)).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return {key: value for key, value in offered.items() if takes_any or key in parameters}


__all__ = ["Agent", "BUILTIN_AGENTS", "BaseAgent", "accepted_kwargs", "make_agent", "parse_agent_spec",
           "resolve_agent_class"]
