"""The retrieval MDP shared by every benchmark: pick, one step at a time, the chunks a question needs.

Subclasses only say how an :class:`~qrag_gym.episode.Episode` is drawn (``_sample_episode``); the
spaces, masks, reward, termination, info and rendering live here once.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from qrag_gym.embedding import TextEmbedder, shared_embedder
from qrag_gym.models import load_tokenizer
from qrag_gym.envs.text_space import question_text
from qrag_gym.features import SCORE_BLOCK, corpus_features
from qrag_gym.validation import MAX_CHUNKS, finite_float, flag, positive_int
from qrag_gym.episode import Episode

QUESTION_MAX_CHARS = 2048
TEXT_CHARSET = "".join(chr(c) for c in range(0x20, 0xFFFF) if not 0xD800 <= c <= 0xDFFF) + "\n\t"
"""Every printable BMP character, so real questions (HotpotQA's accents and dashes too) fit ``Text``."""

REWARD_VARIANTS = ("shaped", "binary")


class InvalidActionError(ValueError):
    """An action outside ``Discrete(max_chunks)``: not an int, or out of range."""


class DocumentTooShortWarning(UserWarning):
    """An episode's document is shorter than the length asked (usually: ``max_chunks`` too small)."""


class EpisodeEndedError(RuntimeError):
    """``step()`` after the episode terminated or was truncated: call ``reset()`` first."""


class RetrievalEnv(gym.Env, ABC):
    """Multi-step retrieval over one long document per episode.

    ## Description
    Each episode is one question over a document cut into chunks. At every step the agent selects one
    chunk it has not selected before; the state is the question plus the selected chunks in document
    order. A perfect agent selects exactly the supporting chunks.

    ## Action space
    ``Discrete(max_chunks)``: a chunk index. Only indices ``< num_chunks`` not yet selected are valid;
    the mask is given three ways: ``obs["action_mask"]``, ``info["action_mask"]`` and
    :meth:`action_masks` (for sb3-contrib's MaskablePPO). A *masked* action (already selected, or a
    padding index past the document's end) is a no-op that still uses a step, pays
    ``invalid_action_penalty`` and sets ``info["invalid_action"]``; an action outside the space
    raises :class:`InvalidActionError`.

    ## Observation space
    ``Dict(question=Text, selected=Box(-1, max_chunks-1, (max_steps,)), action_mask=MultiBinary(max_chunks))``.
    ``selected`` holds the selected chunk ids in document order, padded with -1. Chunk texts are at
    ``env.unwrapped.chunks`` (never copied into observations).

    ## Rewards (``reward=``)
    - ``"shaped"`` (the authors' code): 0 on every step except the first one at which every supporting
      chunk is selected; that step pays ``0.5 + 0.5 * k / |selected|`` with ``penalize_extra_steps``
      (k = number of supporting chunks), else 1.
    - ``"binary"`` (the paper's text, "1 if every supporting fact is in the final state"): 1 on the
      step at which every supporting chunk is first selected, else 0. A selection is never undone, so
      the episode's return is the paper's whoever ends the episode: ``max_steps``, running out of
      chunks, or Gymnasium's ``TimeLimit`` from ``gym.make(..., max_episode_steps=N)``, which the env
      cannot see (paying on the env's own last step gave 0 under a shorter ``TimeLimit``). Only the
      discounting of that 1 differs from a payment at the very end.
    - Training-only shaping (the authors' ``per_fact_reward``: a bonus for each supporting chunk when it
      is selected) is not part of the MDP: :class:`qrag_gym.wrappers.PerFactReward` adds it, and the
      Q-RAG learner adds it to its own rollouts.

    ## Episode end
    Terminated when every supporting chunk is selected, unless ``never_terminate`` (the authors'
    training setting, which always runs ``max_steps``). Truncated after ``max_steps`` steps or when no
    chunk is left. ``step()`` after that raises :class:`EpisodeEndedError` (it would count steps past
    ``max_steps``).

    ## Embedder-scored actions
    With ``embedder=`` (a model id/path, or a :class:`TextEmbedder`), :meth:`chunk_vectors` encodes the
    document once per episode and :meth:`score` rates every available chunk against a query vector
    with one matrix product, so agents never re-encode a chunk. A model named by id/path keeps the
    first ``embed_max_tokens`` tokens of each chunk (64, the paper's BABILong/NIAH chunk length).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 1}
    embed_max_tokens = 64

    def __init__(
        self,
        max_chunks: int,
        max_steps: int,
        reward: str = "shaped",
        penalize_extra_steps: bool = True,
        never_terminate: bool = False,
        invalid_action_penalty: float = -0.1,
        embedder: str | TextEmbedder | None = None,
        render_mode: str | None = None,
    ) -> None:
        if not isinstance(reward, str) or reward not in REWARD_VARIANTS:
            raise ValueError(f"unknown reward variant {reward!r}; choose one of {REWARD_VARIANTS}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unsupported render_mode {render_mode!r}; choose one of {self.metadata['render_modes']}")
        self.max_chunks = positive_int("max_chunks", max_chunks, MAX_CHUNKS)
        self.max_steps = positive_int("max_steps", max_steps, MAX_CHUNKS)
        self.reward_variant = reward
        self.penalize_extra_steps = flag("penalize_extra_steps", penalize_extra_steps)
        self.never_terminate = flag("never_terminate", never_terminate)
        self.invalid_action_penalty = finite_float("invalid_action_penalty", invalid_action_penalty)
        self.render_mode = render_mode
        if not isinstance(embedder, TextEmbedder) and embedder is not None:
            load_tokenizer(embedder)  # a bad model name fails here, naming it, not at the first score()
        self._embedder_spec = embedder
        self.action_space = spaces.Discrete(self.max_chunks)
        self.observation_space = spaces.Dict(
            {
                "question": question_text(QUESTION_MAX_CHARS, TEXT_CHARSET),  # async-vector safe
                "selected": spaces.Box(-1, self.max_chunks - 1, shape=(self.max_steps,), dtype=np.int64),
                "action_mask": spaces.MultiBinary(self.max_chunks),
            }
        )
        self.episode: Episode | None = None
        self._vectors: np.ndarray | None = None

    # ----- what subclasses provide -------------------------------------------------------------
    @abstractmethod
    def _sample_episode(self) -> Episode:
        """Draw one episode using ``self.np_random`` only (that is what makes seeds reproducible)."""

    def _episode_info(self) -> dict[str, Any]:
        """Extra per-episode facts for ``info`` (split, task, ...)."""
        return {}

    def _episode_from_options(self, options: dict[str, Any]) -> Episode:
        """The episode ``reset`` plays: ``options["episode"]`` if given, else a freshly drawn one."""
        if "question_index" in options:
            raise ValueError(f"options['question_index']: {type(self).__name__} has no fixed question set "
                             "(its documents are generated); reset with a seed instead")
        episode = options.get("episode")
        if episode is None:
            return self._sample_episode()
        if not isinstance(episode, Episode):
            raise TypeError(f"options['episode'] must be a qrag_gym.episode.Episode, got {type(episode).__name__}")
        if episode.chunk_ids is not None and episode.corpus.texts(episode.chunk_ids) != episode.chunks:
            raise ValueError("options['episode']: its chunk_ids name other texts than its chunks (features are "
                             "gathered by id); drop chunk_ids and corpus (dataclasses.replace) or fix them")
        return episode

    def _shortfall(self, episode: Episode) -> str | None:
        """How ``episode`` falls short of the length asked, or None (subclasses that take a length say)."""
        return None

    # ----- episode state ---------------------------------------------------------------------------
    @property
    def chunks(self) -> tuple[str, ...]:
        return self._require_episode().chunks

    @property
    def num_chunks(self) -> int:
        return len(self._require_episode().chunks)

    @property
    def question(self) -> str:
        return self._require_episode().question

    @property
    def selected(self) -> list[int]:
        """Selected chunk ids in the order they were selected."""
        return list(self._selected)

    def _require_episode(self) -> Episode:
        if self.episode is None:
            raise RuntimeError("call reset() before using the environment")
        return self.episode

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        episode = self._episode_from_options(options or {})
        if len(episode.chunks) > self.max_chunks:
            raise ValueError(f"episode has {len(episode.chunks)} chunks; this env holds at most {self.max_chunks}")
        self.episode = episode
        shortfall = self._shortfall(episode)
        if shortfall and not getattr(self, "_warned_short", False):
            self._warned_short = True  # once per env: every episode of it is sized the same way
            warnings.warn(f"{type(self).__name__}: {shortfall}; max_chunks={self.max_chunks} caps the document. "
                          "Leave max_chunks unset (sized for the length) or raise it", DocumentTooShortWarning,
                          stacklevel=3)
        self._selected: list[int] = []
        self._mask = np.zeros(self.max_chunks, dtype=np.int8)
        self._mask[: len(episode.chunks)] = 1
        self._steps = 0
        self._completed = False
        self._ended = False
        self._vectors = None
        return self._observation(), self._info(invalid=False)

    def step(self, action: Any) -> tuple[dict[str, Any], SupportsFloat, bool, bool, dict[str, Any]]:
        episode = self._require_episode()
        if self._ended:
            raise EpisodeEndedError(f"step() after the episode ended (at step {self._steps}); call reset() first")
        index = self._check_action(action)
        invalid = not self._mask[index]
        self._steps += 1
        if not invalid:
            self._selected.append(index)
            self._mask[index] = 0
        newly_complete = not self._completed and set(episode.supporting_ids) <= set(self._selected)
        self._completed = self._completed or newly_complete
        reward, terminated, truncated = self.step_outcome(
            np.bool_(invalid), np.bool_(newly_complete), np.bool_(self._completed), len(episode.supporting_ids) / max(len(self._selected), 1),
            np.int64(self._steps), np.bool_(self._mask.any()))
        reward, terminated, truncated = float(reward), bool(terminated), bool(truncated)
        self._ended = terminated or truncated
        return self._observation(), reward, terminated, truncated, self._info(invalid)

    def step_outcome(self, invalid: np.ndarray, newly_complete: np.ndarray, completed: np.ndarray, share: np.ndarray,
                     steps: np.ndarray, chunks_left: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reward, terminated and truncated of a step, from what the step did (see "Rewards" and "Episode end").

        The one place these rules live: :meth:`step` calls it for one episode and
        :class:`~qrag_gym.vector.RetrievalVectorEnv` for N at once (numpy broadcasting serves both). ``share``
        is ``k / |selected|``, read only on the completing step of the shaped reward with ``penalize_extra_steps``.
        """
        penalized = self.reward_variant == "shaped" and self.penalize_extra_steps
        reward = np.where(invalid, self.invalid_action_penalty, 0.0)
        reward = reward + np.where(newly_complete, 0.5 + 0.5 * share if penalized else 1.0, 0.0)
        terminated = completed & (not self.never_terminate)
        truncated = ~terminated & ((steps >= self.max_steps) | ~chunks_left)
        return reward, terminated, truncated

    def _check_action(self, action: Any) -> int:
        try:
            index = int(action)
        except (TypeError, ValueError, OverflowError) as err:  # OverflowError: int(float("inf"))
            raise InvalidActionError(f"action must be an integer chunk index, got {action!r}") from err
        if index != action or not 0 <= index < self.max_chunks:
            raise InvalidActionError(f"action {action!r} is outside Discrete({self.max_chunks})")
        return index

    def action_masks(self) -> np.ndarray:
        """Boolean mask of valid actions (the method sb3-contrib's MaskablePPO looks for)."""
        return self._mask.astype(bool)

    def _observation(self) -> dict[str, Any]:
        selected = np.full(self.max_steps, -1, dtype=np.int64)
        in_order = sorted(self._selected)[: self.max_steps]
        selected[: len(in_order)] = in_order
        return {
            "question": self._require_episode().question[:QUESTION_MAX_CHARS],
            "selected": selected,
            "action_mask": self._mask.copy(),
        }

    def _info(self, invalid: bool) -> dict[str, Any]:
        episode = self._require_episode()
        return {
            "question": episode.question,
            "answer": episode.answer,
            "supporting_ids": episode.supporting_ids,
            "hits": sorted(set(episode.supporting_ids) & set(self._selected)),
            "selected_order": list(self._selected),
            "num_chunks": len(episode.chunks),
            "num_tokens": episode.num_tokens,
            "source": episode.source,
            "task": episode.task,
            "steps": self._steps,
            "completed": self._completed,
            "invalid_action": invalid,
            "action_mask": self._mask.astype(bool),
            **self._episode_info(),
        }

    # ----- embedder-scored action space ----------------------------------------------------------
    @property
    def embedder(self) -> TextEmbedder:
        """The embedder named at construction (shared per process), loaded on first use."""
        spec = self._embedder_spec
        if isinstance(spec, TextEmbedder):
            return spec
        self._embedder_spec = shared_embedder(spec, self.embed_max_tokens)
        return self._embedder_spec

    def chunk_vectors(self) -> np.ndarray:
        """``(num_chunks, dim)`` vectors of this episode's chunks, gathered once per episode: by chunk id
        from the corpus's feature table where the episode has ids, else encoded from the texts."""
        if self._vectors is None:
            episode = self._require_episode()
            if episode.chunk_ids is not None:
                self._vectors = corpus_features(episode.corpus, self.embedder).rows(episode.chunk_ids)
            else:
                self._vectors = self.embedder.encode(self.chunks)
        return self._vectors

    def score(self, query: np.ndarray) -> np.ndarray:
        """Score of every action for a query vector: ``-inf`` where masked, length ``max_chunks``.

        A document of more than :data:`~qrag_gym.features.SCORE_BLOCK` chunks with ids is scored block by
        block from its feature table, never gathered whole (a 10M-token episode's vectors are 590 MB)."""
        episode = self._require_episode()
        scores = np.full(self.max_chunks, -np.inf, dtype=np.float32)
        query = np.asarray(query, dtype=np.float32)
        if self._vectors is None and episode.chunk_ids is not None and len(episode.chunks) > SCORE_BLOCK:
            scores[: self.num_chunks] = corpus_features(episode.corpus, self.embedder).scores(episode.chunk_ids, query)
        else:
            scores[: self.num_chunks] = self.chunk_vectors() @ query
        scores[self._mask == 0] = -np.inf
        return scores

    # ----- rendering ----------------------------------------------------------------------------
    def render(self) -> str | np.ndarray | None:
        """``"ansi"``: the question and the selected chunks as text. ``"rgb_array"``: a map of the
        document, one column per chunk (or per bin of chunks on long documents): grey unselected,
        blue selected, green a selected supporting chunk, red a supporting chunk not yet selected."""
        if self.render_mode == "rgb_array":
            return self._render_map()
        if self.render_mode != "ansi":
            return None
        episode = self._require_episode()
        lines = [f"Q: {episode.question}   (answer: {episode.answer})",
                 f"document: {len(episode.chunks)} chunks, {episode.num_tokens} tokens, source {episode.source}"]
        for index in sorted(self._selected):
            mark = "*" if index in episode.supporting_ids else " "
            lines.append(f" {mark} [{index:>7}/{len(episode.chunks)}] {episode.chunks[index]}")
        missing = sorted(set(episode.supporting_ids) - set(self._selected))
        lines.append(f"step {self._steps}/{self.max_steps}; supporting not yet selected: {missing}")
        return "\n".join(lines)

    def _render_map(self, width: int = 512, height: int = 24) -> np.ndarray:
        episode = self._require_episode()
        count = len(episode.chunks)
        columns = min(width, count)
        state = np.zeros(count, dtype=np.int8)  # 0 plain, 1 selected, 2 supporting missed, 3 supporting found
        state[list(self._selected)] = 1
        supporting = np.asarray(episode.supporting_ids, dtype=np.int64)
        state[supporting] = np.where(state[supporting] == 1, 3, 2)
        binned = np.zeros(columns, dtype=np.int8)  # a bin shows its most telling chunk
        np.maximum.at(binned, np.arange(count) * columns // count, state)
        colours = np.array([[200, 200, 200], [40, 90, 220], [220, 40, 40], [30, 170, 60]], dtype=np.uint8)
        return np.repeat(colours[binned][None, :, :], height, axis=0)


class QuestionSetEnv(RetrievalEnv, ABC):
    """A retrieval env over a fixed set of questions (bAbI stories, HotpotQA, the BABILong release).

    ``reset(options={"question_index": i})`` asks question ``i`` of the split, so an evaluation can walk
    every question once instead of drawing with replacement; without it a question is drawn with
    ``self.np_random``. Subclasses say how many questions there are and build the episode of one.
    """

    @property
    @abstractmethod
    def num_questions(self) -> int:
        """How many questions the split holds."""

    @abstractmethod
    def _episode_for_question(self, index: int) -> Episode:
        """The episode of question ``index`` (``0 <= index < num_questions``), drawing noise from ``np_random``."""

    def _sample_episode(self) -> Episode:
        return self._episode_for_question(int(self.np_random.integers(self.num_questions)))

    def _episode_from_options(self, options: dict[str, Any]) -> Episode:
        if "question_index" not in options:
            return super()._episode_from_options(options)
        index, count = options["question_index"], self.num_questions
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < count:
            raise ValueError(f"options['question_index'] must be an int in [0, {count}), got {index!r}")
        return self._episode_for_question(int(index))
