"""BABILong: bAbI facts hidden, in order, at random positions among book sentences.

The assembly follows BABILong: one sample per bAbI question, the story's facts up to that question
keep their order and take uniformly random slots among contiguous runs of noise sentences; one chunk
is one sentence. Lengths are set in tokens of one fixed tokenizer (measured, not guessed; see
:func:`~qrag_gym.models.length_tokenizer`) or in
sentences, as in the paper's table :data:`PAPER_SENTENCES`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qrag_gym.data.babilong_release import (MATCH_RULE, REPO_ID, ReleaseSet, check_length, load_release,
                                            require_release_file)
from qrag_gym.data.babi import SPLIT_RULE, SPLITS, TASKS, BabiSample, check_task, load_split, split_samples
from qrag_gym.data.noise import BOOK_SPLIT_RULE, NoiseCorpus, load_book_corpus, synthetic_corpus
from qrag_gym.data.paths import find_data_subdir, require_data_subdir
from qrag_gym.cache import cached_token_counts
from qrag_gym.corpus import Corpus, TextTable
from qrag_gym.models import count_tokens, length_tokenizer
from qrag_gym.envs.retrieval import QuestionSetEnv
from qrag_gym.episode import Episode
from qrag_gym.validation import MAX_CHUNKS, MAX_CONTEXT_TOKENS, MAX_NUM_SENTENCES, positive_int

logger = logging.getLogger(__name__)

PAPER_SENTENCES = {"1K": 50, "4K": 160, "32K": 1_200, "128K": 4_600, "1M": 40_000, "10M": 400_000}
"""num_sentences the paper uses for each context length (about 20-25 tokens per sentence)."""

SOURCES = ("auto", "real", "generated", "real+generated", "babilong")
RELEASE_SOURCE = "babilong"
"""``source="babilong"``: the official BABILong release's pre-built haystacks (see :mod:`qrag_gym.data.babilong_release`)."""
GENERATED_STORIES = 2_000
AUGMENT_QUESTIONS = 10_000
"""``source="real+generated"`` adds the training stories of this many generated questions (en-10k's count per
task) to the real training stories."""
AUGMENT_STORY_OFFSET = 1_000_000
"""Generated stories added to real ones are numbered from here, so a ``story_index`` names one story."""
_CAPACITY_SLACK = 1.5


@dataclass
class BabilongSource:
    """The samples and noise one split of one task draws from, as one corpus of ids.

    ``corpus`` holds three tables: the books' sentences (ids ``0..len(noise)-1``, shared by every task over
    the same books), the distinct story facts and the distinct questions, both sorted; ``fact_ids[i]`` are
    sample ``i``'s facts as ids and ``question_ids[i]`` its question's id. Token counts (the fixed length
    tokenizer's) are counted once per table, never per reset.
    """

    samples: list[BabiSample]
    noise: NoiseCorpus
    corpus: Corpus
    fact_ids: list[np.ndarray]
    question_ids: np.ndarray
    label: str

    @property
    def noise_tokens(self) -> np.ndarray:
        return self.corpus.tables[0].tokens

    @property
    def max_facts(self) -> int:
        return max(len(s.facts) for s in self.samples)


def _source_corpus(samples: list[BabiSample], noise: NoiseCorpus,
                   tokenizer) -> tuple[Corpus, list[np.ndarray], np.ndarray]:
    """The books, facts and questions tables of a source, each sample's facts as corpus ids and each sample's
    question id."""
    count = lambda texts: count_tokens(tokenizer, texts)  # noqa: E731
    books = TextTable.of(noise.sentences, cached_token_counts(noise.sentences, tokenizer.name_or_path, count))
    facts = sorted({fact for sample in samples for fact in sample.facts})
    questions = sorted({sample.question for sample in samples})
    corpus = Corpus((books, TextTable.of(facts, count(facts)), TextTable.of(questions, count(questions))))
    fact_id = {fact: len(books) + index for index, fact in enumerate(facts)}
    question_id = {question: len(books) + len(facts) + index for index, question in enumerate(questions)}
    fact_ids = [np.fromiter((fact_id[f] for f in s.facts), dtype=np.int64, count=len(s.facts)) for s in samples]
    return corpus, fact_ids, np.array([question_id[s.question] for s in samples], dtype=np.int64)


