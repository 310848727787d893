"""A ``Text`` space whose values survive Gymnasium's shared-memory ``AsyncVectorEnv``.

``AsyncVectorEnv(shared_memory=True)`` (the default of ``gym.make_vec(..., vectorization_mode="async")``)
reads its observation buffer once, at construction, and relies on that read returning *views* that the
workers' later writes show through. Box and MultiBinary reads are numpy views; a ``Text`` read is a tuple
of strings decoded then, so every question came back as 2,048 spaces at every reset and step
(Gymnasium issue 1164). :class:`QuestionText` registers a read that returns :class:`LiveTexts`, a
sequence that decodes the shared buffer when indexed, and becomes a plain tuple when the vector env
copies its observations (its default ``copy=True``). Everything else is ``Text``'s own behaviour.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import read_from_shared_memory


class QuestionText(spaces.Text):
    """:class:`gymnasium.spaces.Text` with a shared-memory read that stays current (see the module).

    Its ``repr`` names the character set by its size: ``Text``'s own lists all ~63,500 characters,
    which made ``print(env.observation_space)`` a page long.
    """

    def __repr__(self) -> str:
        return f"Text({self.min_length}, {self.max_length}, charset=<{len(self.character_set):,} characters>)"

    def __deepcopy__(self, memo: dict) -> QuestionText:
        """A copy with its own random generator that shares the character tables, which no method changes.

        Why: Gymnasium's ``batch_space`` deep-copies a ``Text`` space once per sub-env; copying ~63,500
        characters three ways took 4.3 s for the learner's 64 training slots (13 ms shared).
        """
        twin = copy.copy(self)
        memo[id(self)] = twin
        # The base constructor gives the twin a copy of this space's generator (seeding this one lazily first, as a
        # sample would): the one public way to set a space's generator.
        spaces.Space.__init__(twin, dtype=self.dtype, seed=copy.deepcopy(self.np_random, memo))
        return twin


@functools.lru_cache(maxsize=8)
def _question_text_prototype(max_length: int, charset: str) -> QuestionText:
    return QuestionText(max_length, charset=charset)


def question_text(max_length: int, charset: str) -> QuestionText:
    """A new :class:`QuestionText`, copied from one built per process (building the character tables anew cost
    40 ms per env), then seeded from fresh entropy, as an unseeded space would be at its first sample: a copy of the
    prototype's generator would give every env's space the same draws."""
    space = copy.deepcopy(_question_text_prototype(max_length, charset))
    space.seed()
    return space


class LiveTexts(Sequence):
    """The ``n`` texts of a shared ``Text`` buffer, decoded at each access, never cached."""

    def __init__(self, space: spaces.Text, shared_memory: Any, n: int) -> None:
        self._space, self._n = space, n
        self._data = np.frombuffer(shared_memory.get_obj(), dtype=np.int32).reshape(n, space.max_length)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(self._n)))
        characters, size = self._space.character_list, len(self._space.character_set)
        return "".join(characters[value] for value in self._data[index].tolist() if value < size)

    def __deepcopy__(self, memo: dict) -> tuple[str, ...]:
        return tuple(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __repr__(self) -> str:
        return f"LiveTexts({tuple(self)!r})"


@read_from_shared_memory.register(QuestionText)
def _read_live_texts(space: QuestionText, shared_memory: Any, n: int = 1) -> LiveTexts:
    return LiveTexts(space, shared_memory, n)
