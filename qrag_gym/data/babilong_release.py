"""The official BABILong release (Hugging Face dataset ``RMT-team/babilong``) as retrieval episodes.

Why: episodes assembled here from bAbI + Gutenberg are BABILong-*like*; numbers comparable with the
BABILong leaderboard need the release's own pre-built haystacks. The release has no supporting-fact
ids, so they are recovered here, and a sample whose facts cannot be located is reported, never guessed.

Release format (what the loader reads; sources in the README's "Getting the data" notes):
- files ``data/<task>/<length>.json`` (``data/qa1/4k.json``), one per task and length, as the dataset
  card's configs list them (config = length, split = task). Each file is one JSON array of objects
  with string fields ``input`` (the haystack), ``question`` and ``target`` (the answer); BABILong's
  ``data/create_tasks.py`` writes them with ``json.dump`` of that list, 100 samples per file.
- a haystack is PG19 sentences with the story's facts inserted between them, in story order, by
  token concatenation (GPT-2 tokenizer, decoded again): a fact's text appears verbatim, though not
  always with a space before it.

Matching rule (documented in ``info["split_rule"]``): a release sample is paired with the official bAbI
*test* questions of the same task with the same question and answer (whitespace-stripped). A candidate
story fits when each of its facts, in order, occurs verbatim in the haystack after the previous one
(first such occurrence; no word-boundary test, since a fact may follow a noise sentence that the
builder cut mid-word). Among fitting candidates the one with the most facts wins
(an earlier question of the same story with the same answer is a prefix that also fits); if fitting
candidates with that many facts disagree on facts or supporting ids, the sample is ambiguous. A sample
with no fitting or an ambiguous candidate is unmatched: skipped and counted (or an error with
``strict=True``), never labelled by a guess.

Chunks: every located fact is one chunk (its exact text); the text between facts is cut into sentences
with :func:`~qrag_gym.data.noise.split_sentences`, as the book noise of the assembled env is, after a
space is put back where a sentence end is glued to the next sentence (:func:`split_noise`).

Ids: a file's distinct chunk texts and distinct questions are two tables of one :class:`~qrag_gym.corpus.Corpus`
(:meth:`ReleaseSet.corpus`), so a release episode carries ``chunk_ids`` and a ``question_id`` like every other
BABILong episode, and its features are gathered by id from that file's feature tables (:mod:`qrag_gym.features`).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from qrag_gym.data.babi import BabiSample, check_task, load_babi_task
from qrag_gym.data.noise import split_sentences
from qrag_gym.data.paths import candidate_data_dirs, find_data_subdir
from qrag_gym.data.sources import BABI_DIR
from qrag_gym.corpus import Corpus, TextTable
from qrag_gym.episode import Episode

REPO_ID = "RMT-team/babilong"
RELEASE_DIR = "babilong"
"""Data-folder subdirectory holding the release as the hub lays it out (``babilong/data/qa1/4k.json``)."""
LENGTHS = ("0k", "1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k", "256k", "512k", "1M")
"""Length configs BABILong builds (``names`` in booydar/babilong ``data/create_tasks.py``)."""
SOURCE_LABEL = "babilong-release"
MATCH_RULE = ("BABILong release sample; supporting facts recovered from the official bAbI test question with the "
              "same question and answer whose facts occur in the haystack in order (most facts wins; ties that "
              "disagree are unmatched and skipped)")


class ReleaseFormatError(ValueError):
    """A release file is not a JSON array of ``{input, question, target}`` objects; the message names the file."""


class UnmatchedSampleError(ValueError):
    """``strict=True`` and a release sample's facts could not be located; the message says which and why."""


def release_file(root: str | os.PathLike[str], task: str, length: str) -> Path:
    """``<root>/data/<task>/<length>.json``: where the hub (and ``qrag-data fetch babilong``) keeps one file."""
    return Path(root) / "data" / check_task(task) / f"{check_length(length)}.json"