def load_source(task: str, split: str, source: str, data_dir: str | Path | None) -> BabilongSource:
    """Resolve real data (``babi/en-10k`` + ``noise/gutenberg``) or the offline generator.

    ``source="auto"`` takes real data when the data folder is found and falls back to generated
    stories with synthetic noise otherwise (logged, and labelled in every episode's ``source``). An
    explicit ``data_dir`` is never replaced by generated data: what it lacks is an error.
    ``split="test"`` is the official bAbI test file with the held-out (validation) books; it has no
    generated stand-in. ``source="real+generated"`` (training only) is the real training stories plus the
    training stories of :data:`AUGMENT_QUESTIONS` generated questions, among the same real books: more
    stories for tasks whose file is small (qa3: 2,000 questions from 385 stories), while validation and
    test stay real.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {SOURCES}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    check_task(task)
    if source == "real+generated" and split != "train":
        raise ValueError(f"source='real+generated' adds generated stories to training only; split={split!r} "
                         "must use source='real' (validation and test are real stories)")
    tokenizer = length_tokenizer()
    babi_dir = find_data_subdir("babi/en-10k", data_dir) if source == "auto" else None
    if source in ("real", "real+generated") or babi_dir is not None or (source == "auto" and data_dir is not None):
        babi_dir = require_data_subdir("babi/en-10k", data_dir)
        samples = load_split(babi_dir, task, split)
        books = "validation" if split == "test" else split  # the test stories hide among held-out books
        noise = load_book_corpus(require_data_subdir("noise/gutenberg", data_dir), books)
        label = "babi-real+gutenberg"
        if source == "real+generated":
            samples = samples + _generated_training_samples(task)
            label = "babi-real+generated+gutenberg"
    elif split == "test":
        raise FileNotFoundError("split='test' reads the official bAbI test files (babi/en-10k/<task>_test.txt) "
                                "and no bAbI data folder was found: pass data_dir=... or set $QRAG_DATA_DIR")
    else:
        from qrag_gym.data.babi_generator import generate_babi_samples  # only needed offline

        logger.warning("no bAbI data folder found: using generated stories and synthetic noise (not benchmark data)")
        noise = synthetic_corpus()
        offset = 0 if split == "train" else 1  # distinct generator streams per split
        pool = generate_babi_samples(task, np.random.default_rng(offset), GENERATED_STORIES)
        samples = split_samples(pool, split)
        label = "babi-generated+synthetic-noise"
    corpus, fact_ids, question_ids = _source_corpus(samples, noise, tokenizer)
    return BabilongSource(samples, noise, corpus, fact_ids, question_ids, label)


def _generated_training_samples(task: str) -> list[BabiSample]:
    """The training-split stories of :data:`AUGMENT_QUESTIONS` generated questions (seed 2: a stream of its
    own), renumbered from :data:`AUGMENT_STORY_OFFSET`."""
    from qrag_gym.data.babi_generator import generate_babi_samples

    pool = generate_babi_samples(task, np.random.default_rng(2), AUGMENT_QUESTIONS)
    return [replace(sample, story_index=AUGMENT_STORY_OFFSET + sample.story_index)
            for sample in split_samples(pool, "train")]


_SOURCE_CACHE: dict[tuple[Any, ...], BabilongSource] = {}
_RELEASE_CACHE: dict[tuple[Any, ...], ReleaseSet] = {}


def cached_release(task: str, length: str, data_dir: str | Path | None) -> ReleaseSet:
    """:func:`~qrag_gym.data.babilong_release.load_release`, once per process per file (vector envs share it).

    Unmatched samples are logged once here, with every reason, when the file is first read.
    """
    path = require_release_file(task, length, data_dir)
    key = (task, length, str(path.resolve()), path.stat().st_mtime_ns, str(find_data_subdir("babi/en-10k", data_dir)))
    if key not in _RELEASE_CACHE:
        release = load_release(task, length, data_dir, release_path=path)
        if release.unmatched:
            logger.warning("BABILong release: %s", release.summary())
        _RELEASE_CACHE[key] = release
    return _RELEASE_CACHE[key]


def cached_source(task: str, split: str, source: str, data_dir: str | Path | None) -> BabilongSource:
    """:func:`load_source`, once per process per argument set (vector envs share one copy).

    The key holds every data folder as resolved now (stories and books), so a changed ``$QRAG_DATA_DIR``
    or another ``data_dir`` with other books is honoured.
    """
    folders = [] if source == "generated" else [find_data_subdir(sub, data_dir) for sub in ("babi/en-10k", "noise/gutenberg")]
    key = (task, split, source, *(str(f.resolve()) if f else None for f in folders))
    if key not in _SOURCE_CACHE:
        _SOURCE_CACHE[key] = load_source(task, split, source, data_dir)
    return _SOURCE_CACHE[key]


def assemble(
    index: int,
    source: BabilongSource,
    rng: np.random.Generator,
    context_tokens: int | None,
    num_sentences: int | None,
    max_chunks: int,
) -> Episode:
    """Hide sample ``index``'s facts among noise: ``num_sentences`` chunks, or up to ``context_tokens``
    tokens. The document is built as an array of corpus ids; its texts are read from the corpus by id."""
    sample, fact_ids = source.samples[index], source.fact_ids[index]
    n_facts = len(sample.facts)
    budget_chunks = max_chunks - n_facts
    fact_tokens = source.corpus.tokens(fact_ids)
    if num_sentences is not None:
        noise_index = source.noise.sample_runs(rng, min(max(num_sentences - n_facts, 0), budget_chunks))
    else:
        need = int(context_tokens) - int(fact_tokens.sum())
        noise_index = source.noise.sample_tokens(rng, need, source.noise_tokens, budget_chunks)
    total = n_facts + noise_index.size
    fact_slots = np.sort(rng.choice(total, size=n_facts, replace=False))
    is_fact = np.zeros(total, dtype=bool)
    is_fact[fact_slots] = True
    chunk_ids = np.empty(total, dtype=np.int64)
    chunk_ids[fact_slots] = fact_ids
    chunk_ids[~is_fact] = noise_index  # book sentence i is corpus id i
    tokens = int(fact_tokens.sum() + source.noise_tokens[noise_index].sum())
    return Episode(
        chunks=source.corpus.texts(chunk_ids),
        question=sample.question,
        answer=sample.answer,
        supporting_ids=tuple(sorted(int(fact_slots[i]) for i in sample.supporting)),
        source=source.label,
        task=sample.task,
        num_tokens=tokens,
        meta={"story_index": sample.story_index, "num_facts": n_facts},
        chunk_ids=chunk_ids,
        corpus=source.corpus,
        question_id=int(source.question_ids[index]),
    )


class BabilongEnv(QuestionSetEnv):
    """``QRAG-Babilong-v0``: find the supporting facts of a bAbI question hidden in book text.

    ## Description
    One episode = one bAbI question (tasks qa1..qa5) whose story facts are scattered, in order, among
    noise sentences from public-domain books; one chunk per sentence. See :class:`RetrievalEnv` for
    spaces, rewards and episode end.

    ## Arguments
    - ``task``: "qa1".."qa5".
    - ``context_tokens`` (default 4000) or ``num_sentences`` (the paper's unit; see
      :data:`PAPER_SENTENCES`); give at most one.
    - ``split``: "train", "validation" (held-out stories of the training file *and* held-out books;
      the rule is in ``info["split_rule"]``) or "test" (the official bAbI test stories, e.g.
      ``babi/en-10k/qa1_single-supporting-fact_test.txt``, with the held-out books). Tune on
      validation, report on test.
    - ``max_steps`` (default 6, the authors' BabiLong setting); every other keyword (``reward``, ``penalize_extra_steps``,
      ``never_terminate``, ``invalid_action_penalty``, ``embedder``, ``render_mode``) is
      passed through to :class:`RetrievalEnv`.
    - ``data_dir``: folder holding ``babi/en-10k`` and ``noise/gutenberg`` (else ``$QRAG_DATA_DIR``,
      else the user data folder); ``source``: "auto", "real", "generated", "real+generated" (training only:
      the real stories plus generated ones, see :func:`load_source`) or "babilong".
    - ``source="babilong"`` with ``release_length`` ("0k".."1M", default "4k"): the official BABILong
      release's haystacks (``<data>/babilong/data/<task>/<length>.json``, from ``qrag-data fetch babilong``)
      with supporting facts recovered from the official bAbI test file; questions in file order,
      unmatched samples skipped and counted (``env.unwrapped.release.summary()``). The haystack is
      fixed, so ``context_tokens``/``num_sentences`` do not apply, and ``split`` can only be "test".
    - ``max_chunks``: size of the action space; by default enough for the length asked.
    - Lengths are counted with :func:`~qrag_gym.models.length_tokenizer` whatever the ``embedder``.

    ## Version history
    - v0: first release.
    """

    def __init__(
        self,
        task: str = "qa1",
        *,
        context_tokens: int | None = None,
        num_sentences: int | None = None,
        split: str | None = None,
        data_dir: str | None = None,
        source: str = "auto",
        max_chunks: int | None = None,
        release_length: str | None = None,
        max_steps: int = 6,
        **kwargs: Any,
    ) -> None:
        self._tokenizer = length_tokenizer()
        self.release: ReleaseSet | None = None
        if source == RELEASE_SOURCE:
            self._init_release(task, context_tokens, num_sentences, split, data_dir, release_length, max_chunks)
            super().__init__(self.max_chunks, max_steps, **kwargs)
            return
        if release_length is not None:
            raise ValueError(f"release_length={release_length!r} only applies to source='babilong' (the BABILong "
                             f"release); source={source!r} builds its own haystacks from context_tokens/num_sentences")
        split = "train" if split is None else split
        if context_tokens is not None and num_sentences is not None:
            raise ValueError("give context_tokens or num_sentences, not both")
        if context_tokens is None and num_sentences is None:
            context_tokens = 4_000
        if context_tokens is not None:
            context_tokens = positive_int("context_tokens", context_tokens, MAX_CONTEXT_TOKENS)
        if num_sentences is not None:
            num_sentences = positive_int("num_sentences", num_sentences, MAX_NUM_SENTENCES)
        if max_chunks is not None:
            max_chunks = positive_int("max_chunks", max_chunks, MAX_CHUNKS)
        self.task, self.split = check_task(task), split
        self.context_tokens, self.num_sentences = context_tokens, num_sentences
        self._source = cached_source(task, split, source, data_dir)
        if not self._source.samples:
            raise ValueError(f"no {split} samples for {task}")
        if max_chunks is None:
            if num_sentences is not None:
                noise_chunks = num_sentences
            else:  # the median: one huge "sentence" must not shrink the action space (a mean did)
                typical = max(float(np.median(self._source.noise_tokens)), 1.0)
                noise_chunks = int(context_tokens / typical * _CAPACITY_SLACK) + 64
            max_chunks = min(noise_chunks + self._source.max_facts, MAX_CHUNKS)
        elif max_chunks < self._source.max_facts:  # else the first long story fails at reset, not here
            raise ValueError(f"max_chunks={max_chunks} cannot hold the {self._source.max_facts} facts of the longest "
                             f"{task} {split} story; give at least {self._source.max_facts} or leave it unset")
        super().__init__(max_chunks, max_steps, **kwargs)

    def _init_release(self, task: str, context_tokens: int | None, num_sentences: int | None, split: str | None,
                      data_dir: str | None, release_length: str | None, max_chunks: int | None) -> None:
        """Read the release file (shared per process) and size the action space to its longest document."""
        if context_tokens is not None or num_sentences is not None:
            given = "context_tokens" if context_tokens is not None else "num_sentences"
            raise ValueError(f"{given} does not apply to source='babilong': the release's haystacks are pre-built; "
                             f"choose their length with release_length= (one of the release's configs, e.g. '4k')")
        if split not in (None, "test"):
            raise ValueError(f"split={split!r}: the BABILong release is built from the official bAbI test stories, "
                             f"so source='babilong' only has split='test'")
        self.task, self.split = check_task(task), "test"
        self.release_length = check_length(release_length if release_length is not None else "4k")
        self.context_tokens = self.num_sentences = None
        self.release = cached_release(task, self.release_length, data_dir)
        if not self.release.matched:
            raise ValueError(f"no usable samples in the BABILong release file:\n{self.release.summary()}")
        tokenizer = self._tokenizer
        self._release_corpus = self.release.corpus(lambda texts: cached_token_counts(
            texts, tokenizer.name_or_path, lambda missing: count_tokens(tokenizer, missing)))
        longest = self.release.max_chunks()
        if max_chunks is not None and max_chunks < longest:
            raise ValueError(f"max_chunks={max_chunks} is below the {longest} chunks of the longest release document "
                             f"({task} {self.release_length}); leave it unset to fit every document")
        self.max_chunks = max_chunks if max_chunks is not None else longest

    def _release_episode(self, position: int) -> Episode:
        """The release sample's episode, with its ids; its length is summed from the corpus's token counts by id.
        (The file's corpus holds each distinct sentence once, for the process: about the size of the file's text.)"""
        assert self.release is not None
        episode = self.release.episode(position)
        return replace(episode, num_tokens=int(self._release_corpus.tokens(episode.chunk_ids).sum()))

    @property
    def num_questions(self) -> int:
        """How many questions the split holds (``reset(options={"question_index": i})`` asks question ``i``).

        With ``source="babilong"``: the matched release samples, ``i`` being the i-th in file order.
        """
        if self.release is not None:
            return len(self.release.matched)
        return len(self._source.samples)

    @property
    def corpus(self) -> Corpus:
        """The ids every episode's ``chunk_ids`` index: books, story facts and questions; for ``source="babilong"``
        the release file's distinct chunk texts and questions."""
        return self._release_corpus if self.release is not None else self._source.corpus

    def _episode_for_question(self, index: int) -> Episode:
        if self.release is not None:
            return self._release_episode(index)
        return assemble(index, self._source, self.np_random, self.context_tokens, self.num_sentences, self.max_chunks)

    def _shortfall(self, episode: Episode) -> str | None:
        if self.context_tokens is not None and episode.num_tokens < self.context_tokens:
            return f"document of {episode.num_tokens} tokens for context_tokens={self.context_tokens}"
        if self.num_sentences is not None and len(episode.chunks) < self.num_sentences:
            return f"document of {len(episode.chunks)} sentences for num_sentences={self.num_sentences}"
        return None

    def _episode_info(self) -> dict[str, Any]:
        if self.release is not None:
            meta = self.episode.meta if self.episode is not None else {}
            return {"split": "test", "split_rule": f"{REPO_ID} {self.release_length} ({MATCH_RULE})",
                    "release_index": meta.get("release_index")}
        rule = "official bAbI test file" if self.split == "test" else SPLIT_RULE
        return {"split": self.split, "split_rule": f"stories: {rule}; books: {BOOK_SPLIT_RULE}"}


__all__ = ["BabilongEnv", "PAPER_SENTENCES", "TASKS", "assemble", "load_source"]
