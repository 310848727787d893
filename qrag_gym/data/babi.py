"""bAbI stories: the text-format parser, the train/validation/test splits and the task table.

BABILong turns every bAbI question into one sample: the story's statements up to that question
(earlier questions dropped) plus the ids of the supporting statements among them. We do the same.

Splits: ``train`` and ``validation`` divide the stories of the ``*_train.txt`` file by a fixed
story-index rule (tune on these); ``test`` is the official ``*_test.txt`` file of the bAbI v1.2
release (``tasks_1-20_v1-2/en-10k``), which BABILong evaluates on (report on it, never tune on it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TASK_STEMS = {
    "qa1": "qa1_single-supporting-fact",
    "qa2": "qa2_two-supporting-facts",
    "qa3": "qa3_three-supporting-facts",
    "qa4": "qa4_two-arg-relations",
    "qa5": "qa5_three-arg-relations",
}
"""File names of the bAbI v1.2 release without ``_train.txt`` / ``_test.txt``."""
TASKS = tuple(TASK_STEMS)
TASK_FILES = {task: f"{stem}_train.txt" for task, stem in TASK_STEMS.items()}
"""Training file name of each task (``qrag-data`` installs and checks these, and the ``_test.txt`` beside them)."""
SPLITS = ("train", "validation", "test")

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
    if task not in TASK_STEMS:
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
        samples.append(BabiSample(tuple(story), question, answer, supporting, task, story_index))
    return samples


def load_babi_file(path: Path, task: str) -> list[BabiSample]:
    """Parse one bAbI file (see :func:`parse_babi_lines`)."""
    with open(path, encoding="utf-8") as handle:
        return parse_babi_lines(handle.readlines(), task, origin=str(path))


def task_path(babi_dir: str | Path, task: str, part: str = "train") -> Path:
    """``babi_dir/<stem>_train.txt`` or ``_test.txt``: where the release keeps ``task``'s ``part`` file."""
    if part not in ("train", "test"):
        raise ValueError(f"unknown bAbI file part {part!r}; choose 'train' or 'test'")
    return Path(babi_dir) / f"{TASK_STEMS[check_task(task)]}_{part}.txt"


def load_babi_task(babi_dir: Path, task: str, part: str = "train") -> list[BabiSample]:
    """Load the training (or official test) file of ``task`` from a folder of bAbI files (``babi/en-10k``)."""
    path = task_path(babi_dir, task, part)
    if not path.is_file():
        release = "the official test stories of the bAbI v1.2 release, tasks_1-20_v1-2/en-10k" if part == "test" \
            else "the bAbI v1.2 training stories, tasks_1-20_v1-2/en-10k"
        raise FileNotFoundError(f"bAbI {part} file for {task} not found: expected {path} ({release})")
    return load_babi_file(path, task)


def load_split(babi_dir: Path, task: str, split: str) -> list[BabiSample]:
    """The samples of one split: every question of the test file, or the train/validation stories of
    the training file (:func:`split_samples`)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "test":
        return load_babi_task(babi_dir, task, "test")
    return split_samples(load_babi_task(babi_dir, task), split)


def split_samples(samples: list[BabiSample], split: str) -> list[BabiSample]:
    """Keep the samples of ``split`` ('train' or 'validation') by the fixed story-index rule."""
    if split not in ("train", "validation"):
        raise ValueError(f"unknown split {split!r} for the training file's stories; choose 'train' or 'validation'")
    want_validation = split == "validation"
    return [s for s in samples if (s.story_index % VALIDATION_EVERY == 0) == want_validation]
