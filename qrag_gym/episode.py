"""The unit every environment works on: one question over one long document cut into chunks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from qrag_gym.corpus import Corpus


@dataclass(frozen=True)
class Episode:
    """One retrieval problem.

    ``chunks`` are in document order; ``supporting_ids`` index into them and are what a perfect
    retriever must select. ``source`` says where the text came from (for instance
    ``"babi-real+gutenberg"`` or ``"babi-generated+synthetic-noise"``) so that results made from
    synthetic data can never pass for benchmark figures.

    ``chunk_ids`` (with the ``corpus`` they index) name each chunk by id: features and token counts are
    then gathered by id (:mod:`qrag_gym.features`). BABILong's books and story facts and HotpotQA's paragraphs
    are fixed tables; NIAH's essay haystack keeps the books' ids and the texts an episode makes (needles,
    generated haystacks) get ids in an episode-local table; each BABILong release file is a corpus of its distinct
    sentences and questions. They are None only for episodes built by hand without them. ``question_id`` names the question the same way
    (BABILong's and HotpotQA's question tables, NIAH's episode-local table), so an agent's question features
    are gathered by id too. Equality compares the texts, not the ids.
    """

    chunks: tuple[str, ...]
    question: str
    answer: str
    supporting_ids: tuple[int, ...]
    source: str
    task: str
    num_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)
    chunk_ids: np.ndarray | None = field(default=None, compare=False, repr=False)
    corpus: Corpus | None = field(default=None, compare=False, repr=False)
    question_id: int | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if (self.chunk_ids is None) != (self.corpus is None):
            raise ValueError("chunk_ids and corpus come together: give both or neither")
        if self.chunk_ids is not None:
            ids = self.chunk_ids
            if not isinstance(ids, np.ndarray) or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"chunk_ids must be an integer numpy array, got {type(ids).__name__}")
            if ids.shape != (len(self.chunks),):
                raise ValueError(f"{ids.shape} chunk ids for {len(self.chunks)} chunks")
        if self.question_id is not None:
            if self.corpus is None:
                raise ValueError("question_id names a text of the episode's corpus: give chunk_ids and corpus too")
            if self.corpus.texts(np.array([self.question_id]))[0] != self.question:
                raise ValueError(f"question_id {self.question_id} is not this episode's question {self.question!r}")
        bad = [i for i in self.supporting_ids if not 0 <= i < len(self.chunks)]
        if bad:
            raise ValueError(f"supporting ids {bad} are outside the {len(self.chunks)} chunks")
