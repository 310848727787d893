"""The batched vector env (``vectorization_mode="vector_entry_point"``) against N single envs and SyncVectorEnv.

Every comparison is id for id on real data: the same seeds and the same action sequences (drawn from the
masks with a seeded rng, with masked and padding actions mixed in, over enough steps that episodes end and
reset) must give equal observations, rewards, terminations, truncations and info.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

import qrag_gym
from qrag_gym.envs.retrieval import EpisodeEndedError, InvalidActionError
from qrag_gym.vector import RetrievalVectorEnv

torch.set_num_threads(1)

N = 3
BABILONG = {"task": "qa1", "num_sentences": 20, "split": "validation", "source": "real"}
"""Short qa1 documents: six random picks among about 25 chunks find the one fact often enough to end episodes."""


def make_vector(env_id: str = "QRAG-Babilong-v0", num_envs: int = N, **kwargs: Any) -> RetrievalVectorEnv:
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    assert isinstance(envs, RetrievalVectorEnv)
    return envs


def same(a: Any, b: Any) -> bool:
    """Exact equality through dicts, sequences and numpy arrays (object arrays element by element)."""
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or (a.dtype != b.dtype and object not in (a.dtype, b.dtype)):
            return False
        if object in (a.dtype, b.dtype):
            return all(same(x, y) for x, y in zip(a.ravel().tolist(), b.ravel().tolist()))
        return bool(np.array_equal(a, b))
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b) and (a is None) == (b is None)


def slot_of(batch: dict[str, Any], slot: int) -> dict[str, Any]:
    """One slot's observation or info out of a batched one (info: only the keys its ``_key`` mask marks)."""
    if any(key.startswith("_") for key in batch):
        return {key: value[slot] for key, value in batch.items() if not key.startswith("_") and batch[f"_{key}"][slot]}
    return {key: value[slot] for key, value in batch.items()}


def draw_actions(rng: np.random.Generator, masks: np.ndarray, ended: np.ndarray, max_chunks: int) -> np.ndarray:
    """One action per slot: mostly a valid chunk, sometimes a masked one (already selected or padding); a slot
    whose episode ended gets an id outside the space, which next-step autoreset must ignore."""
    actions = np.empty(len(masks), dtype=np.int64)
    for slot, mask in enumerate(masks):
        masked = np.flatnonzero(mask == 0)
        if ended[slot]:
            actions[slot] = max_chunks + 7
        elif masked.size and rng.random() < 0.2:
            actions[slot] = rng.choice(masked)
        else:
            actions[slot] = rng.choice(np.flatnonzero(mask))
    return actions


