"""Text -> vectors with any Hugging Face encoder: the embedder that scores every action space here.

Encoding is the dominant cost on a CPU (about 165 sentences/s for all-MiniLM-L6-v2 on 2 cores), so
texts are encoded in length-sorted batches under ``torch.inference_mode`` and every vector is kept in
an in-memory cache keyed by text, backed by an on-disk cache keyed by (model fingerprint, text):
recurring noise sentences and facts are encoded once per machine, not once per episode.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel

from qrag_gym.cache import EmbeddingDiskCache, is_one_off
from qrag_gym.models import DEFAULT_ALIASES, DEFAULT_MODEL, load_failed, load_tokenizer, resolve_model

PROGRESS_MIN_TEXTS = 5_000
"""Encoding at least this many new texts shows a progress bar with an ETA (about 30 s and up on 2 cores)."""


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Attention-mask-weighted mean over tokens: the pooling of both MiniLM and the Q-RAG encoders."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


class TextEmbedder:
    """A frozen text encoder with length-sorted batching and a bounded in-memory vector cache.

    Args:
        model: Hugging Face id or path; ``None`` or ``"default"`` is all-MiniLM-L6-v2 from its package.
        max_length: tokens kept per text (BABILong's chunk cap is 64).
        batch_size: texts per forward pass.
        normalize: L2-normalise outputs so dot products are cosine similarities.
        bf16: run the forward pass under bfloat16 autocast (about 1.8x faster on CPUs with avx512_bf16,
            several times *slower* on CPUs without it: see ``benchmarks/results/encoder_speed.md``).
        cache_size: how many text vectors to keep in memory (least recently used are dropped).
        disk_cache: persist vectors on disk (see :mod:`qrag_gym.cache`).
        cache_dir: where; default ``$QRAG_CACHE_DIR`` or the user cache folder.
    """

    def __init__(
        self,
        model: str | None = None,
        max_length: int = 64,
        batch_size: int = 128,
        normalize: bool = True,
        bf16: bool = False,
        cache_size: int = 500_000,
        disk_cache: bool = True,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        self.name = model or DEFAULT_MODEL
        path = resolve_model(model)
        self.tokenizer = load_tokenizer(model)
        try:
            self.model = AutoModel.from_pretrained(path).to(device).eval()
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise load_failed(model, "weights", err) from err
        self.device = device
        self.max_length = max_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.bf16 = bf16
        self.dim = int(self.model.config.hidden_size)
        self.fingerprint = self._fingerprint(path)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        root = Path(cache_dir) if cache_dir is not None else None
        self.disk = EmbeddingDiskCache(self.fingerprint, self.dim, root=root) if disk_cache else None

    def _fingerprint(self, path: str) -> str:
        """A hash of every weight byte and the encoding settings: different weights never share keys.

        Raw bytes, not sums: a float sum depends on the thread count and would split the cache.
        """
        digest = hashlib.sha256(f"{self.max_length}|{self.normalize}|{self.bf16}".encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    @torch.inference_mode()
    def _forward(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16):
            hidden = self.model(**batch).last_hidden_state
        pooled = mean_pool(hidden.float(), batch["attention_mask"])
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().numpy().astype(np.float32)

    def encode_uncached(self, texts: Sequence[str]) -> np.ndarray:
        """Encode ``texts`` in length-sorted batches (short texts share little padding)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([len(t) for t in texts], kind="stable")
        batches = range(0, len(order), self.batch_size)
        if len(texts) >= PROGRESS_MIN_TEXTS:  # the one-off encoding of a corpus: minutes on a CPU, so show an ETA
            batches = tqdm(batches, desc=f"encoding {len(texts):,} texts once ({self.name})", unit="batch")
        for start in batches:
            chunk = order[start : start + self.batch_size]
            out[chunk] = self._forward([texts[i] for i in chunk])
        return out

    def _stored_or_encoded(self, texts: list[str], persist: bool) -> np.ndarray:
        """Vectors of distinct ``texts`` absent from memory: from the disk cache, else encoded (and stored)."""
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        found = np.zeros(len(texts), dtype=bool)
        if self.disk is not None:
            found, vectors = self.disk.lookup(texts)
        missing = np.flatnonzero(~found)
        if missing.size:
            vectors[missing] = self.encode_uncached([texts[i] for i in missing])
            if persist and self.disk is not None:
                keep = [i for i in missing if not is_one_off(texts[i])]
                self.disk.add([texts[i] for i in keep], vectors[keep])
        return vectors

    def encode(self, texts: Sequence[str], persist: bool = True, remember: bool = True) -> np.ndarray:
        """Vectors for ``texts`` (shape ``(len(texts), dim)``), encoding only texts not seen before.

        ``persist=False`` keeps new vectors out of the disk cache: right for one-off queries. Registered
        generated texts (:func:`register_one_off_texts`) never reach it either. ``remember=False`` keeps
        them out of this embedder's text-keyed memory cache (the disk cache, if any, still stores them):
        the feature tables (:mod:`qrag_gym.features`) hold corpus vectors by id instead.
        """
        if not remember:
            out = np.empty((len(texts), self.dim), dtype=np.float32)
            absent = [row for row, text in enumerate(texts) if text not in self._cache]
            for row, text in enumerate(texts):
                if text in self._cache:
                    out[row] = self._cache[text]
            if absent:
                distinct = list(dict.fromkeys(texts[row] for row in absent))
                found = dict(zip(distinct, self._stored_or_encoded(distinct, persist)))
                for row in absent:
                    out[row] = found[texts[row]]
            return out
        unique = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if unique:
            for text, vector in zip(unique, self._stored_or_encoded(unique, persist)):
                self._cache[text] = vector
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            vector = self._cache.get(text)
            if vector is None:  # evicted by this very call (more texts than the cache holds)
                vector = self.encode_uncached([text])[0]
            else:
                self._cache.move_to_end(text)
            out[i] = vector
        return out


def shared_embedder(model: str | None = None, max_length: int = 64) -> TextEmbedder:
    """One :class:`TextEmbedder` per model and token cap per process, so envs and agents share its cache.

    The name is canonicalised first: ``"default"``, ``None`` and the hub id of the default model are the
    same embedder, and so are positional and keyword calls. Two instances of one model would each encode
    a text in a differently padded batch and disagree in the last float bits.
    """
    return _embedder_for(DEFAULT_MODEL if model in DEFAULT_ALIASES else model, int(max_length))


@lru_cache(maxsize=4)
def _embedder_for(model: str, max_length: int) -> TextEmbedder:
    return TextEmbedder(model, max_length=max_length)