def check_length(length: str) -> str:
    """Return ``length`` if it is one of the release's configs, else raise naming them."""
    if length not in LENGTHS:
        raise ValueError(f"unknown BABILong release length {length!r}; choose one of {', '.join(LENGTHS)}")
    return length


def require_release_file(task: str, length: str, data_dir: str | os.PathLike[str] | None) -> Path:
    """The release file of ``task`` at ``length``, or an error naming every path tried and the fetch command."""
    folder = find_data_subdir(RELEASE_DIR, data_dir)
    if folder is not None and release_file(folder, task, length).is_file():
        return release_file(folder, task, length)
    tried = "\n".join(f"  - {release_file(root / RELEASE_DIR, task, length)} ({why})"
                      for why, root in candidate_data_dirs(data_dir))
    raise FileNotFoundError(
        f"BABILong release file for {task} at {length} not found. Searched, in order:\n{tried}\n"
        f"Run `qrag-data fetch babilong --lengths {length}` (add --to DIR for another data folder), or pass "
        f"data_dir=... / set $QRAG_DATA_DIR to the folder that holds '{RELEASE_DIR}/'."
    )


@dataclass(frozen=True)
class ReleaseRow:
    """One sample of a release file, as stored."""

    input: str
    question: str
    target: str


def read_release_file(path: str | os.PathLike[str]) -> list[ReleaseRow]:
    """Parse one release file (a JSON array of objects with ``input``, ``question``, ``target``)."""
    try:
        with open(path, encoding="utf-8") as handle:
            rows = json.load(handle)
    except ValueError as err:
        raise ReleaseFormatError(f"{path} is not valid JSON ({err}); delete it and run "
                                 f"`qrag-data fetch babilong` again") from err
    if not isinstance(rows, list):
        raise ReleaseFormatError(f"{path}: expected a JSON array of samples, got {type(rows).__name__}")
    out: list[ReleaseRow] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("input", "question", "target")):
            raise ReleaseFormatError(f"{path}: sample {i} lacks string fields input, question and target")
        out.append(ReleaseRow(row["input"], row["question"], row["target"]))
    return out


def locate_facts(haystack: str, facts: tuple[str, ...]) -> tuple[list[int], int]:
    """Start offsets of ``facts`` found in order (first occurrence after the previous fact), and how many were found."""
    starts: list[int] = []
    position = 0
    for fact in facts:
        at = haystack.find(fact, position)
        if at < 0:
            break
        starts.append(at)
        position = at + len(fact)
    return starts, len(starts)


@dataclass(frozen=True)
class Unmatched:
    """A release sample left out, with the reason (shown by :meth:`ReleaseSet.summary`)."""

    index: int
    reason: str


@dataclass(frozen=True)
class Matched:
    """A release sample with its bAbI test question and the offsets of that story's facts in the haystack."""

    index: int
    sample: BabiSample
    starts: tuple[int, ...]


def match_row(index: int, row: ReleaseRow, candidates: list[BabiSample]) -> Matched | Unmatched:
    """Pair one release sample with a bAbI test question by the module's matching rule."""
    if not candidates:
        return Unmatched(index, f"no official test question {row.question.strip()!r} with answer {row.target.strip()!r}")
    fitting: list[tuple[BabiSample, list[int]]] = []
    best: tuple[int, BabiSample] | None = None
    for sample in candidates:
        starts, found = locate_facts(row.input, sample.facts)
        if found == len(sample.facts):
            fitting.append((sample, starts))
        elif best is None or found > best[0]:
            best = (found, sample)
    if not fitting:
        assert best is not None
        found, closest = best
        return Unmatched(index, f"none of {len(candidates)} test stories with this question and answer has all its "
                                f"facts in the haystack in order (closest: story {closest.story_index}, {found} of "
                                f"{len(closest.facts)}; first missing {closest.facts[found]!r})")
    most = max(len(sample.facts) for sample, _ in fitting)
    top = [(sample, starts) for sample, starts in fitting if len(sample.facts) == most]
    if len({(sample.facts, sample.supporting) for sample, _ in top}) > 1:
        stories = ", ".join(str(sample.story_index) for sample, _ in top[:5])
        return Unmatched(index, f"ambiguous: test stories {stories} all fit with {most} facts but differ")
    sample, starts = top[0]
    return Matched(index, sample, tuple(starts))


