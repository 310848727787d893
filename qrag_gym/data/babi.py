"""bAbI stories: the text-format parser, the train/validation split and the task table.

BABILong turns every bAbI question into one sample: the story's statements up to that question
(earlier questions dropped) plus the ids of the supporting statements among them. We do the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TASK_FILES = {
    "qa1": "qa1_single-supporting-fact_train.txt",
    "qa2": "qa2_two-supporting-facts_train.txt",
    "qa3": "qa3_three-supporting-facts_train.txt",
    "qa4": "qa4_two-arg-relations_train.txt",
    "qa5": "qa5_three-arg-relations_train.txt",
}
TASKS = tuple(TASK_FILES)

VALIDATION_EVERY = 10
"""Story ``i`` (0-based, in file order) is a validation story when ``i % VALIDATION_EVERY == 0``."""

SPLIT_RULE = f"story_index % {VALIDATION_EVERY} == 0 -> validation, else train"

_LINE = re.compile(r"^(\d+) (.*)$")


class BabiFormatError(ValueError):
    """A line of a bAbI file does not follow the format; the message names file and line."""


@dataclass(frozen=True)
class BabiSample:
    """One question with the story statements before it.

    ``supporting`` indexes into ``facts`` (0-based), in the order the file lists them (not story order).
    """

    facts: tuple[str, ...]
    question: str
    answer: str
    supporting: tuple[int, ...]
    task: str
    story_index: int


def check_task(task: str) -> str:
    """Return ``task`` if it is one of qa1..qa5, else raise with the valid names."""
    if task not in TASK_FILES:
        raise ValueError(f"unknown bAbI task {task!r}; choose one of {', '.join(TASKS)}")
    return task


def parse_babi_lines(lines: list[str], task: str, origin: str = "<memory>") -> list[BabiSample]:
    """Parse bAbI text lines into one :class:`BabiSample` per question.

    ``origin`` names the source in error messages (``file:line``).
    """
    samples: list[BabiSample] = []
    story: list[str] = []
    line_to_fact: dict[int, int] = {}
    story_index = -1
    expected_id = 1
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        where = f"{origin}:{number}"
        match = _LINE.match(line)
        if match is None:
            raise BabiFormatError(f"{where}: expected '<id> <text>', got {line[:80]!r}")
        line_id, text = int(match.group(1)), match.group(2)
        if line_id == 1:
            story, line_to_fact, story_index = [], {}, story_index + 1
        elif line_id != expected_id:
            raise BabiFormatError(f"{where}: line id {line_id} follows id {expected_id - 1}")
        if story_index < 0:
            raise BabiFormatError(f"{where}: the first story must start at id 1")
        expected_id = line_id + 1
        if "\t" not in text:
            line_to_fact[line_id] = len(story)
            story.append(text.strip())
            continue
        parts = text.split("\t")
        if len(parts) != 3:
            raise BabiFormatError(f"{where}: a question needs 'question<TAB>answer<TAB>ids', got {len(parts)} fields")
        question, answer, ids = (p.strip() for p in parts)
        try:
            supporting = tuple(line_to_fact[int(i)] for i in ids.split())
        except (ValueError, KeyError) as err:
            raise BabiFormatError(f"{where}: supporting ids {ids!r} do not name earlier statements") from err
        if not supporting or not answer:
            raise BabiFormatError(f"{where}: question without answer or supporting ids")
        if len(set(supporting)) != len(supporting):  # a repeated id would count one fact twice in the reward
            raise BabiFormatError(f"{where}: supporting ids {ids!r} name a statement more than once")
        samples.append(BabiSample(tuple(story), question, answer, supporting, task, story_index))
    return samples


def load_babi_file(path: Path, task: str) -> list[BabiSample]:
    """Parse one bAbI file (see :func:`parse_babi_lines`); a line that is not UTF-8 is an error naming it."""
    lines = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise BabiFormatError(f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    return parse_babi_lines(lines, task, origin=str(path))


def load_babi_task(babi_dir: Path, task: str) -> list[BabiSample]:
    """Load the training file of ``task`` from a folder of bAbI files (e.g. ``babi/en-10k``)."""
    path = Path(babi_dir) / TASK_FILES[check_task(task)]
    if not path.is_file():
        raise FileNotFoundError(f"bAbI file for {task} not found: {path}")
    return load_babi_file(path, task)


def split_samples(samples: list[BabiSample], split: str) -> list[BabiSample]:
    """Keep the samples of ``split`` ('train' or 'validation') by the fixed story-index rule."""
    if split not in ("train", "validation"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'validation'")
    want_validation = split == "validation"
    return [s for s in samples if (s.story_index % VALIDATION_EVERY == 0) == want_validation]
