"""HotpotQA (distractor setting) from jsonl: questions, their paragraphs, and which two paragraphs support them.

Two line schemas are read, because both circulate:
- the processed form of ``dev_subsampled_400.jsonl`` (IRCoT's subsample): ``question_id``,
  ``question_text``, ``answers_objects[].spans`` and ``contexts[]`` of ``{title, paragraph_text,
  is_supporting}``;
- the official record (one per line): ``_id``, ``question``, ``answer``, ``context`` as
  ``[title, [sentences]]`` pairs and ``supporting_facts`` as ``[title, sentence_id]`` pairs.
A malformed line is an error naming the file and line: silently skipping questions would change
benchmark figures without anyone noticing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_FILE = "hotpotqa/dev_subsampled_400.jsonl"
"""Where the loader looks first inside a data folder when no explicit ``path`` is given."""

FETCHED_FILE = "hotpotqa/hotpot_dev_distractor_v1.jsonl"
"""What ``qrag-data fetch hotpotqa`` writes: the full official distractor dev set (7,405 questions),
one official record per line. Read when :data:`DEFAULT_FILE` (IRCoT's 400-question subsample, which
has no public download of its own) is absent."""

DEFAULT_FILES = (DEFAULT_FILE, FETCHED_FILE)

VALIDATION_EVERY = 5
SPLIT_RULE = f"sha256(question id) % {VALIDATION_EVERY} == 0 -> validation, else train"
SPLITS = ("train", "validation", "all")


class HotpotQAFormatError(ValueError):
    """A jsonl line is not a HotpotQA record; the message names file and line."""


@dataclass(frozen=True)
class HotpotQuestion:
    """One question with its paragraphs in file order; ``supporting`` indexes into ``paragraphs``."""

    qid: str
    question: str
    answers: tuple[str, ...]
    paragraphs: tuple[tuple[str, str], ...]
    supporting: tuple[int, ...]

    @property
    def chunks(self) -> tuple[str, ...]:
        """One chunk per paragraph: title + " " + text, as in the Q-RAG authors' HotpotQA env."""
        return tuple(f"{title} {text}" for title, text in self.paragraphs)


def _squash(text: str) -> str:
    return " ".join(text.split())


def _text(record: dict[str, Any], key: str) -> str:
    """``record[key]`` when it is a string; ``null`` or a number is an error naming the field."""
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} is {json.dumps(value)[:40]}, expected a string")
    return value


def _from_processed(record: dict[str, Any]) -> HotpotQuestion:
    contexts = record["contexts"]
    answers = tuple(span for obj in record["answers_objects"] for span in obj["spans"])
    if not all(isinstance(answer, str) for answer in answers):
        raise ValueError(f"answer spans {answers!r} are not all strings")
    return HotpotQuestion(
        qid=str(record["question_id"]),
        question=_text(record, "question_text"),
        answers=answers,
        paragraphs=tuple((_text(c, "title"), _squash(_text(c, "paragraph_text"))) for c in contexts),
        supporting=tuple(i for i, c in enumerate(contexts) if c["is_supporting"]),
    )


def _from_official(record: dict[str, Any]) -> HotpotQuestion:
    titles = {title for title, _ in record["supporting_facts"]}
    context = record["context"]
    for title, sentences in context:
        if not isinstance(title, str) or not all(isinstance(sentence, str) for sentence in sentences):
            raise ValueError(f"context entry {json.dumps([title, sentences])[:60]} needs a title and a list of strings")
    return HotpotQuestion(
        qid=str(record["_id"]),
        question=_text(record, "question"),
        answers=(_text(record, "answer"),),
        paragraphs=tuple((title, _squash(" ".join(sentences))) for title, sentences in context),
        supporting=tuple(i for i, (title, _) in enumerate(context) if title in titles),
    )


def parse_record(record: Any) -> HotpotQuestion:
    """One decoded jsonl line in either schema (see the module docstring)."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "contexts" in record:
        question = _from_processed(record)
    elif "context" in record:
        question = _from_official(record)
    else:
        raise ValueError(f"neither 'contexts' (processed) nor 'context' (official) in keys {sorted(record)}")
    if not question.paragraphs:
        raise ValueError("no paragraphs")
    if not question.supporting:
        raise ValueError("no paragraph is marked as supporting")
    if not question.answers:
        raise ValueError("no answer")
    return question


def load_hotpotqa(path: str | Path) -> list[HotpotQuestion]:
    """Every question of a jsonl file, in file order; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HotpotQA file {path} does not exist")
    questions: list[HotpotQuestion] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                questions.append(parse_record(json.loads(line)))
            except UnicodeDecodeError as err:
                raise HotpotQAFormatError(f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start})") from err
            except (ValueError, KeyError, TypeError) as err:
                detail = f"missing field {err}" if isinstance(err, KeyError) else str(err)
                raise HotpotQAFormatError(f"{path}:{number}: not a HotpotQA record: {detail}") from err
    if not questions:
        raise HotpotQAFormatError(f"{path}: no questions")
    return questions


def is_validation(qid: str) -> bool:
    """The split depends on the question id only, so it survives re-ordering and sub-sampling of files."""
    return int(hashlib.sha256(qid.encode()).hexdigest(), 16) % VALIDATION_EVERY == 0


def split_questions(questions: list[HotpotQuestion], split: str) -> list[HotpotQuestion]:
    """The questions of one split ('train', 'validation' or 'all'); see :data:`SPLIT_RULE`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if split == "all":
        return list(questions)
    return [q for q in questions if is_validation(q.qid) == (split == "validation")]
