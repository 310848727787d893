"""N retrieval episodes stepped at once on arrays of ids: the ``vector_entry_point`` of every env id.

``gym.make_vec("QRAG-Babilong-v0", num_envs=N, vectorization_mode="vector_entry_point", task="qa2")`` returns
a :class:`RetrievalVectorEnv`. It plays exactly what ``vectorization_mode="sync"`` plays on the same seeds and
actions (observations, rewards, terminations, truncations and info, id for id; ``tests/test_vector_env.py``
checks it step by step), but holds the state of the N episodes as arrays, so that ``step`` updates masks,
selected ids, rewards and episode ends for all N with a few numpy operations instead of N Python steps. A
batched learner reads those arrays directly (CleanRL's ``SyncVectorEnv`` style, RLlib's EnvRunners).

Episodes are never re-implemented here: slot ``i`` owns one single env (the class the id registers, built
with the same keyword arguments) and every reset of the slot is that env's own ``reset``, so a slot draws
the very episode a single env draws from the same seed. Only the per-step MDP of
:class:`~qrag_gym.envs.retrieval.RetrievalEnv` (mask, reward variants, termination, truncation, the step
part of ``info``) is written again, on arrays; the equivalence test holds the two together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array

from qrag_gym.envs.retrieval import EpisodeEndedError, InvalidActionError, RetrievalEnv
from qrag_gym.episode import Episode

AutoresetMode = getattr(gym.vector, "AutoresetMode", None)
"""Gymnasium's autoreset enum (Gymnasium 1.1 and later; 1.0 has none and is refused with a clear error)."""

STEP_OBSERVATION_KEYS = ("selected", "action_mask")
"""Observation entries that change within an episode (computed on arrays); every other entry is the slot's
reset observation, constant for the episode (the question)."""

STEP_INFO_KEYS = ("hits", "selected_order", "steps", "completed", "invalid_action", "action_mask")
"""``info`` entries that change within an episode; every other entry (question, answer, supporting ids,
source, split, ...) is the slot's reset info, constant for the episode."""


class RetrievalVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` episodes of one retrieval env, stepped together on arrays of chunk ids.

    Spaces are Gymnasium's batches of the single env's: ``single_observation_space`` equals the single
    env's ``observation_space`` and ``observation_space`` is ``batch_space`` of it (questions as a tuple of
    N strings, ``selected`` ``(N, max_steps)`` padded with -1, ``action_mask`` ``(N, max_chunks)``); the
    action is ``(N,)`` chunk ids (``MultiDiscrete``). ``info`` is a dict of arrays with ``_key`` masks, as
    Gymnasium's vector envs build it.

    Seeds and options follow :class:`gymnasium.vector.SyncVectorEnv`: ``reset(seed=s)`` seeds slot ``i``
    with ``s + i`` (or takes a list of N seeds), ``options`` (a dict) goes to every slot, and
    ``options["reset_mask"]`` resets only the slots it marks. Beyond ``SyncVectorEnv``, ``options`` may
    also be a sequence of N dicts (or None), one per slot, e.g. ``[{"question_index": i} for i in range(N)]``
    to ask N given questions at once.

    Autoreset (``autoreset_mode=``, default next-step like ``SyncVectorEnv``): with ``NEXT_STEP`` the
    step after a slot's episode ended resets that slot (unseeded, continuing its random stream), ignores
    its action and returns reward 0; ``SAME_STEP`` resets at once and puts the ended episode's observation
    and info in ``info["final_obs"]``/``info["final_info"]``; ``DISABLED`` leaves resets to the caller
    (``reset(options={"reset_mask": ...})``) and refuses to step an ended slot.

    The batched state is readable: :attr:`episodes`, :meth:`action_masks`, :attr:`selected_ids`.
    """

    def __init__(
        self,
        entry_point: str | Callable[..., RetrievalEnv],
        num_envs: int = 1,
        autoreset_mode: str | Enum = "NextStep",
        **env_kwargs: Any,
    ) -> None:
        self._sources: tuple[RetrievalEnv, ...] = ()  # Gymnasium's __del__ closes even a half-built env
        if AutoresetMode is None:
            raise ImportError(f"RetrievalVectorEnv needs gymnasium>=1.1 (gymnasium.vector.AutoresetMode); "
                              f"this is gymnasium {gym.__version__}: use vectorization_mode='sync' instead")
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if "max_episode_steps" in env_kwargs:
            raise ValueError("max_episode_steps: Gymnasium's TimeLimit does not apply to a vector entry point; set "
                             "the env's own budget with max_steps=")
        if env_kwargs.get("render_mode") is not None:
            raise ValueError(f"render_mode={env_kwargs['render_mode']!r}: the vector env does not render; "
                             "render a single env (gym.make) instead")
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError as err:
            modes = [mode.value for mode in AutoresetMode]
            raise ValueError(f"autoreset_mode={autoreset_mode!r}: choose one of {modes}") from err
        factory = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
        self._sources = tuple(factory(**env_kwargs) for _ in range(int(num_envs)))
        first = self._sources[0]
        if not isinstance(first, RetrievalEnv):
            raise TypeError(f"entry_point must build a RetrievalEnv, got {type(first).__name__}")
        self.num_envs = int(num_envs)
        self.metadata = {**first.metadata, "autoreset_mode": self.autoreset_mode}
        self.render_mode = None
        self.single_action_space = first.action_space
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = first.observation_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.max_chunks, self.max_steps = first.max_chunks, first.max_steps
        self._step_outcome = first.step_outcome  # every slot is built with the same settings: one set of rules

        n, chunks = self.num_envs, self.max_chunks
        self._rows = np.arange(n)
        self._mask = np.zeros((n, chunks), dtype=np.int8)  # 1 = a chunk the slot may still select
        self._supporting = np.zeros((n, chunks), dtype=bool)
        self._num_supporting = np.zeros(n, dtype=np.int64)  # distinct supporting chunks: all found = complete
        self._share_numerator = np.zeros(n, dtype=np.int64)  # len(supporting_ids), as the shaped reward counts
        self._selected = np.full((n, self.max_steps), -1, dtype=np.int64)  # in selection order
        self._num_selected = np.zeros(n, dtype=np.int64)
        self._hits = np.zeros(n, dtype=np.int64)
        self._steps = np.zeros(n, dtype=np.int64)
        self._completed = np.zeros(n, dtype=bool)
        self._invalid = np.zeros(n, dtype=bool)
        self._ended = np.zeros(n, dtype=bool)  # the slot's episode terminated or was truncated
        self._episodes: list[Episode | None] = [None] * n
        self._episode_obs: dict[str, list[Any]] = {
            key: [None] * n for key in self.single_observation_space.keys() if key not in STEP_OBSERVATION_KEYS}
        self._episode_info: dict[str, Any] = {}  # per-episode info entries, batched, one column per slot
        self._episode_info_of: list[dict[str, Any]] = [{}] * n  # the same, as each slot's reset returned them

    # ----- batched state -------------------------------------------------------------------------
    @property
    def episodes(self) -> tuple[Episode, ...]:
        """The episode each slot plays now (chunk texts, question, supporting ids)."""
        return tuple(self._require_episode(i) for i in range(self.num_envs))

    @property
    def selected_ids(self) -> np.ndarray:
        """``(N, max_steps)`` chunk ids in the order each slot selected them, padded with -1 (a copy)."""
        return self._selected.copy()

    def action_masks(self) -> np.ndarray:
        """``(N, max_chunks)`` boolean mask of the chunks each slot may select (sb3-contrib's method name)."""
        return self._mask.astype(bool)

    def _require_episode(self, slot: int) -> Episode:
        episode = self._episodes[slot]
        if episode is None:
            raise RuntimeError("call reset() before step() or reading the episodes")
        return episode

    # ----- reset ---------------------------------------------------------------------------------
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Reset every slot (or those ``options["reset_mask"]`` marks); seeds and options as the class says."""
        seeds = self._slot_seeds(seed)
        reset_mask, per_slot = self._slot_options(options)
        infos: dict[str, Any] = {}
        for slot in np.flatnonzero(reset_mask).tolist():
            infos = self._add_info(infos, self._reset_slot(slot, seeds[slot], per_slot[slot]), slot)
        return self._observations(), infos

    def _slot_seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            return [int(seed) + i for i in range(self.num_envs)]
        if isinstance(seed, Sequence) and not isinstance(seed, str) and len(seed) == self.num_envs:
            return list(seed)
        raise ValueError(f"seed must be None, an int (slot i gets seed + i) or a sequence of {self.num_envs} "
                         f"seeds, got {seed!r}")

    def _slot_options(self, options: Any) -> tuple[np.ndarray, list[dict[str, Any] | None]]:
        """The slots to reset and each one's options (a dict is shared, as in SyncVectorEnv)."""
        reset_mask = np.ones(self.num_envs, dtype=bool)
        if options is None:
            return reset_mask, [None] * self.num_envs
        if isinstance(options, dict):
            options = dict(options)
            if "reset_mask" in options:
                reset_mask = options.pop("reset_mask")
                if (not isinstance(reset_mask, np.ndarray) or reset_mask.dtype != np.bool_
                        or reset_mask.shape != (self.num_envs,) or not reset_mask.any()):
                    raise ValueError(f"options['reset_mask'] must be a boolean numpy array of shape ({self.num_envs},) "
                                     f"with at least one True, got {reset_mask!r}")
            return reset_mask, [options] * self.num_envs
        if isinstance(options, Sequence) and not isinstance(options, str) and len(options) == self.num_envs:
            if all(item is None or isinstance(item, dict) for item in options):
                return reset_mask, list(options)
        raise ValueError(f"options must be None, a dict for every slot or a sequence of {self.num_envs} dicts "
                         f"(or None), one per slot, got {options!r}")

    def _reset_slot(self, slot: int, seed: int | None, options: dict[str, Any] | None) -> dict[str, Any]:
        """Draw the slot's next episode with its own single env's ``reset`` and load it into the arrays."""
        obs, info = self._sources[slot].reset(seed=seed, options=options)
        episode = self._sources[slot].episode
        assert episode is not None  # reset() sets it
        self._episodes[slot] = episode
        self._mask[slot] = obs["action_mask"]
        self._supporting[slot] = False
        self._supporting[slot, list(episode.supporting_ids)] = True
        self._num_supporting[slot] = len(set(episode.supporting_ids))
        self._share_numerator[slot] = len(episode.supporting_ids)
        self._selected[slot] = -1
        self._num_selected[slot] = self._hits[slot] = self._steps[slot] = 0
        self._completed[slot] = self._invalid[slot] = self._ended[slot] = False
        for key, values in self._episode_obs.items():
            values[slot] = obs[key]
        constant = {key: value for key, value in info.items() if key not in STEP_INFO_KEYS}
        self._episode_info = self._add_info(self._episode_info, constant, slot)
        self._episode_info_of[slot] = constant
        return info

    # ----- step ----------------------------------------------------------------------------------
    def step(self, actions: Any) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every slot with its action (chunk id); rewards, ends and info computed for all N at once."""
        if any(episode is None for episode in self._episodes):
            raise RuntimeError("call reset() before step()")
        resetting = self._ended if self.autoreset_mode == AutoresetMode.NEXT_STEP else np.zeros(self.num_envs, bool)
        if self.autoreset_mode == AutoresetMode.DISABLED and self._ended.any():
            raise EpisodeEndedError(f"step() on slots {np.flatnonzero(self._ended).tolist()} whose episodes ended, "
                                    "with autoreset_mode DISABLED: reset them first "
                                    "(reset(options={'reset_mask': ...}))")
        live = ~resetting
        index = self._check_actions(actions, live)
        rewards, terminated, truncated = self._advance(index, live)
        infos: dict[str, Any] = {}
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            for slot in np.flatnonzero(resetting).tolist():
                self._reset_slot(slot, None, None)
        elif self.autoreset_mode == AutoresetMode.SAME_STEP:
            for slot in np.flatnonzero(terminated | truncated).tolist():
                final = {"final_obs": self._slot_observation(slot), "final_info": self._slot_info(slot)}
                infos = self._add_info(infos, final, slot)
                self._reset_slot(slot, None, None)
        return self._observations(), rewards, terminated, truncated, {**infos, **self._step_infos()}

    def _check_actions(self, actions: Any, live: np.ndarray) -> np.ndarray:
        """``actions`` as ``(N,)`` int64 chunk ids; ids of slots being reset are ignored (as SyncVectorEnv does)."""
        array = np.asarray(actions)
        if array.shape != (self.num_envs,):
            raise InvalidActionError(f"actions must have shape ({self.num_envs},): one chunk id per slot, "
                                     f"got shape {array.shape}")
        if array.dtype.kind not in "iuf":
            raise InvalidActionError(f"actions must be integer chunk ids, got dtype {array.dtype}")
        with np.errstate(invalid="ignore"):
            index = np.where(live, array, 0).astype(np.int64)
            bad = live & ((index != array) | (index < 0) | (index >= self.max_chunks))
        if bad.any():
            slot = int(np.flatnonzero(bad)[0])
            raise InvalidActionError(f"actions[{slot}] = {array[slot]!r} is outside Discrete({self.max_chunks})")
        return index

    def _advance(self, index: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One step of :meth:`RetrievalEnv.step` for every ``live`` slot, on arrays (the same rules, in order)."""
        rows = self._rows
        valid = live & (self._mask[rows, index] == 1)
        self._invalid = live & ~valid
        self._steps += live
        chosen_rows, chosen = rows[valid], index[valid]
        self._selected[chosen_rows, self._num_selected[valid]] = chosen
        self._num_selected += valid
        self._mask[chosen_rows, chosen] = 0
        self._hits += valid & self._supporting[rows, index]
        newly_complete = live & ~self._completed & (self._hits == self._num_supporting)
        self._completed |= newly_complete
        share = self._share_numerator / np.maximum(self._num_selected, 1)
        rewards, terminated, truncated = self._step_outcome(self._invalid, newly_complete, self._completed, share,
                                                            self._steps, self._mask.any(axis=1))
        rewards, terminated, truncated = np.where(live, rewards, 0.0), live & terminated, live & truncated
        self._ended = np.where(live, terminated | truncated, self._ended)
        return rewards, terminated, truncated

    # ----- observations and info -------------------------------------------------------------------
    def _sorted_selected(self) -> np.ndarray:
        """Selected ids in document order, -1 padding last (the single env's ``obs["selected"]``)."""
        padded = np.where(self._selected < 0, self.max_chunks, self._selected)
        ordered = np.sort(padded, axis=1)
        return np.where(ordered == self.max_chunks, -1, ordered)

    def _observations(self) -> dict[str, Any]:
        space, n = self.single_observation_space, self.num_envs
        batched = {key: concatenate(space[key], values, create_empty_array(space[key], n))
                   for key, values in self._episode_obs.items()}
        batched["selected"] = self._sorted_selected()
        batched["action_mask"] = self._mask.copy()
        return {key: batched[key] for key in self.single_observation_space.keys()}

    def _step_infos(self) -> dict[str, Any]:
        """Every slot's info as arrays: the per-episode entries kept since its reset, the per-step ones now."""
        n = self.num_envs
        hits, order = np.empty(n, dtype=object), np.empty(n, dtype=object)
        for slot in range(n):
            order[slot], hits[slot] = self._picks(slot)
        step = {"hits": hits, "selected_order": order, "steps": self._steps.copy(), "completed": self._completed.copy(),
                "invalid_action": self._invalid.copy(), "action_mask": self._mask.astype(bool)}
        infos = {key: value.copy() for key, value in self._episode_info.items()}
        for key, value in step.items():
            infos[key], infos[f"_{key}"] = value, np.ones(n, dtype=bool)
        return infos

    def _picks(self, slot: int) -> tuple[list[int], list[int]]:
        """The slot's selected ids in selection order and its supporting ids among them, sorted."""
        picked = self._selected[slot, : self._num_selected[slot]]
        return picked.tolist(), sorted(picked[self._supporting[slot, picked]].tolist())

    def _slot_observation(self, slot: int) -> dict[str, Any]:
        """Slot ``slot``'s observation as the single env returns it (for ``final_obs``)."""
        obs = {key: values[slot] for key, values in self._episode_obs.items()}
        obs["selected"] = self._sorted_selected()[slot]
        obs["action_mask"] = self._mask[slot].copy()
        return {key: obs[key] for key in self.single_observation_space.keys()}

    def _slot_info(self, slot: int) -> dict[str, Any]:
        """Slot ``slot``'s info as the single env returns it (for ``final_info``)."""
        order, hits = self._picks(slot)
        return {**self._episode_info_of[slot], "hits": hits, "selected_order": order, "steps": int(self._steps[slot]),
                "completed": bool(self._completed[slot]), "invalid_action": bool(self._invalid[slot]),
                "action_mask": self._mask[slot].astype(bool)}

    def close_extras(self, **kwargs: Any) -> None:
        for env in self._sources:
            env.close()


def make_vector_env(env_id: str, num_envs: int = 1, **kwargs: Any) -> RetrievalVectorEnv:
    """:class:`RetrievalVectorEnv` over the single env a registered id's ``entry_point`` names (what its
    ``vector_entry_point`` builds), so the two can never name different envs."""
    return RetrievalVectorEnv(gym.spec(env_id).entry_point, num_envs, **kwargs)


def babilong_vector_env(num_envs: int = 1, **kwargs: Any) -> RetrievalVectorEnv:
    """``vector_entry_point`` of ``QRAG-Babilong-v0``."""
    return make_vector_env("QRAG-Babilong-v0", num_envs, **kwargs)


def niah_vector_env(num_envs: int = 1, **kwargs: Any) -> RetrievalVectorEnv:
    """``vector_entry_point`` of ``QRAG-NIAH-v0``."""
    return make_vector_env("QRAG-NIAH-v0", num_envs, **kwargs)


def hotpotqa_vector_env(num_envs: int = 1, **kwargs: Any) -> RetrievalVectorEnv:
    """``vector_entry_point`` of ``QRAG-HotpotQA-v0``."""
    return make_vector_env("QRAG-HotpotQA-v0", num_envs, **kwargs)


__all__ = ["RetrievalVectorEnv", "make_vector_env"]
