"""qrag-gym: long-context multi-step retrieval as Gymnasium environments.

Importing the package registers every environment id::

    import gymnasium as gym, qrag_gym
    env = gym.make("QRAG-Babilong-v0", task="qa2", context_tokens=32_000)
    env = gym.make("QRAG-NIAH-v0", variant="multivalue", context_tokens=128_000)
    env = gym.make("QRAG-HotpotQA-v0", split="validation")
    envs = gym.make_vec("QRAG-Babilong-v0", num_envs=16, vectorization_mode="vector_entry_point", task="qa2")
"""

from gymnasium.envs.registration import register

from qrag_gym.episode import Episode

__version__ = "0.1.0"

register(
    id="QRAG-Babilong-v0",
    entry_point="qrag_gym.envs.babilong:BabilongEnv",
    vector_entry_point="qrag_gym.vector:babilong_vector_env",
    kwargs={"task": "qa1"},
)

register(
    id="QRAG-NIAH-v0",
    entry_point="qrag_gym.envs.niah:NiahEnv",
    vector_entry_point="qrag_gym.vector:niah_vector_env",
    kwargs={"variant": "single_1", "context_tokens": 4000},
)

register(
    id="QRAG-HotpotQA-v0",
    entry_point="qrag_gym.envs.hotpotqa:HotpotQAEnv",
    vector_entry_point="qrag_gym.vector:hotpotqa_vector_env",
    kwargs={"split": "train"},
)

ENV_IDS = ("QRAG-Babilong-v0", "QRAG-NIAH-v0", "QRAG-HotpotQA-v0")

__all__ = ["ENV_IDS", "Episode", "__version__"]