@pytest.mark.parametrize("settings", [
    {"reward": "shaped"},
    {"reward": "binary"},
    {"reward": "shaped", "never_terminate": True},
    {"reward": "binary", "never_terminate": True},
    {"reward": "shaped", "penalize_extra_steps": False, "invalid_action_penalty": -0.3},
], ids=["shaped", "binary", "shaped-never-terminate", "binary-never-terminate", "flat-penalty"])
def test_follows_n_single_envs_id_for_id(data_dir, settings) -> None:
    """The done-when of issue 15 item 3: each slot is the single env with seed ``s + i``, step by step, through
    ends and next-step autoresets (an ended slot's next step is that env's unseeded reset, reward 0)."""
    kwargs = {**BABILONG, "data_dir": str(data_dir), **settings}
    envs = make_vector(**kwargs)
    singles = [gym.make("QRAG-Babilong-v0", **kwargs) for _ in range(N)]
    obs, info = envs.reset(seed=11)
    single_obs = []
    for slot, env in enumerate(singles):
        o, i = env.reset(seed=11 + slot)
        assert same(slot_of(obs, slot), o) and same(slot_of(info, slot), i)
        single_obs.append(o)
    rng = np.random.default_rng(0)
    ended = np.zeros(N, dtype=bool)
    counts = {"terminated": 0, "truncated": 0, "invalid": 0, "reset": 0, "reward": 0}
    for _ in range(60):
        actions = draw_actions(rng, np.stack([o["action_mask"] for o in single_obs]), ended, envs.max_chunks)
        obs, rewards, terminated, truncated, info = envs.step(actions)
        for slot, env in enumerate(singles):
            if ended[slot]:
                o, i = env.reset()
                r, te, tr = 0.0, False, False
                counts["reset"] += 1
            else:
                o, r, te, tr, i = env.step(int(actions[slot]))
            assert same(slot_of(obs, slot), o), f"observation of slot {slot}"
            assert same(slot_of(info, slot), i), f"info of slot {slot}"
            assert (rewards[slot], terminated[slot], truncated[slot]) == (r, te, tr)
            assert envs.episodes[slot] is env.unwrapped.episode or envs.episodes[slot] == env.unwrapped.episode
            assert envs.selected_ids[slot].tolist() == env.unwrapped.selected + [-1] * (env.unwrapped.max_steps - len(env.unwrapped.selected))
            single_obs[slot], ended[slot] = o, te or tr
            counts["terminated"] += te
            counts["truncated"] += tr
            counts["invalid"] += i["invalid_action"]
            counts["reward"] += r > 0
        assert np.array_equal(envs.action_masks(), np.stack([o["action_mask"] for o in single_obs]).astype(bool))
    assert counts["truncated"] and counts["invalid"] and counts["reset"] and counts["reward"], counts
    assert bool(counts["terminated"]) is not settings.get("never_terminate", False), counts


@pytest.mark.parametrize("mode", ["NextStep", "SameStep", "Disabled"])
def test_equals_sync_vector_env_in_every_autoreset_mode(data_dir, mode) -> None:
    """Whole batches, info ``_key`` masks, ``final_obs``/``final_info`` and masked resets included."""
    kwargs = {**BABILONG, "task": "qa2", "data_dir": str(data_dir), "reward": "binary"}
    envs = make_vector(**kwargs, autoreset_mode=mode)
    sync = gym.make_vec("QRAG-Babilong-v0", num_envs=N, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode(mode)}, **kwargs)
    assert envs.metadata["autoreset_mode"] == sync.metadata["autoreset_mode"] == AutoresetMode(mode)
    first, second = envs.reset(seed=[3, 5, 8]), sync.reset(seed=[3, 5, 8])
    assert same(first, second)
    rng = np.random.default_rng(1)
    ended = np.zeros(N, dtype=bool)
    resets = 0
    for _ in range(40):
        if mode == "Disabled" and ended.any():
            first, second = envs.reset(options={"reset_mask": ended.copy()}), sync.reset(options={"reset_mask": ended.copy()})
            assert same(first, second)
            ended[:] = False
            resets += 1
        actions = draw_actions(rng, second[0]["action_mask"], ended & (mode == "NextStep"), envs.max_chunks)
        first, second = envs.step(actions), sync.step(actions)
        assert same(first, second)
        ended = first[2] | first[3]
        resets += mode == "SameStep" and "final_obs" in first[4]
    assert resets or mode == "NextStep"
    envs.close()
    sync.close()


@pytest.mark.parametrize("env_id", ["QRAG-NIAH-v0", "QRAG-HotpotQA-v0"])
def test_other_env_ids_equal_sync(data_dir, env_id) -> None:
    kwargs = {"context_tokens": 600, "split": "validation"} if env_id == "QRAG-NIAH-v0" else {}
    envs, sync = make_vector(env_id, **kwargs), gym.make_vec(env_id, num_envs=N, vectorization_mode="sync", **kwargs)
    first, second = envs.reset(seed=0), sync.reset(seed=0)
    assert same(first, second)
    rng = np.random.default_rng(2)
    ended = np.zeros(N, dtype=bool)
    for _ in range(12):
        actions = draw_actions(rng, second[0]["action_mask"], ended, envs.max_chunks)
        first, second = envs.step(actions), sync.step(actions)
        assert same(first, second)
        ended = first[2] | first[3]


