"""RULER needle-in-a-haystack as a retrieval MDP: find the needle sentences that answer the question.

The generator is :mod:`qrag_gym.data.niah`; this module resolves the haystack text (book sentences for
the essay variants), measures lengths with the one length tokenizer and sizes the action space.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qrag_gym.data.niah import (REPEAT_SENTENCES, VARIANTS, NiahConfig, build_episode, needle_text, random_values,
                                variant_config)
from qrag_gym.data.noise import BOOK_SPLIT_RULE, NoiseCorpus, load_book_corpus, synthetic_corpus
from qrag_gym.data.paths import find_data_subdir, require_data_subdir
from qrag_gym.cache import cached_token_counts
from qrag_gym.corpus import TextTable
from qrag_gym.models import count_tokens, length_tokenizer
from qrag_gym.envs.retrieval import RetrievalEnv
from qrag_gym.episode import Episode
from qrag_gym.validation import MAX_CHUNKS, MAX_CONTEXT_TOKENS, positive_int

logger = logging.getLogger(__name__)

SOURCES = ("auto", "real", "generated")
SPLITS = ("train", "validation")
_CAPACITY_SLACK = 1.5
_SOURCE_LABELS = {"repeat": "niah-repeat", "needle": "niah-needles"}


@dataclass(frozen=True)
class EssaySource:
    """The book sentences of one split, as a table with the token count of each (the same table, by
    fingerprint, as BABILong's books of that split: their features are shared)."""

    corpus: NoiseCorpus
    books: TextTable
    label: str


_ESSAY_CACHE: dict[tuple[Any, ...], EssaySource] = {}


def essay_source(split: str, source: str, data_dir: str | Path | None) -> EssaySource:
    """Book sentences for the essay haystack, token-counted once per process per argument set.

    ``source="auto"`` uses ``noise/gutenberg`` when a data folder has it, else labelled synthetic
    filler (logged); ``"real"`` requires the books and says where it looked when they are missing, and
    so does an explicit ``data_dir`` without them. The cache key holds the book folder as resolved now.
    """
    books = find_data_subdir("noise/gutenberg", data_dir) if source != "generated" else None
    key = (split, source, str(books.resolve()) if books else None)
    if key not in _ESSAY_CACHE:
        if source == "real" or books is not None or (source == "auto" and data_dir is not None):
            corpus = load_book_corpus(require_data_subdir("noise/gutenberg", data_dir), split)
            label = "niah-gutenberg"
        else:
            logger.warning("no noise/gutenberg folder found: NIAH essay haystack uses synthetic filler "
                           "(not benchmark data)")
            corpus, label = synthetic_corpus(), "niah-synthetic-noise"
        tokenizer = length_tokenizer()
        counts = cached_token_counts(corpus.sentences, tokenizer.name_or_path, lambda texts: count_tokens(tokenizer, texts))
        _ESSAY_CACHE[key] = EssaySource(corpus, TextTable.of(corpus.sentences, counts), label)
    return _ESSAY_CACHE[key]


class NiahEnv(RetrievalEnv):
    """``QRAG-NIAH-v0``: retrieve the needle sentences that hold the asked "special magic" values.

    ## Description
    RULER's needle-in-a-haystack (eight variants, see :data:`qrag_gym.data.niah.VARIANTS`): needle
    sentences "One of the special magic numbers for {key} is: {value}." sit at random depths of a
    haystack of about ``context_tokens`` tokens; the question asks the value(s) of one or more keys.
    One chunk per sentence. The supporting chunks are every needle of every asked key;
    ``info["answers"]`` lists the gold values (score a reader with
    :func:`qrag_gym.metrics.ruler_string_match`). Spaces, rewards and episode end are those of
    :class:`RetrievalEnv`; as in the Q-RAG authors' NIAH setting the episode terminates as soon as
    every needle asked for is selected.

    ## Arguments
    - ``variant``: "single_1", "single_2", "single_3", "multikey_1", "multikey_2", "multikey_3",
      "multivalue" or "multiquery".
    - ``context_tokens`` (default 4000): haystack + needles, measured with :func:`~qrag_gym.models.length_tokenizer`.
    - ``split``: "train" or "validation" books for the essay haystack (BABILong's book split).
    - ``haystack``, ``type_needle_k``, ``type_needle_v``, ``num_needle_k``, ``num_needle_v``,
      ``num_needle_q``: override the variant's RULER settings (``None`` keeps them).
    - ``max_steps`` (default 5, the authors' NIAH setting); every other keyword (``reward``, ``penalize_extra_steps``,
      ``never_terminate``, ``invalid_action_penalty``, ``embedder``, ``render_mode``) is
      passed through to :class:`RetrievalEnv`.
    - ``data_dir``: folder holding ``noise/gutenberg`` (else ``$QRAG_DATA_DIR``, else the user data
      folder); ``source``: "auto", "real" (books required) or "generated" (synthetic filler). Both only
      matter for the essay haystack: the repeat and needle haystacks are generated text.
    - ``max_chunks``: size of the action space; by default enough for the length asked.
    - Lengths are counted with :func:`~qrag_gym.models.length_tokenizer` whatever the ``embedder``.

    ## Version history
    - v0: first release.
    """

    def __init__(
        self,
        variant: str = "single_1",
        *,
        context_tokens: int = 4_000,
        split: str = "train",
        haystack: str | None = None,
        type_needle_k: str | None = None,
        type_needle_v: str | None = None,
        num_needle_k: int | None = None,
        num_needle_v: int | None = None,
        num_needle_q: int | None = None,
        data_dir: str | None = None,
        source: str = "auto",
        max_chunks: int | None = None,
        max_steps: int = 5,
        **kwargs: Any,
    ) -> None:
        self.config: NiahConfig = variant_config(
            variant, haystack=haystack, type_needle_k=type_needle_k, type_needle_v=type_needle_v,
            num_needle_k=num_needle_k, num_needle_v=num_needle_v, num_needle_q=num_needle_q)
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; choose one of {SOURCES}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        context_tokens = positive_int("context_tokens", context_tokens, MAX_CONTEXT_TOKENS)
        max_steps = positive_int("max_steps", max_steps, MAX_CHUNKS)
        if max_chunks is not None:
            max_chunks = positive_int("max_chunks", max_chunks, MAX_CHUNKS)
        if max_steps < self.config.num_supporting:
            raise ValueError(f"max_steps={max_steps} is below the {self.config.num_supporting} needles asked: "
                             "no episode could be completed")
        self.variant, self.split, self.context_tokens = variant, split, int(context_tokens)
        self._tokenizer = length_tokenizer()
        self._essay = essay_source(split, source, data_dir) if self.config.haystack == "essay" else None
        self._repeat_tokens = self._count(list(REPEAT_SENTENCES))
        if max_chunks is None:
            max_chunks = int(self.context_tokens / self._mean_sentence_tokens() * _CAPACITY_SLACK) + 64
            max_chunks = min(max_chunks + self.config.num_needles, MAX_CHUNKS)
        super().__init__(max_chunks, max_steps, **kwargs)

    def _count(self, texts: list[str]) -> np.ndarray:
        return count_tokens(self._tokenizer, texts)

    def _mean_sentence_tokens(self) -> float:
        """Mean tokens per haystack sentence, to size the action space before any episode exists."""
        if self._essay is not None:  # the median: one huge book "sentence" must not shrink the action space
            return max(float(np.median(self._essay.books.tokens)), 1.0)
        if self.config.haystack == "repeat":
            return float(self._repeat_tokens.mean())
        probe = np.random.default_rng(0)  # a fixed probe: sizing must not consume self.np_random
        keys = random_values(self.config.type_needle_k, probe, 64)
        values = random_values(self.config.type_needle_v, probe, 64)
        return float(self._count([needle_text(self.config, k, v) for k, v in zip(keys, values)]).mean())

    def _sample_episode(self) -> Episode:
        essay = self._essay
        source = essay.label if essay is not None else _SOURCE_LABELS[self.config.haystack]
        return build_episode(
            self.config, self.variant, self.np_random, self.context_tokens, self.max_chunks, self._count, source,
            corpus=essay.corpus if essay else None, books=essay.books if essay else None,
            repeat_tokens=self._repeat_tokens,
        )

    def _shortfall(self, episode: Episode) -> str | None:
        if episode.num_tokens < self.context_tokens:
            return f"document of {episode.num_tokens} tokens for context_tokens={self.context_tokens}"
        return None

    def _episode_info(self) -> dict[str, Any]:
        episode = self._require_episode()
        return {"answers": list(episode.meta.get("answers", [episode.answer])), "variant": self.variant,
                "split": self.split, "split_rule": f"books: {BOOK_SPLIT_RULE}"}


__all__ = ["NiahEnv", "VARIANTS", "essay_source"]
