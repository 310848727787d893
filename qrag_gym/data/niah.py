"""RULER's needle-in-a-haystack task, generated here: needles, haystacks and the eight standard variants.

RULER (Hsieh et al., 2024) hides sentences "One of the special magic {numbers} for {key} is: {value}."
in a long haystack and asks for the value(s) of one or more keys. Its variants differ in the haystack
(a repeated filler text, essays, or other needles), the key/value types (words, numbers, uuids) and three
counts: ``num_needle_k`` keys with needles, ``num_needle_v`` values (needles) per key, ``num_needle_q``
keys asked. This module re-implements that generator from its published description, drawing every
random choice from one ``numpy`` generator so a seed fixes the episode. One chunk is one sentence (a
haystack sentence or a needle), as in the Q-RAG authors' NIAH environment.

Deliberate differences from RULER: the essay haystack is public-domain book text (``noise/gutenberg``,
the same corpus and train/validation book split as BABILong here) instead of Paul Graham essays; needles
go to uniformly random sentence boundaries instead of a 40-point depth grid; distractor needles never
reuse a key (or value) that is asked, so the supporting chunks are exactly the needles of the asked keys.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from qrag_gym.data.noise import NoiseCorpus
from qrag_gym.cache import register_one_off_texts
from qrag_gym.corpus import Corpus, TextTable, first_occurrences
from qrag_gym.episode import Episode
from qrag_gym.validation import positive_int

HAYSTACK_TYPES = ("repeat", "essay", "needle")
VALUE_TYPES = ("words", "numbers", "uuids")

REPEAT_SENTENCES = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
                    "There and back again.")
"""RULER's ``repeat`` haystack: these five sentences over and over."""

NEEDLE_TEMPLATE = "One of the special magic {kind} for {key} is: {value}."
_SINGULAR = {"words": "word", "numbers": "number", "uuids": "uuid"}
NEEDLE_PATTERN = re.compile(r"One of the special magic (?:words|numbers|uuids) for \S+ is: \S+\.")
"""Every needle (real or distractor): random keys and values, so never worth a place in the disk cache."""
register_one_off_texts(NEEDLE_PATTERN)


MAX_NEEDLES = 10_000
"""Per count (keys, values per key, asked keys): far past RULER's 4, short of exhausting memory."""


@dataclass(frozen=True)
class NiahConfig:
    """One NIAH task: the haystack, the key/value types and RULER's three needle counts."""

    haystack: str
    type_needle_k: str
    type_needle_v: str
    num_needle_k: int = 1
    num_needle_v: int = 1
    num_needle_q: int = 1

    def __post_init__(self) -> None:
        if self.haystack not in HAYSTACK_TYPES:
            raise ValueError(f"unknown haystack {self.haystack!r}; choose one of {HAYSTACK_TYPES}")
        for name in ("type_needle_k", "type_needle_v"):
            if getattr(self, name) not in VALUE_TYPES:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {VALUE_TYPES}")
        for name in ("num_needle_k", "num_needle_v", "num_needle_q"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name), MAX_NEEDLES))
        if self.num_needle_q > self.num_needle_k:
            raise ValueError(f"num_needle_q={self.num_needle_q} asks more keys than num_needle_k={self.num_needle_k}")

    @property
    def num_needles(self) -> int:
        return self.num_needle_k * self.num_needle_v

    @property
    def num_supporting(self) -> int:
        """Needles a perfect retriever must select: every value of every asked key."""
        return self.num_needle_q * self.num_needle_v


VARIANTS: dict[str, NiahConfig] = {
    "single_1": NiahConfig("repeat", "words", "numbers"),
    "single_2": NiahConfig("essay", "words", "numbers"),
    "single_3": NiahConfig("essay", "words", "uuids"),
    "multikey_1": NiahConfig("essay", "words", "numbers", num_needle_k=4),
    "multikey_2": NiahConfig("needle", "words", "numbers"),
    "multikey_3": NiahConfig("needle", "uuids", "uuids"),
    "multivalue": NiahConfig("essay", "words", "numbers", num_needle_v=4),
    "multiquery": NiahConfig("essay", "words", "numbers", num_needle_k=4, num_needle_q=4),
}
"""RULER's eight NIAH tasks (its ``synthetic.yaml``), by the names used here."""