def test_spaces_and_gymnasium_conventions(data_dir) -> None:
    envs = make_vector(**BABILONG, data_dir=str(data_dir), num_envs=4)
    single = gym.make("QRAG-Babilong-v0", **BABILONG, data_dir=str(data_dir))
    assert isinstance(envs, gym.vector.VectorEnv) and envs.num_envs == 4
    assert envs.single_observation_space == single.observation_space
    assert envs.single_action_space == single.action_space
    assert envs.observation_space == batch_space(single.observation_space, 4)
    assert envs.action_space == batch_space(single.action_space, 4)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert envs.spec is not None and envs.spec.id == "QRAG-Babilong-v0"
    obs, _ = envs.reset(seed=0)
    assert obs in envs.observation_space
    envs.action_space.seed(0)
    for _ in range(10):  # samples from the batched space: any id in the space, masked or not
        obs, rewards, terminated, truncated, _ = envs.step(envs.action_space.sample())
        assert obs in envs.observation_space and rewards.dtype == np.float64
        assert terminated.dtype == truncated.dtype == np.bool_
    # make_vec without a mode takes the registered vector entry point
    assert isinstance(gym.make_vec("QRAG-Babilong-v0", num_envs=2, **BABILONG, data_dir=str(data_dir)), RetrievalVectorEnv)


def test_batched_question_spaces_share_the_characters_and_sample_independently(data_dir) -> None:
    """``batch_space`` copies the question space per slot: each copy keeps the one character table (copying its
    ~63,500 characters per slot took 20 s for 64 slots) and draws from its own generator, as Gymnasium's do."""
    single = gym.make("QRAG-Babilong-v0", **BABILONG, data_dir=str(data_dir)).observation_space["question"]
    questions = batch_space(gym.make("QRAG-Babilong-v0", **BABILONG, data_dir=str(data_dir)).observation_space, 3)["question"]
    assert all(space == single and space.character_list is single.character_list for space in questions)
    questions[0].seed(1)
    first = questions[0].sample()
    questions[1].seed(2)
    questions[1].sample()
    questions[0].seed(1)
    assert questions[0].sample() == first and questions[1].np_random is not questions[0].np_random
    unseeded = [gym.make("QRAG-Babilong-v0", **BABILONG, data_dir=str(data_dir)).observation_space["question"]
                for _ in range(2)]
    assert unseeded[0].sample() != unseeded[1].sample()  # each env's space draws its own stream, as Text's would


def test_gymnasium_vector_wrappers_see_the_same_episodes(data_dir) -> None:
    """RecordEpisodeStatistics (what CleanRL's loops read) reports the same returns and lengths on both."""
    kwargs = {**BABILONG, "data_dir": str(data_dir)}
    stats = []
    for envs in (make_vector(**kwargs), gym.make_vec("QRAG-Babilong-v0", num_envs=N, vectorization_mode="sync", **kwargs)):
        envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
        obs, _ = envs.reset(seed=4)
        rng, finished = np.random.default_rng(4), []
        for _ in range(30):
            actions = np.array([rng.choice(np.flatnonzero(mask)) for mask in obs["action_mask"]])
            obs, _, _, _, info = envs.step(actions)
            if "episode" in info:
                done = info["_episode"]
                finished.append((np.flatnonzero(done).tolist(), info["episode"]["r"][done].tolist(),
                                 info["episode"]["l"][done].tolist()))
        stats.append(finished)
    assert stats[0] == stats[1] and stats[0]


