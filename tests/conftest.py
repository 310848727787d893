"""Shared fixtures: real data from $QRAG_DATA_DIR (skip cleanly when absent), small threads."""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import qrag_gym  # noqa: F401  (registers the env ids)
from qrag_gym.document import Document

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = os.environ.get("QRAG_DATA_DIR")
    if not root or not (Path(root) / "babi" / "en-10k").is_dir() or not (Path(root) / "noise" / "gutenberg").is_dir():
        pytest.skip("real data not available: set QRAG_DATA_DIR to the folder holding babi/ and noise/")
    return Path(root)


@pytest.fixture
def make_env(data_dir: Path):
    """``make_env(task, tokens)``: a validation-split BABILong env on real data (the validation books are
    few, so the embedder's in-process cache is shared by every test that encodes)."""

    def factory(task: str = "qa1", tokens: int = 1_000, **kwargs) -> gym.Env:
        return gym.make("QRAG-Babilong-v0", task=task, context_tokens=tokens, split="validation",
                        data_dir=str(data_dir), source="real", **kwargs)

    return factory


@pytest.fixture
def single_thread():
    """One torch thread for tests dominated by one-text encoder calls: on a busy 2-core machine a
    second thread only adds contention (measured here: 26 ms vs 139 ms per forward)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL_BOOKS = ("blake-poems", "blake-songs", "burgess-busterbrown", "carroll-alice", "shakespeare-caesar", "whitman-patriotic")
"""Six short real books (about 5,000 sentences): encoding them cold fits in a CI minute. The last,
whitman-patriotic, is the validation book under the sorted-index rule."""


@pytest.fixture(scope="session")
def small_data_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real bAbI stories with a small real haystack, linked (never copied) from the data folder."""
    root = tmp_path_factory.mktemp("small-data")
    (root / "babi").mkdir()
    (root / "babi" / "en-10k").symlink_to(data_dir / "babi" / "en-10k")
    books = root / "noise" / "gutenberg"
    books.mkdir(parents=True)
    for name in SMALL_BOOKS:
        (books / f"{name}.txt").symlink_to(data_dir / "noise" / "gutenberg" / f"{name}.txt")
    return root


def play_checking_valid_actions(agent, env: gym.Env, seeds: range) -> None:
    """Play one episode per seed and fail at the first action the env flags as invalid."""
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        document = Document(env.unwrapped)
        agent.reset(obs, info, document)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(agent.act(obs, info, document))
            assert not info["invalid_action"], f"{type(agent).__name__} chose a masked action"
            done = terminated or truncated