def variant_config(variant: str, **overrides: object) -> NiahConfig:
    """The config of a named variant, with any non-None field in ``overrides`` replaced."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown NIAH variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return replace(VARIANTS[variant], **{k: v for k, v in overrides.items() if v is not None})


# ----- keys and values -------------------------------------------------------------------------------
_ADJECTIVES = tuple("""
abrupt agile amber ancient anxious arctic ashen austere bashful bitter blazing bleak bold brave breezy
brisk bronze bumpy calm candid careful cheerful chilly clever cloudy clumsy coastal cosmic crimson
crisp curious daring dashing dazzling dense distant dizzy dreamy dusty eager earnest elated elegant
empty fancy fearless fierce fluffy foggy fragile frantic frosty gentle giant gifted gleaming glossy
golden graceful grumpy hasty hidden hollow humble icy idle jagged jolly keen lavish lazy lively lonely
lucky lunar marble mellow mighty misty modest muddy mystic narrow neat nimble noble odd olive painted
pale patient plain polite proud quaint quick quiet rapid rare restless rigid rocky rosy rough royal
rustic rusty sandy scarlet secret shaggy shiny silent silver sleepy slender sly smoky snowy solemn
sparkling spicy spotted steady stormy striped sturdy subtle sunny swift tame tender thirsty tidy tiny
tired tranquil trusty twisted velvet vivid wandering wary weary wild windy wise witty wooden zealous
""".split())
_NOUNS = tuple("""
acorn albatross anchor antelope anvil apricot archer armadillo badger balloon bamboo banjo barn basket
beacon beaver bicycle bison blanket blossom boulder bramble bucket buffalo butterfly cabin cactus camel
canoe canyon caravan carpet castle cathedral cello chariot cherry chimney cobra comet compass coral
cricket crow crystal cushion dagger dolphin donkey dragon drum eagle easel eel elephant elk ember falcon
feather ferret fiddle fjord flamingo flute fossil fountain fox galaxy gazelle geyser glacier goblet
goose gorilla granite harbor harp hawk hedgehog heron hippo hornet iceberg iguana island jackal jaguar
jellyfish kangaroo kettle kiwi koala ladder lagoon lantern lemur leopard lighthouse lizard llama lobster
locket lynx magnet mallet mango meadow meteor mirror moose mosaic moth mountain nectar nightingale oasis
octopus orchard orchid otter owl oyster paddle panther parrot pebble pelican pepper piano pigeon pillow
pine platypus pumpkin puffin quail quartz quill rabbit raccoon raven reindeer ribbon river robin rocket
saddle salmon sapphire scarf scorpion seal shovel sparrow spider squirrel stallion statue swan tambourine
teapot thistle thunder tiger tortoise toucan trumpet tulip turtle umbrella valley violin volcano walnut
walrus whale whistle willow wolf wombat yak zebra
""".split())
"""RULER draws "adjective-noun" words from the wonderwords lists; these built-in lists keep us offline
(about 30,000 distinct words)."""


def random_values(kind: str, rng: np.random.Generator, count: int) -> list[str]:
    """``count`` random strings of a RULER value type, vectorised (a 1M-token haystack needs ~50,000).

    words are "adjective-noun", numbers have 7 digits, uuids are version-4 UUIDs built from the
    generator's bytes (never :func:`uuid.uuid4`, which would ignore the seed).
    """
    if kind == "numbers":
        return [str(n) for n in rng.integers(1_000_000, 10_000_000, size=count)]
    if kind == "words":
        adjectives = rng.integers(len(_ADJECTIVES), size=count)
        nouns = rng.integers(len(_NOUNS), size=count)
        return [f"{_ADJECTIVES[a]}-{_NOUNS[n]}" for a, n in zip(adjectives.tolist(), nouns.tolist())]
    if kind == "uuids":
        raw = rng.bytes(16 * count)
        return [str(uuid.UUID(bytes=raw[16 * i: 16 * i + 16], version=4)) for i in range(count)]
    raise ValueError(f"unknown value type {kind!r}; choose one of {VALUE_TYPES}")


def distinct_values(kind: str, rng: np.random.Generator, count: int, exclude: set[str] = frozenset()) -> list[str]:
    """``count`` pairwise-distinct random values of ``kind``, none of them in ``exclude``."""
    chosen: dict[str, None] = {}
    while len(chosen) < count:
        for value in random_values(kind, rng, count - len(chosen)):
            if value not in exclude:
                chosen.setdefault(value)
    return list(chosen)


def needle_text(config: NiahConfig, key: str, value: str) -> str:
    return NEEDLE_TEMPLATE.format(kind=config.type_needle_v, key=key, value=value)


def question_text(config: NiahConfig, keys: list[str]) -> str:
    """RULER's query sentence; plural ("What are all ...") when more than one value is asked."""
    asked = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]
    if config.num_supporting == 1:
        kind = _SINGULAR[config.type_needle_v]
        return f"What is the special magic {kind} for {asked} mentioned in the provided text?"
    return f"What are all the special magic {config.type_needle_v} for {asked} mentioned in the provided text?"


