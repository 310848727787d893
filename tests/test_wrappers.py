"""ShortlistView: SB3's checker, masks and remapping, its tie to the dense retriever, and SB3 training on it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env

from qrag_agents import make_agent
from qrag_gym.document import Document
from qrag_gym.wrappers import ShortlistView
from conftest import play_checking_valid_actions

pytestmark = pytest.mark.usefixtures("single_thread")


def test_passes_sb3_check_env_without_warnings(make_env) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(ShortlistView(make_env("qa2"), k=4), warn=True, skip_render_check=True)


def test_size_does_not_depend_on_length(make_env) -> None:
    short, longer = ShortlistView(make_env(tokens=1_000), k=4), ShortlistView(make_env(tokens=4_000), k=4)
    assert short.observation_space == longer.observation_space
    obs, _ = longer.reset(seed=0)
    assert longer.observation_space.contains(obs)


def test_empty_slots_are_masked_and_remapped(make_env) -> None:
    view = ShortlistView(make_env(tokens=50), k=64)  # a document shorter than the shortlist
    obs, info = view.reset(seed=1)
    mask = view.action_masks()
    n = int(mask.sum())
    assert 0 < n < 64 and mask[:n].all() and not mask[n:].any()
    assert (info["candidates"][n:] == -1).all()
    best = int(info["candidates"][0])
    _, _, _, _, info = view.step(63)
    assert info["remapped_action"] and not info["invalid_action"]
    assert info["selected_order"] == [best]
    with pytest.raises(ValueError, match="outside Discrete"):
        view.step(64)


def test_slot_zero_is_the_multistep_dense_retriever(make_env) -> None:
    view, env, agent = ShortlistView(make_env("qa2"), k=4), make_env("qa2"), make_agent("dense-multistep")
    for seed in range(3):
        view.reset(seed=seed)
        obs, info = env.reset(seed=seed)
        document = Document(env.unwrapped)
        agent.reset(obs, info, document)
        done = False
        while not done:
            _, _, terminated, truncated, view_info = view.step(0)
            obs, _, _, _, info = env.step(agent.act(obs, info, document))
            assert view_info["selected_order"] == info["selected_order"]
            done = terminated or truncated


@pytest.mark.slow
@pytest.mark.parametrize("name", ["maskable-ppo", "dqn"])
def test_sb3_agents_train_then_act(make_env, name: str) -> None:
    agent = make_agent(name, seed=0, k=4)
    agent.learn(make_env("qa1", tokens=300), total_timesteps=256)  # short documents: few sentences to encode
    env = make_env("qa1", tokens=300)
    play_checking_valid_actions(agent, env, range(3))


def test_sb3_agent_without_policy_says_so(make_env) -> None:
    env = make_env()
    obs, info = env.reset(seed=0)
    with pytest.raises(RuntimeError, match="call learn"):
        make_agent("dqn").act(obs, info, Document(env.unwrapped))


def test_features_match_the_embedder(make_env) -> None:
    view = ShortlistView(make_env(), k=3)
    obs, info = view.reset(seed=0)
    dim = view.env.unwrapped.embedder.dim
    first = obs[dim: 2 * dim]
    np.testing.assert_allclose(first, view.env.unwrapped.chunk_vectors()[info["candidates"][0]], atol=1e-6)


def test_gymnasium_check_env_and_sb3_make_vec_env_take_the_view(data_dir) -> None:
    """Gymnasium's checker rebuilds wrappers from their constructor arguments; SB3's make_vec_env asks for
    render_mode='rgb_array'. Both used to fail on the view."""
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_util import make_vec_env

    import gymnasium as gym

    env = gym.make("QRAG-Babilong-v0", task="qa2", num_sentences=40, split="validation", data_dir=str(data_dir))
    gym_check_env(ShortlistView(env, k=4), skip_render_check=True)
    vec = make_vec_env("QRAG-Babilong-v0", n_envs=2, seed=0, wrapper_class=ShortlistView, wrapper_kwargs={"k": 4},
                       env_kwargs={"task": "qa2", "num_sentences": 40, "split": "validation", "data_dir": str(data_dir)})
    observations = vec.reset()
    assert observations.shape == (2, *ShortlistView(env, k=4).observation_space.shape)
    frame = vec.envs[0].render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3


def test_rgb_array_render_maps_selected_and_supporting_chunks(data_dir) -> None:
    import gymnasium as gym

    env = gym.make("QRAG-Babilong-v0", task="qa2", num_sentences=40, split="validation", data_dir=str(data_dir),
                   render_mode="rgb_array", never_terminate=True)
    _, info = env.reset(seed=1)
    first, second = info["supporting_ids"]
    env.step(first)
    frame = env.render()
    assert frame.shape == (24, env.unwrapped.num_chunks, 3)
    assert frame[0, first].tolist() == [30, 170, 60] and frame[0, second].tolist() == [220, 40, 40]


def test_observation_space_prints_in_one_short_line(data_dir) -> None:
    import gymnasium as gym

    env = gym.make("QRAG-Babilong-v0", task="qa1", num_sentences=40, split="validation", data_dir=str(data_dir))
    text = repr(env.observation_space)
    assert "\n" not in text and len(text) < 300 and "Text(1, 2048, charset=<" in text
