"""Haystack text: real book sentences (BABILong samples PG19 the same way) or labelled synthetic filler.

A noise source is a flat list of sentences plus book boundaries. ``sample_runs`` draws contiguous runs
of up to ``run_length`` sentences from random books at random offsets, as BABILong's sentence sampler
does, vectorised so a 10M-token haystack (about 400,000 sentences) is a few numpy calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

VALIDATION_BOOK_EVERY = 6
"""Book ``i`` of the sorted file list is held out for validation when ``i % 6 == 5`` (3 of 18 here)."""

BOOK_SPLIT_RULE = f"sorted book index % {VALIDATION_BOOK_EVERY} == {VALIDATION_BOOK_EVERY - 1} -> validation"

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z])")
_MIN_WORDS = 3
MAX_SENTENCE_WORDS = 2_000
"""Longer "sentences" (a book without sentence breaks) are cut into pieces of this many words, so one
chunk can never hold a whole book. The bound sits above the longest sentence of the shipped books (1,734
words, a Whitman catalogue), so their sentences, and hence every seeded episode, are unchanged."""
_ABBREVIATION = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Mme|Mlle|Capt|Col|Gen|Rev)\.$")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences: paragraphs are re-joined, then cut after . ! ? before a capital.

    Fragments under three words (chapter headings, "Yes.") are dropped: they are not useful noise.
    Sentences over :data:`MAX_SENTENCE_WORDS` words are cut into pieces of at most that many.
    """
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        pending = ""
        for piece in _SENTENCE_END.split(flat):
            pending = f"{pending} {piece}".strip()
            if _ABBREVIATION.search(pending):
                continue  # "Mr." ends no sentence: glue the next piece on
            if len(pending.split()) >= _MIN_WORDS:
                sentences.extend(_capped(pending))
            pending = ""
        if len(pending.split()) >= _MIN_WORDS:
            sentences.extend(_capped(pending))
    return sentences


def _capped(sentence: str) -> list[str]:
    """``sentence`` itself, or its consecutive pieces of :data:`MAX_SENTENCE_WORDS` words."""
    words = sentence.split()
    if len(words) <= MAX_SENTENCE_WORDS:
        return [sentence]
    return [" ".join(words[i:i + MAX_SENTENCE_WORDS]) for i in range(0, len(words), MAX_SENTENCE_WORDS)]


class NoiseCorpusError(ValueError):
    """A noise folder yields no usable sentences; the message names the folder."""


@dataclass(frozen=True)
class NoiseCorpus:
    """Sentences of several books, concatenated; ``book_starts[i]`` is where book ``i`` begins."""

    sentences: tuple[str, ...]
    book_starts: np.ndarray
    book_names: tuple[str, ...]
    source: str

    @property
    def book_lengths(self) -> np.ndarray:
        return np.diff(np.append(self.book_starts, len(self.sentences)))

    def sample_runs(self, rng: np.random.Generator, count: int, run_length: int = 100) -> np.ndarray:
        """Indices of ``count`` sentences made of contiguous runs from random books and offsets."""
        if count <= 0:
            return np.zeros(0, dtype=np.int64)
        lengths = self.book_lengths
        parts: list[np.ndarray] = []
        have = 0
        while have < count:
            runs = max(1, (count - have) // run_length + 1)
            books = rng.integers(0, len(lengths), size=runs)
            starts = (rng.random(runs) * lengths[books]).astype(np.int64)
            takes = np.minimum(run_length, lengths[books] - starts)
            offsets = np.arange(run_length)[None, :]
            keep = offsets < takes[:, None]
            index = (self.book_starts[books] + starts)[:, None] + offsets
            parts.append(index[keep])
            have += int(keep.sum())
        return np.concatenate(parts)[:count]


    def sample_tokens(self, rng: np.random.Generator, need: int, tokens: np.ndarray, limit: int) -> np.ndarray:
        """Indices of contiguous runs adding up to at least ``need`` tokens (at most ``limit`` sentences).

        ``tokens[i]`` is the token count of sentence ``i``. The cut falls on the first sentence that
        reaches the budget, so a haystack overshoots by less than one sentence.
        """
        if need <= 0:
            return np.zeros(0, dtype=np.int64)
        mean = float(tokens.mean())  # a first guess only: the loop below draws until ``need`` is met
        index = self.sample_runs(rng, min(int(need / mean * 1.2) + 64, limit))
        while index.size < limit and int(tokens[index].sum()) < need:  # a run of short sentences
            more = self.sample_runs(rng, min(int(need / mean * 0.2) + 64, limit - index.size))
            index = np.concatenate([index, more])
        return index[: int(np.searchsorted(np.cumsum(tokens[index]), need)) + 1]


def load_book_corpus(folder: Path, split: str = "all") -> NoiseCorpus:
    """Read every ``*.txt`` in ``folder`` as one book; ``split`` picks 'train', 'validation' or 'all' books."""
    return _load_book_corpus_cached(str(Path(folder).resolve()), split)


@lru_cache(maxsize=8)
def _load_book_corpus_cached(folder: str, split: str) -> NoiseCorpus:
    if split not in ("train", "validation", "all"):
        raise ValueError(f"unknown noise split {split!r}; choose 'train', 'validation' or 'all'")
    files = sorted(Path(folder).glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no .txt books in noise folder {folder}")
    chosen = [
        f for i, f in enumerate(files)
        if split == "all" or ((i % VALIDATION_BOOK_EVERY == VALIDATION_BOOK_EVERY - 1) == (split == "validation"))
    ]
    sentences: list[str] = []
    starts: list[int] = []
    names: list[str] = []
    for path in chosen:
        book = split_sentences(path.read_text(encoding="utf-8", errors="replace"))
        if book:
            starts.append(len(sentences))
            names.append(path.stem)
            sentences.extend(book)
    if not sentences:
        raise NoiseCorpusError(
            f"noise folder {folder}: its {len(chosen)} {split} book(s) of {len(files)} .txt files hold no sentence of "
            f"{_MIN_WORDS}+ words; put real prose there (plain-text books, one per .txt file)")
    return NoiseCorpus(tuple(sentences), np.asarray(starts, dtype=np.int64), tuple(names), source="gutenberg")


_SUBJECTS = ("The old clock", "A quiet river", "The autumn wind", "Every lantern", "The narrow road",
             "A distant bell", "The grey harbour", "The orchard", "A patient crowd", "The long corridor")
_VERBS = ("hummed softly", "wandered past the hills", "waited through the evening", "shone over the fields",
          "turned toward the sea", "faded before dawn", "rested beside the wall", "echoed across the valley")
_TAILS = ("while nobody noticed.", "as the season changed.", "for reasons no one recalled.",
          "under a pale sky.", "long after the fair had ended.", "and then fell silent.")


@lru_cache(maxsize=1)
def synthetic_corpus() -> NoiseCorpus:
    """Labelled synthetic filler (480 sentences, one 'book') for machines without book data.

    It only lets the environment run offline; benchmark tables are never made from it.
    """
    sentences = tuple(f"{s} {v} {t}" for s in _SUBJECTS for v in _VERBS for t in _TAILS)
    return NoiseCorpus(sentences, np.zeros(1, dtype=np.int64), ("synthetic",), source="synthetic-noise")
