"""Saving and loading Q-RAG models: safetensors weights plus a JSON config, written atomically.

``save_model``/``load_model`` are the one-call round trip for a trained model; ``save_trainer``
adds what resuming needs (target network, optimiser, schedule, counters), loaded with
``weights_only=True`` so a checkpoint can never run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from agents.qrag.config import QRAGConfig
from qrag_gym.atomic import atomic_write
from agents.qrag.networks import QNetwork
from qrag_gym.embedding import TextEmbedder, shared_embedder

WEIGHTS, CONFIG, TRAINER = "model.safetensors", "config.json", "trainer_state.pt"


def save_model(network: QNetwork, folder: Path) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``folder``."""
    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    atomic_write(folder / WEIGHTS, lambda temp: save_file(tensors, temp))
    atomic_write(folder / CONFIG, lambda temp: Path(temp).write_text(network.config.to_json()))


def load_model(folder: str | Path, embedder: TextEmbedder | None = None, device: str = "cpu") -> QNetwork:
    """Load a model saved by :func:`save_model` (the frozen embedder is shared per process)."""
    folder = Path(folder)
    for name in (WEIGHTS, CONFIG):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a Q-RAG model folder: {name} is missing")
    config = QRAGConfig.load(folder / CONFIG)
    if not config.finetune_encoder and embedder is None:
        embedder = shared_embedder(config.encoder, config.chunk_max_tokens)
    network = QNetwork(config, embedder)
    network.load_state_dict(load_file(folder / WEIGHTS, device=device))
    return network.to(device).eval()


def save_trainer(folder: Path, state: dict[str, Any]) -> None:
    """Write the resumable trainer state (tensors and plain values only)."""
    atomic_write(Path(folder) / TRAINER, lambda temp: torch.save(state, temp))


def load_trainer(folder: Path) -> dict[str, Any] | None:
    """The trainer state saved in ``folder``, or None if there is none."""
    path = Path(folder) / TRAINER
    return torch.load(path, weights_only=True) if path.is_file() else None
