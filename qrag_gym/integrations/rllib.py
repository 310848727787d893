"""Training RLlib algorithms on the retrieval envs (RLlib's new API stack, ``pip install "qrag-gym[ray]"``).

RLlib's action-masking modules (``ActionMaskingTorchRLModule`` of RLlib's examples) read a ``Dict``
observation ``{"observations": ..., "action_mask": ...}`` and add ``log(mask)`` to the action logits.
:class:`MaskedShortlistView` gives :class:`~qrag_gym.wrappers.ShortlistView` (the fixed-size top-K view the
SB3 baselines train on, README "Benchmarks") that layout, and :func:`register` names the env in Ray's
registry, which every EnvRunner of the job reads, so rollout workers on any node build it by name
(the package must be installed there, or shipped with the job's runtime environment).

:func:`ppo_config` is PPO with that module; :func:`play` measures any policy (a trained module through
:func:`greedy_policy`, or :func:`random_policy`) on the same seeds. ``examples/rllib_ppo_shortlist.py``
trains for a few iterations and compares the two.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from qrag_gym.metrics import wilson_interval
from qrag_gym.tasks import ENV_IDS, env_kwargs, task_family
from qrag_gym.wrappers import ShortlistView

ENV_NAME = "qrag-shortlist-masked"
"""The name :func:`register` gives :func:`make_masked_env` in Ray's registry."""


class MaskedShortlistView(gym.ObservationWrapper):
    """``{"observations": ShortlistView features, "action_mask": float 0/1 per slot}`` for RLlib's masking modules.

    The mask is ``ShortlistView.action_masks()`` of the new state (the slots that hold a candidate);
    actions stay ``Discrete(k)`` slots of the shortlist.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        view = env
        while not isinstance(view, ShortlistView):  # the raw env has action_masks() too, over every chunk
            if not isinstance(view, gym.Wrapper):
                raise TypeError(f"MaskedShortlistView wraps a ShortlistView, got {type(env).__name__}")
            view = view.env
        self.view = view
        k = int(view.action_space.n)
        self.observation_space = spaces.Dict({"observations": env.observation_space,
                                              "action_mask": spaces.Box(0.0, 1.0, shape=(k,), dtype=np.float32)})

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        return {"observations": observation, "action_mask": self.view.action_masks().astype(np.float32)}


def make_masked_env(config: Mapping[str, Any] | None = None) -> MaskedShortlistView:
    """The env RLlib builds on each EnvRunner, from its ``env_config``.

    Keys: ``task`` (default ``"qa1"``), ``context_tokens`` (default 1,000; ignored by HotpotQA),
    ``split`` (default ``"train"``: train on training stories, measure on ``"validation"``), ``k``
    (shortlist size, default 8); any other key is passed to the env (``data_dir``, ``max_steps``...).
    RLlib's own keys (worker index and the like) live on the EnvContext object, not in the mapping.
    """
    options = dict(config or {})
    task = options.pop("task", "qa1")
    tokens = options.pop("context_tokens", 1_000)
    split = options.pop("split", "train")
    k = options.pop("k", 8)
    env = gym.make(ENV_IDS[task_family(task)], **{**env_kwargs(task, tokens, split), **options})
    return MaskedShortlistView(ShortlistView(env, k=k))


def register(name: str = ENV_NAME) -> str:
    """Register :func:`make_masked_env` under ``name`` with ``ray.tune.registry.register_env``; returns the name.

    Call it on the driver after ``ray.init``: the registry lives in the cluster, so every EnvRunner finds it.
    """
    from ray.tune.registry import register_env

    register_env(name, make_masked_env)
    return name


def ppo_config(env_config: Mapping[str, Any] | None = None, *, num_env_runners: int = 1, seed: int = 0,
               train_batch_size: int = 512, minibatch_size: int = 64, num_epochs: int = 6, lr: float = 3e-4,
               entropy_coeff: float = 0.01, hiddens: tuple[int, ...] = (64, 64)) -> Any:
    """PPO with RLlib's action-masking module on the registered env (new API stack).

    The defaults are sized for a small CPU machine: a few iterations of 512 steps each take about a
    minute on 2 cores (each step encodes the state text once with the frozen embedder).
    """
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.examples.rl_modules.classes.action_masking_rlm import ActionMaskingTorchRLModule

    model = {"fcnet_hiddens": list(hiddens), "head_fcnet_hiddens": list(hiddens), "head_fcnet_activation": "relu"}
    return (PPOConfig()
            .environment(register(), env_config=dict(env_config or {}))
            .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=1)
            .rl_module(rl_module_spec=RLModuleSpec(module_class=ActionMaskingTorchRLModule, model_config=model))
            .training(train_batch_size_per_learner=train_batch_size, minibatch_size=minibatch_size,
                      num_epochs=num_epochs, lr=lr, entropy_coeff=entropy_coeff)
            .debugging(seed=seed))


Policy = Callable[[dict[str, np.ndarray]], int]
"""Observation dict of :class:`MaskedShortlistView` -> slot."""


def greedy_policy(module: Any) -> Policy:
    """The trained module's most likely valid slot (its ``forward_inference``, mask applied by the module)."""
    import torch

    def act(observation: dict[str, np.ndarray]) -> int:
        batch = {"obs": {key: torch.as_tensor(value)[None] for key, value in observation.items()}}
        with torch.no_grad():
            logits = module.forward_inference(batch)["action_dist_inputs"][0]
        return int(torch.argmax(logits))

    return act


def random_policy(seed: int) -> Policy:
    """A uniformly random valid slot (seeded): the floor a trained policy must beat."""
    rng = np.random.default_rng(seed)

    def act(observation: dict[str, np.ndarray]) -> int:
        return int(rng.choice(np.flatnonzero(observation["action_mask"] > 0)))

    return act


def play(policy: Policy, env: gym.Env, seeds: range) -> dict[str, Any]:
    """One episode per reset seed: mean return (with a normal 95% interval), success rate (with Wilson's), steps."""
    returns, successes, steps = [], [], []
    for seed in seeds:
        observation, _ = env.reset(seed=seed)
        total, done, count, info = 0.0, False, 0, {}
        while not done:
            observation, reward, terminated, truncated, info = env.step(policy(observation))
            total, count, done = total + float(reward), count + 1, terminated or truncated
        returns.append(total)
        successes.append(float(set(info["supporting_ids"]) <= set(info["selected_order"])))
        steps.append(count)
    mean = float(np.mean(returns))
    half = 1.96 * float(np.std(returns, ddof=1)) / np.sqrt(len(returns)) if len(returns) > 1 else float("nan")
    low, high = wilson_interval(float(np.sum(successes)), len(successes))
    return {"episodes": len(returns), "return_mean": mean, "return_low": mean - half, "return_high": mean + half,
            "success": float(np.mean(successes)), "success_low": low, "success_high": high,
            "steps_mean": float(np.mean(steps))}


__all__ = ["ENV_NAME", "MaskedShortlistView", "greedy_policy", "make_masked_env", "play", "ppo_config",
           "random_policy", "register"]
