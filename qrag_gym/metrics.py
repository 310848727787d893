"""Per-episode retrieval metrics, defined once so every agent, test and benchmark reports the same thing.

For a question with k supporting chunks and the chunks an agent selected (in selection order):
- ``success_at_k``: all k supporting chunks are among the first k selections (strict: no wasted step);
- ``success_at_t``: all of them are among every selection made within the step budget T (the paper's
  Fact-EM, ``gt ⊆ pred``);
- ``precision`` / ``recall`` / ``f1``: set overlap between the *kept* chunks and the supporting ones.
  ``kept`` is what the agent hands to a reader, e.g. after the Q-threshold stop; it defaults to every
  selection.

Answer metrics for readers: RULER's string match (NIAH) and SQuAD-normalised exact match / token F1
(HotpotQA).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Iterable, Sequence


def fact_scores(kept: Iterable[int], supporting: Iterable[int]) -> tuple[float, float, float]:
    """Precision, recall and F1 of the kept chunk set against the supporting set."""
    kept_set, gold = set(kept), set(supporting)
    hits = len(kept_set & gold)
    precision = hits / len(kept_set) if kept_set else 0.0
    recall = hits / len(gold) if gold else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def retrieval_metrics(
    selected_order: Sequence[int], supporting: Sequence[int], kept: Iterable[int] | None = None
) -> dict[str, float]:
    """All retrieval metrics of one episode (see the module docstring)."""
    gold = set(supporting)
    k = len(gold)
    precision, recall, f1 = fact_scores(selected_order if kept is None else kept, gold)
    return {
        "success_at_k": float(gold <= set(selected_order[:k])),
        "success_at_t": float(gold <= set(selected_order)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "steps": float(len(selected_order)),
    }


def wilson_interval(successes: float, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a success rate: unlike the normal approximation it stays inside
    [0, 1] and does not collapse to zero width at 0/n or n/n, which small benchmark cells often are."""
    if trials <= 0:
        raise ValueError(f"wilson_interval needs at least one trial, got {trials}")
    rate = successes / trials
    denominator = 1 + z * z / trials
    centre = (rate + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / denominator
    # the bounds are exact at 0/n and n/n, but float rounding can leave them a hair inside the rate
    return max(0.0, min(centre - half, rate)), min(1.0, max(centre + half, rate))


# ----- answer metrics (readers) ------------------------------------------------------------------------
def ruler_string_match(prediction: str, gold_values: Sequence[str]) -> float:
    """RULER's NIAH score: the fraction of gold values contained in the prediction, case-insensitive.

    Containment, not equality, because a generative reader wraps values in prose ("The special magic
    number for ... is 1234567."); multi-value questions earn partial credit per value found.
    """
    if not gold_values:
        raise ValueError("ruler_string_match needs at least one gold value")
    text = prediction.lower()
    return sum(value.lower() in text for value in gold_values) / len(gold_values)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_SPECIAL = frozenset({"yes", "no", "noanswer"})


def normalize_answer(text: str) -> str:
    """SQuAD/HotpotQA answer normalisation: lower-case, drop punctuation and articles, squash spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(gold: str | Sequence[str]) -> list[str]:
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not golds:
        raise ValueError("answer metrics need at least one gold answer")
    return golds


def answer_exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer (best over several golds)."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(g) for g in _golds(gold)))


def answer_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD token F1 between the normalised prediction and gold answer (best over several golds).

    As in the HotpotQA evaluation script, yes/no/noanswer only score when prediction and gold agree.
    """
    predicted = normalize_answer(prediction)
    best = 0.0
    for gold_text in _golds(gold):
        expected = normalize_answer(gold_text)
        if (predicted in _SPECIAL or expected in _SPECIAL) and predicted != expected:
            continue
        common = Counter(predicted.split()) & Counter(expected.split())
        same = sum(common.values())
        if same:
            precision, recall = same / len(predicted.split()), same / len(expected.split())
            best = max(best, 2 * precision * recall / (precision + recall))
    return best

