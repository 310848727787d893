"""The unit every environment works on: one question over one long document cut into chunks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Episode:
    """One retrieval problem.

    ``chunks`` are in document order; ``supporting_ids`` index into them and are what a perfect
    retriever must select. ``source`` says where the text came from (for instance
    ``"babi-real+gutenberg"`` or ``"babi-generated+synthetic-noise"``) so that results made from
    synthetic data can never pass for benchmark figures.
    """

    chunks: tuple[str, ...]
    question: str
    answer: str
    supporting_ids: tuple[int, ...]
    source: str
    task: str
    num_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [i for i in self.supporting_ids if not 0 <= i < len(self.chunks)]
        if bad:
            raise ValueError(f"supporting ids {bad} are outside the {len(self.chunks)} chunks")
