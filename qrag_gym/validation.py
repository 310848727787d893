"""Checks for the numeric arguments every env takes, so a bad value fails at once and names itself.

``int("4K")`` or ``np.zeros(10**12)`` deep inside an env used to surface as a bare ``ValueError`` or a
``MemoryError`` with no word of which argument was wrong.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

MAX_CONTEXT_TOKENS = 20_000_000
"""Twice the paper's longest setting (10M tokens); longer documents would not fit in memory here anyway."""
MAX_NUM_SENTENCES = 1_000_000
"""About 25M tokens of book sentences (the paper's 10M setting is 400,000)."""
MAX_CHUNKS = 4_000_000
"""The largest action space an env builds (its mask alone is one byte per chunk, per observation)."""


def positive_int(name: str, value: Any, maximum: int | None = None) -> int:
    """``value`` as an ``int`` when it is a whole number in ``[1, maximum]``, else a ValueError naming ``name``.

    Integral floats (``4000.0``) and numpy integers are accepted; strings, bools and fractions are not.
    """
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not whole and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        whole = True
    if not whole:
        raise ValueError(f"{name}={value!r}: expected a whole number (for example {name}=4000)")
    number = int(value)
    if number < 1:
        raise ValueError(f"{name}={number}: must be positive (at least 1)")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name}={number:,} is above the supported maximum of {maximum:,}")
    return number


def finite_float(name: str, value: Any) -> float:
    """``value`` as a finite float (ints accepted), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: expected a finite number")
    return float(value)


def flag(name: str, value: Any) -> bool:
    """``value`` when it is a bool (numpy's too), else a ValueError naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}={value!r}: expected True or False")
    return bool(value)