def test_dict_info_to_list_gives_each_single_envs_info(data_dir) -> None:
    """RLlib's EnvRunner wraps ``make_vec`` in DictInfoToList: each listed info is the single env's own."""
    kwargs = {**BABILONG, "data_dir": str(data_dir)}
    envs = gym.wrappers.vector.DictInfoToList(make_vector(**kwargs))
    singles = [gym.make("QRAG-Babilong-v0", **kwargs) for _ in range(N)]
    _, infos = envs.reset(seed=21)
    observations = []
    for slot, env in enumerate(singles):
        obs, info = env.reset(seed=21 + slot)
        assert same(infos[slot], info)
        observations.append(obs)
    actions = np.array([int(np.flatnonzero(obs["action_mask"])[-1]) for obs in observations])
    _, _, _, _, infos = envs.step(actions)
    for slot, env in enumerate(singles):
        assert same(infos[slot], env.step(int(actions[slot]))[4])


def test_per_slot_options(data_dir) -> None:
    """A sequence of option dicts asks each slot its own question; a dict goes to every slot."""
    kwargs = {**BABILONG, "data_dir": str(data_dir)}
    envs, single = make_vector(**kwargs), gym.make("QRAG-Babilong-v0", **kwargs)
    _, info = envs.reset(seed=0, options=[{"question_index": 4}, None, {"question_index": 9}])
    for slot, options in ((0, {"question_index": 4}), (2, {"question_index": 9})):
        _, expected = single.reset(seed=slot, options=options)
        assert same(slot_of(info, slot), expected)
    _, info = envs.reset(seed=0, options={"question_index": 7})
    assert len(set(info["question"])) == 1  # one question, its facts among each slot's own noise
    for slot in range(N):
        _, expected = single.reset(seed=slot, options={"question_index": 7})
        assert same(slot_of(info, slot), expected)


def test_errors_name_the_argument(data_dir) -> None:
    kwargs = {**BABILONG, "data_dir": str(data_dir)}
    envs = make_vector(**kwargs)
    with pytest.raises(RuntimeError, match="call reset"):
        envs.step(np.zeros(N, dtype=np.int64))
    envs.reset(seed=0)
    for bad, message in [(np.zeros(N + 1, dtype=np.int64), r"shape \(3,\)"), (np.zeros((N, 1), dtype=np.int64), "shape"),
                         (3, "shape"), (np.array(["a", "b", "c"]), "dtype"), (np.ones(N, dtype=bool), "dtype"),
                         (np.array([0, 1.5, 2]), r"actions\[1\]"), (np.array([0, 1, envs.max_chunks]), r"actions\[2\]"),
                         (np.array([-1, 0, 0]), r"actions\[0\]"), (np.array([0, np.nan, 0]), r"actions\[1\]")]:
        with pytest.raises(InvalidActionError, match=message):
            envs.step(bad)
    with pytest.raises(ValueError, match="seed"):
        envs.reset(seed=[1, 2])
    with pytest.raises(ValueError, match="options"):
        envs.reset(options=[{}, {}])
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"reset_mask": np.array([1, 0, 0])})
    with pytest.raises(ValueError, match="num_envs"):
        make_vector(**kwargs, num_envs=0)
    with pytest.raises(ValueError, match="autoreset_mode"):
        make_vector(**kwargs, autoreset_mode="sometimes")
    with pytest.raises(ValueError, match="max_steps="):
        make_vector(**kwargs, max_episode_steps=3)
    with pytest.raises(ValueError, match="render_mode"):
        make_vector(**kwargs, render_mode="ansi")
    with pytest.raises(ValueError, match="unknown bAbI task"):
        make_vector(**{**kwargs, "task": "qa9"})
    with pytest.raises(TypeError, match="RetrievalEnv"):
        RetrievalVectorEnv("gymnasium.envs.classic_control.cartpole:CartPoleEnv", 2)
    disabled = make_vector(**kwargs, autoreset_mode="Disabled", max_steps=1)
    disabled.reset(seed=0)
    disabled.step(np.zeros(N, dtype=np.int64))
    with pytest.raises(EpisodeEndedError, match="reset_mask"):
        disabled.step(np.ones(N, dtype=np.int64))


def test_registered_for_every_id() -> None:
    for env_id in qrag_gym.ENV_IDS:
        assert gym.spec(env_id).vector_entry_point.startswith("qrag_gym.vector:")
