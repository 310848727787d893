"""qrag-gym: long-context multi-step retrieval as Gymnasium environments.

Importing the package registers every environment id::

    import gymnasium as gym, qrag_gym
    env = gym.make("QRAG-Babilong-v0", task="qa2", context_tokens=32_000)
"""

from gymnasium.envs.registration import register

from qrag_gym.episode import Episode

__version__ = "0.1.0"

register(
    id="QRAG-Babilong-v0",
    entry_point="qrag_gym.envs.babilong:BabilongEnv",
    kwargs={"task": "qa1"},
)

ENV_IDS = ("QRAG-Babilong-v0",)

__all__ = ["ENV_IDS", "Episode", "__version__"]
