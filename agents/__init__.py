"""The agent suite: one :class:`~qrag_agents.base.Agent` protocol, baselines, and a registry of names.

``make_agent("bm25")`` or ``make_agent("my_pkg.agents:MyAgent")`` gives an agent the benchmark
harness can run. This package depends on ``qrag_gym``; ``qrag_gym`` never imports it.
"""

from qrag_agents.base import BUILTIN_AGENTS, Agent, BaseAgent, make_agent, resolve_agent_class

__all__ = ["Agent", "BUILTIN_AGENTS", "BaseAgent", "make_agent", "resolve_agent_class"]
