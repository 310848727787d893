"""Every registered environment: Gymnasium's checker, same seed -> same episode, vector envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import qrag_gym

SMALL = {"QRAG-Babilong-v0": {"task": "qa2", "num_sentences": 50}}


def _kwargs(env_id: str) -> dict:
    return SMALL.get(env_id, {})


@pytest.mark.parametrize("env_id", qrag_gym.ENV_IDS)
def test_check_env(env_id: str, data_dir) -> None:
    env = gym.make(env_id, **_kwargs(env_id))
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", qrag_gym.ENV_IDS)
def test_same_seed_same_episode(env_id: str, data_dir) -> None:
    first, second = gym.make(env_id, **_kwargs(env_id)), gym.make(env_id, **_kwargs(env_id))
    obs_a, info_a = first.reset(seed=123)
    obs_b, info_b = second.reset(seed=123)
    assert first.unwrapped.chunks == second.unwrapped.chunks
    assert obs_a["question"] == obs_b["question"] and info_a["supporting_ids"] == info_b["supporting_ids"]
    action = int(np.flatnonzero(obs_a["action_mask"])[0])
    assert first.step(action)[1] == second.step(action)[1]
    other, _ = first.reset(seed=124)
    assert first.unwrapped.chunks != second.unwrapped.chunks or other["question"] != obs_b["question"]


@pytest.mark.parametrize("env_id", qrag_gym.ENV_IDS)
def test_sync_vector_env(env_id: str, data_dir) -> None:
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, **_kwargs(env_id)) for _ in range(2)])
    obs, infos = envs.reset(seed=0)
    actions = np.array([int(np.flatnonzero(mask)[0]) for mask in obs["action_mask"]])
    obs, rewards, terminated, truncated, infos = envs.step(actions)
    assert rewards.shape == (2,)
    envs.close()


def test_render_ansi_shows_question_and_positions(data_dir) -> None:
    env = gym.make("QRAG-Babilong-v0", task="qa1", num_sentences=50, render_mode="ansi")
    _, info = env.reset(seed=0)
    env.step(info["supporting_ids"][0])
    text = env.render()
    assert info["question"] in text and f"[{info['supporting_ids'][0]:>7}/" in text


@pytest.mark.parametrize("env_id", qrag_gym.ENV_IDS)
def test_thin_envs_pass_the_shared_arguments_through_and_name_a_misspelt_one(env_id: str, data_dir) -> None:
    """Each env takes only its own arguments; the retrieval MDP's (reward, T, penalties, shaping) reach
    ``RetrievalEnv`` through ``**kwargs`` and a misspelt one is refused by name."""
    env = gym.make(env_id, reward="binary", never_terminate=True, invalid_action_penalty=-0.5,
                   penalize_extra_steps=False, max_steps=3, **_kwargs(env_id)).unwrapped
    assert (env.reward_variant, env.never_terminate, env.invalid_action_penalty, env.penalize_extra_steps,
            env.max_steps) == ("binary", True, -0.5, False, 3)
    with pytest.raises(TypeError, match="rewrd"):
        gym.make(env_id, rewrd="binary", **_kwargs(env_id))
