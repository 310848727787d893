"""Token ids of chunk and state texts for the full fine-tune build, memoised per text.

Only the full build reads token ids (its two encoders are trainable); the adapter build reads frozen
features by chunk id (:mod:`qrag_gym.features`).
"""

from __future__ import annotations

from typing import Sequence

from qrag_gym.models import load_tokenizer

TOKEN_MEMO_SIZE = 500_000
"""Texts whose token ids :func:`token_ids` keeps per tokenizer and cap (the noise books' and bAbI stories'
sentences several times over); the memo is emptied when it would pass this."""

_TOKEN_MEMO: dict[tuple[str | None, int], dict[str, list[int]]] = {}


def token_ids(name: str | None, texts: Sequence[str], limit: int) -> list[list[int]]:
    """Token ids of each text, at most ``limit``, without special tokens; memoised per text, shared per process.

    The fully fine-tuned Q-RAG encoders re-read the same book and story sentences every episode, in both
    the online and the target network; tokenising them again was 60% of an update on a GPU.
    """
    memo = _TOKEN_MEMO.setdefault((name, limit), {})
    missing = list(dict.fromkeys(text for text in texts if text not in memo))
    found = {}
    if missing:
        ids = load_tokenizer(name)(missing, add_special_tokens=False, truncation=True, max_length=limit, verbose=False)
        found = dict(zip(missing, ids["input_ids"]))
    result = [found[text] if text in found else memo[text] for text in texts]
    if len(memo) + len(found) > TOKEN_MEMO_SIZE:
        memo.clear()
    memo.update(found)
    return result