# ----- haystacks -------------------------------------------------------------------------------------
TokenCounter = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Haystack:
    """Sentences to hide needles in, with the token count of each and, for book sentences, their ids in the
    books table (None for generated haystacks)."""

    sentences: list[str]
    tokens: np.ndarray
    ids: np.ndarray | None = None


def _cut(tokens: np.ndarray, need: int) -> int:
    """How many leading sentences reach ``need`` tokens (all of them if they never do)."""
    if need <= 0:
        return 0
    return min(int(np.searchsorted(np.cumsum(tokens), need)) + 1, tokens.size)


def repeat_haystack(need: int, repeat_tokens: np.ndarray, limit: int) -> Haystack:
    """The repeated filler, sentence by sentence, until ``need`` tokens (at most ``limit`` sentences)."""
    cycles = need // max(int(repeat_tokens.sum()), 1) + 2
    tokens = np.tile(repeat_tokens, cycles)[:limit]
    count = _cut(tokens, need)
    return Haystack([REPEAT_SENTENCES[i % len(REPEAT_SENTENCES)] for i in range(count)], tokens[:count])


def essay_haystack(need: int, corpus: NoiseCorpus, corpus_tokens: np.ndarray,
                   rng: np.random.Generator, limit: int) -> Haystack:
    """Book sentences in contiguous runs from random books and offsets, until ``need`` tokens."""
    index = corpus.sample_tokens(rng, need, corpus_tokens, limit)
    sentences = corpus.sentences
    return Haystack([sentences[i] for i in index.tolist()], corpus_tokens[index], index)


def needle_haystack(need: int, config: NiahConfig, count_tokens: TokenCounter, rng: np.random.Generator,
                    limit: int, real_keys: set[str], gold_values: set[str]) -> Haystack:
    """Distractor needles with fresh random keys and values (never a real needle's key, nor a gold value)."""
    sentences: list[str] = []
    tokens = np.zeros(0, dtype=np.int64)
    batch = 64
    while len(sentences) < limit and int(tokens.sum()) < need:
        keys = [k for k in random_values(config.type_needle_k, rng, batch) if k not in real_keys]
        values = [v for v in random_values(config.type_needle_v, rng, len(keys)) if v not in gold_values]
        new = [needle_text(config, k, v) for k, v in zip(keys, values)][: limit - len(sentences)]
        sentences.extend(new)
        tokens = np.concatenate([tokens, count_tokens(new)])
        mean = float(tokens.mean()) if tokens.size else 1.0
        batch = max(int((need - int(tokens.sum())) / mean * 1.1) + 16, 16)
    count = _cut(tokens, need)
    return Haystack(sentences[:count], tokens[:count])


# ----- one episode -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Needles:
    """The real needles of one episode, in the order they are inserted, and which keys are asked."""

    keys: list[str]
    values: dict[str, list[str]]
    asked: list[str]
    order: list[tuple[str, str]]

    @property
    def answers(self) -> list[str]:
        return [value for key in self.asked for value in self.values[key]]


def draw_needles(config: NiahConfig, rng: np.random.Generator) -> Needles:
    """Keys, their values, the asked keys and a shuffled insertion order (RULER shuffles needles)."""
    keys = distinct_values(config.type_needle_k, rng, config.num_needle_k)
    flat = distinct_values(config.type_needle_v, rng, config.num_needles, exclude=set(keys))
    values = {key: flat[i * config.num_needle_v: (i + 1) * config.num_needle_v] for i, key in enumerate(keys)}
    asked = [keys[i] for i in sorted(rng.choice(config.num_needle_k, size=config.num_needle_q, replace=False))]
    pairs = [(key, value) for key in keys for value in values[key]]
    order = [pairs[i] for i in rng.permutation(len(pairs))]
    return Needles(keys, values, asked, order)


