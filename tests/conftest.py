"""Shared fixtures: real data from ``$QRAG_DATA_DIR`` (tests skip cleanly without it), one CPU thread."""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import qrag_gym  # noqa: F401  (registers the env ids)

torch.set_num_threads(1)  # the test machines are 2 shared cores


@pytest.fixture(scope="session")
def data_dir() -> Path:
    folder = os.environ.get("QRAG_DATA_DIR")
    if not folder or not (Path(folder) / "babi" / "en-10k").is_dir() or not (Path(folder) / "noise" / "gutenberg").is_dir():
        pytest.skip("real data not found: set QRAG_DATA_DIR to a folder with babi/en-10k and noise/gutenberg")
    return Path(folder)


@pytest.fixture
def make_env(data_dir: Path):
    """``make_env(task, tokens)``: a validation-split BABILong env on real data (validation books are few,
    so the embedder's in-process cache is shared by every test)."""

    def factory(task: str = "qa1", tokens: int = 1_000, **kwargs) -> gym.Env:
        return gym.make("QRAG-Babilong-v0", task=task, context_tokens=tokens, split="validation",
                        data_dir=str(data_dir), source="real", **kwargs)

    return factory