_GLUED_END = re.compile(r"([a-z][.!?][\"'\u201d\u2019)\]]?)(?=[A-Z\"\u201c])")
"""A sentence end glued to the next capital ("usual.I wonder"): token concatenation drops the space."""


def split_noise(text: str) -> list[str]:
    """Sentences of the noise between facts: a space is put back at glued sentence ends, then
    :func:`split_sentences` cuts (a lower-case letter must precede the stop, so "U.S.A" stays whole)."""
    return split_sentences(_GLUED_END.sub(r"\1 ", text))


def chunk_haystack(haystack: str, facts: tuple[str, ...], starts: tuple[int, ...]) -> tuple[list[str], list[int]]:
    """Sentence chunks of ``haystack`` with each located fact as its own chunk; returns chunks and fact chunk ids."""
    chunks: list[str] = []
    fact_ids: list[int] = []
    position = 0
    for fact, start in zip(facts, starts):
        chunks.extend(split_noise(haystack[position:start]))
        fact_ids.append(len(chunks))
        chunks.append(fact)
        position = start + len(fact)
    chunks.extend(split_noise(haystack[position:]))
    return chunks, fact_ids


def build_episode(row: ReleaseRow, match: Matched, task: str, length: str, num_tokens: int = 0,
                  chunked: tuple[Sequence[str], Sequence[int]] | None = None) -> Episode:
    """The :class:`Episode` of a matched release sample (``num_tokens`` is filled in by the env, which owns the tokenizer).
    ``chunked``: its chunks and the chunk index of each story fact, when known (else cut from the haystack)."""
    sample = match.sample
    chunks, fact_ids = chunked if chunked is not None else chunk_haystack(row.input, sample.facts, match.starts)
    return Episode(
        chunks=tuple(chunks),
        question=row.question.strip(),
        answer=row.target.strip(),
        supporting_ids=tuple(sorted(fact_ids[i] for i in sample.supporting)),
        source=SOURCE_LABEL,
        task=task,
        num_tokens=num_tokens,
        meta={"release_length": length, "release_index": match.index, "story_index": sample.story_index,
              "num_facts": len(sample.facts)},
    )


@dataclass(frozen=True)
class ReleaseIds:
    """A release file's corpus and, per matched sample (file order), its chunks' ids, the chunk index of each of its
    story's facts and its question's id."""

    corpus: Corpus
    chunk_ids: tuple[np.ndarray, ...]
    fact_chunks: tuple[tuple[int, ...], ...]
    question_ids: np.ndarray


