"""Corpus embedding on Ray Data: ``qrag-cache warm --ray [ADDRESS]``.

The texts are cut into exactly the forward batches the local path encodes (sorted by length, then
``embedder.batch_size`` at a time: :func:`qrag_gym.cache_cli.warm` sorts the same way and its blocks
are whole batches), and a pool of Ray Data actors (``Dataset.map_batches`` with a callable class and
``concurrency=N``; ``num_gpus`` per actor on a GPU cluster) runs each batch through its own
:class:`~qrag_gym.embedding.TextEmbedder`. Same weights, same batch, same padding: on CPU actors the
vectors are bit-identical to the local path's (tests/test_ray.py; GPU actors give CUDA's vectors,
close but not bit-identical), and the driver writes them into the same on-disk cache
(:mod:`qrag_gym.cache`) that every env reads.

Only the driver touches the cache folder, so worker nodes need the model but no shared disk for it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from qrag_gym.embedding import TextEmbedder
from qrag_gym.integrations.ray_cluster import require_ray

ROWS_PER_CALL = 4
"""Forward batches per actor call (4 x 128 texts): large enough to amortise Ray Data's per-call cost,
small enough to spread a few thousand texts over several actors."""


class EncodeBatches:
    """A Ray Data actor: one frozen encoder, built once, encoding whole forward batches.

    It refuses to start when its weights or settings differ from the driver's (another model
    version on a worker node would write foreign vectors under the driver's cache key).
    """

    def __init__(self, model: str | None, max_length: int, batch_size: int, fingerprint: str, device: str = "cpu",
                 threads: int = 1) -> None:
        import torch

        torch.set_num_threads(threads)
        self.embedder = TextEmbedder(model, max_length=max_length, batch_size=batch_size, disk_cache=False,
                                     device=device)
        if self.embedder.fingerprint != fingerprint:
            raise RuntimeError(f"the worker's embedder {model!r} has fingerprint {self.embedder.fingerprint}, the "
                               f"driver's {fingerprint}: install the same model and package versions on every node")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts: list[str] = []
        vectors = []
        for row in batch["texts"]:
            row = [str(text) for text in row]
            vectors.append(self.embedder.encode_uncached(row))  # one row is one forward batch
            texts.extend(row)
        return {"text": np.array(texts, dtype=object), "vector": np.concatenate(vectors)}


def forward_batches(texts: Sequence[str], batch_size: int) -> list[list[str]]:
    """``texts`` sorted by length (stable) and cut into the batches the local encoder would run."""
    ordered = sorted(texts, key=len)
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


def embed_on_ray(embedder: TextEmbedder, texts: Sequence[str], workers: int, gpus_per_worker: float = 0.0,
                 on_vectors: Callable[[list[str], np.ndarray], None] | None = None) -> int:
    """Encode ``texts`` with ``workers`` Ray Data actors and hand each finished block to ``on_vectors``.

    ``on_vectors`` defaults to writing into ``embedder``'s disk cache (flushed per block, so an
    interrupted run keeps its progress). Ray must be initialised already
    (:func:`qrag_gym.integrations.ray_cluster.init_ray`). Returns the number of texts encoded.
    """
    ray = require_ray()
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if gpus_per_worker < 0:
        raise ValueError(f"gpus_per_worker must be non-negative, got {gpus_per_worker}")
    if on_vectors is None:
        if embedder.disk is None:
            raise ValueError("the embedder has no disk cache to write into: pass on_vectors")
        disk = embedder.disk

        def on_vectors(block_texts: list[str], vectors: np.ndarray) -> None:
            disk.add(block_texts, vectors)
            disk.flush()

    rows = forward_batches(list(dict.fromkeys(texts)), embedder.batch_size)
    if not rows:
        return 0
    settings: dict[str, Any] = {"model": embedder.name, "max_length": embedder.max_length, "batch_size": embedder.batch_size,
                                "fingerprint": embedder.fingerprint, "device": "cuda" if gpus_per_worker else "cpu"}
    dataset = ray.data.from_items([{"texts": row} for row in rows]).map_batches(
        EncodeBatches, fn_constructor_kwargs=settings, batch_size=ROWS_PER_CALL, concurrency=workers,
        num_cpus=1, num_gpus=gpus_per_worker or None, batch_format="numpy")
    from tqdm.auto import tqdm

    done = 0
    with tqdm(total=sum(map(len, rows)), desc=f"encoding on Ray ({workers} actors)", unit="text") as bar:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            block_texts = [str(text) for text in batch["text"]]
            on_vectors(block_texts, np.asarray(batch["vector"], dtype=np.float32))
            done += len(block_texts)
            bar.update(len(block_texts))
    return done


__all__ = ["EncodeBatches", "embed_on_ray", "forward_batches"]
