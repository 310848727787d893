"""Per-episode retrieval metrics, defined once so every agent, test and benchmark reports the same thing.

For a question with k supporting chunks and the chunks an agent selected (in selection order):
- ``success_at_k``: all k supporting chunks are among the first k selections (strict: no wasted step);
- ``success_at_t``: all of them are among every selection made within the step budget T (the paper's
  Fact-EM, ``gt ⊆ pred``);
- ``precision`` / ``recall`` / ``f1``: set overlap between the *kept* chunks and the supporting ones.
  ``kept`` is what the agent hands to a reader, e.g. after the Q-threshold stop; it defaults to every
  selection.
"""

from __future__ import annotations

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