@dataclass
class ReleaseSet:
    """The matched samples of one release file and the ones left out, in file order."""

    task: str
    length: str
    path: Path
    rows: list[ReleaseRow]
    matched: list[Matched]
    unmatched: list[Unmatched] = field(default_factory=list)
    _ids: ReleaseIds | None = field(default=None, repr=False)

    def episode(self, position: int, num_tokens: int = 0) -> Episode:
        """Episode of the ``position``-th matched sample (file order); once :meth:`corpus` was built, read by id (its
        texts from the corpus, the haystack not cut again) and carrying its ids."""
        match = self.matched[position]
        row = self.rows[match.index]
        if self._ids is None:
            return build_episode(row, match, self.task, self.length, num_tokens)
        ids = self._ids.chunk_ids[position]
        episode = build_episode(row, match, self.task, self.length, num_tokens,
                                chunked=(self._ids.corpus.texts(ids), self._ids.fact_chunks[position]))
        return replace(episode, chunk_ids=ids, corpus=self._ids.corpus, question_id=int(self._ids.question_ids[position]))

    def corpus(self, count: Callable[[Sequence[str]], np.ndarray]) -> Corpus:
        """The file's corpus: its distinct chunk texts (first seen first, walking the samples in file order), then its
        distinct questions; ``count`` gives token counts of texts (the env's length tokenizer). Built once per file.

        Why: the same book sentence recurs across a file's haystacks; by id its features are encoded once and
        gathered afterwards, like the assembled env's books, instead of being looked up by text per episode.
        """
        if self._ids is None:
            text_id: dict[str, int] = {}
            chunk_ids, fact_chunks = [], []
            for match in self.matched:
                chunks, facts = chunk_haystack(self.rows[match.index].input, match.sample.facts, match.starts)
                chunk_ids.append(np.fromiter((text_id.setdefault(text, len(text_id)) for text in chunks), dtype=np.int64,
                                             count=len(chunks)))
                fact_chunks.append(tuple(facts))
            questions = sorted({self.rows[match.index].question.strip() for match in self.matched})
            question_id = {question: len(text_id) + index for index, question in enumerate(questions)}
            texts = list(text_id)
            corpus = Corpus((TextTable.of(texts, count(texts)), TextTable.of(questions, count(questions))))
            ids = np.array([question_id[self.rows[match.index].question.strip()] for match in self.matched], dtype=np.int64)
            self._ids = ReleaseIds(corpus, tuple(chunk_ids), tuple(fact_chunks), ids)
        return self._ids.corpus

    def max_chunks(self) -> int:
        """Chunks of the longest matched document (the env's action space); needs :meth:`corpus` built."""
        if self._ids is None:
            raise RuntimeError("ReleaseSet.max_chunks() reads the ids: build them first with corpus(count)")
        return max((len(ids) for ids in self._ids.chunk_ids), default=0)

    def summary(self) -> str:
        """One line per file, plus a line per unmatched sample (they are few; every one is shown)."""
        head = (f"{self.task} {self.length} ({self.path}): {len(self.rows)} samples, {len(self.matched)} matched, "
                f"{len(self.unmatched)} skipped")
        return "\n".join([head, *(f"  sample {u.index}: {u.reason}" for u in self.unmatched)])


def load_release(task: str, length: str, data_dir: str | os.PathLike[str] | None = None, *,
                 release_path: str | os.PathLike[str] | None = None, strict: bool = False) -> ReleaseSet:
    """Read and match one release file against the official bAbI test file of ``task``.

    ``release_path`` reads that file instead of ``<data>/babilong/data/<task>/<length>.json``;
    ``strict`` raises :class:`UnmatchedSampleError` on the first unmatched sample instead of skipping it.
    """
    check_task(task)
    check_length(length)
    path = Path(release_path) if release_path is not None else require_release_file(task, length, data_dir)
    rows = read_release_file(path)
    babi_dir = find_data_subdir(BABI_DIR, data_dir)
    if babi_dir is None:
        raise FileNotFoundError(f"the BABILong release's supporting facts are recovered from the official bAbI test "
                                f"file, and no '{BABI_DIR}' folder was found: run `qrag-data fetch babi`, or pass "
                                f"data_dir=... / set $QRAG_DATA_DIR")
    by_question: dict[tuple[str, str], list[BabiSample]] = defaultdict(list)
    for sample in load_babi_task(babi_dir, task, "test"):
        by_question[(sample.question.strip(), sample.answer.strip())].append(sample)
    release = ReleaseSet(task, length, path, rows, [])
    for index, row in enumerate(rows):
        result = match_row(index, row, by_question.get((row.question.strip(), row.target.strip()), []))
        if isinstance(result, Unmatched):
            if strict:
                raise UnmatchedSampleError(f"{path}: sample {index}: {result.reason}")
            release.unmatched.append(result)
        else:
            release.matched.append(result)
    return release


__all__ = ["LENGTHS", "REPO_ID", "RELEASE_DIR", "ReleaseSet", "load_release", "locate_facts", "read_release_file",
           "release_file"]