def insert_needles(haystack: Haystack, needle_sentences: list[str], needle_tokens: np.ndarray,
                   rng: np.random.Generator) -> tuple[list[str], np.ndarray, int]:
    """Put each needle at a distinct uniformly random sentence boundary.

    Returns the chunks, the chunk index of each needle (in ``needle_sentences`` order) and the tokens.
    """
    total = len(haystack.sentences) + len(needle_sentences)
    slots = np.sort(rng.choice(total, size=len(needle_sentences), replace=False))
    is_needle = np.zeros(total, dtype=bool)
    is_needle[slots] = True
    chunks: list[str] = [""] * total
    for slot, text in zip(slots.tolist(), needle_sentences):
        chunks[slot] = text
    for slot, text in zip(np.flatnonzero(~is_needle).tolist(), haystack.sentences):
        chunks[slot] = text
    return chunks, slots, int(haystack.tokens.sum() + needle_tokens.sum())


def chunk_ids(chunks: list[str], slots: np.ndarray, haystack: Haystack, needle_tokens: np.ndarray,
              books: TextTable | None, question: str, question_tokens: int) -> tuple[np.ndarray, Corpus, int]:
    """Every chunk of an episode as an id, and the id of its question (issue 15: features and token counts are
    then gathered by id).

    Book sentences keep their ids in the ``books`` table, shared with every env over the same books; the texts
    this episode made (its needles, a generated haystack, the question: its last row) get ids in an
    episode-local table (distinct chunk texts once), whose features go with the episode.
    """
    tokens = np.empty(len(chunks), dtype=np.int64)
    is_needle = np.zeros(len(chunks), dtype=bool)
    is_needle[slots] = True
    tokens[slots], tokens[~is_needle] = needle_tokens, haystack.tokens
    made = is_needle if haystack.ids is not None and books is not None else np.ones(len(chunks), dtype=bool)
    positions = np.flatnonzero(made)
    first, local = first_occurrences([chunks[i] for i in positions.tolist()])
    first = positions[first]
    table = TextTable.of([*(chunks[i] for i in first.tolist()), question],
                         np.append(tokens[first], question_tokens), episode_local=True)
    if made.all():
        return local, Corpus((table,)), len(first)
    ids = np.empty(len(chunks), dtype=np.int64)
    ids[~made], ids[made] = haystack.ids, len(books) + local
    return ids, Corpus((books, table)), len(books) + len(first)


def build_episode(
    config: NiahConfig,
    variant: str,
    rng: np.random.Generator,
    context_tokens: int,
    max_chunks: int,
    count_tokens: TokenCounter,
    source: str,
    corpus: NoiseCorpus | None = None,
    books: TextTable | None = None,
    repeat_tokens: np.ndarray | None = None,
) -> Episode:
    """Draw one NIAH episode of about ``context_tokens`` tokens (needles included).

    ``corpus`` and ``books`` (its sentences as a table, with their token counts) are needed for the essay
    haystack, ``repeat_tokens`` (the token count of each :data:`REPEAT_SENTENCES`) for the repeat one.
    Supporting ids are the chunks of every needle of the asked keys; the answer lists their values, in
    asked-key order. Chunks carry ids (:func:`chunk_ids`).
    """
    needles = draw_needles(config, rng)
    needle_sentences = [needle_text(config, key, value) for key, value in needles.order]
    needle_tokens = count_tokens(needle_sentences)
    need = max(int(context_tokens) - int(needle_tokens.sum()), 0)
    limit = max_chunks - len(needle_sentences)
    if config.haystack == "repeat":
        haystack = repeat_haystack(need, repeat_tokens, limit)
    elif config.haystack == "essay":
        haystack = essay_haystack(need, corpus, books.tokens, rng, limit)
    else:
        haystack = needle_haystack(need, config, count_tokens, rng, limit, set(needles.keys), set(needles.answers))
    chunks, slots, tokens = insert_needles(haystack, needle_sentences, needle_tokens, rng)
    question = question_text(config, needles.asked)
    ids, episode_corpus, question_id = chunk_ids(chunks, slots, haystack, needle_tokens, books, question,
                                                 int(count_tokens([question])[0]))
    asked = set(needles.asked)
    supporting = tuple(sorted(int(s) for s, (key, _) in zip(slots, needles.order) if key in asked))
    answers = needles.answers
    return Episode(
        chunks=tuple(chunks),
        question=question,
        answer=", ".join(answers),
        supporting_ids=supporting,
        source=source,
        task=variant,
        num_tokens=tokens,
        meta={"answers": answers, "keys": needles.keys, "asked_keys": needles.asked,
              "needle_ids": [int(s) for s in slots],
              "depths": [round(float(s) / max(len(chunks) - 1, 1), 4) for s in slots]},
        chunk_ids=ids,
        corpus=episode_corpus,
        question_id=question_id,
    )
