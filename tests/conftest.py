"""Shared fixtures: real data from $QRAG_DATA_DIR (skip cleanly when absent), small threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = os.environ.get("QRAG_DATA_DIR")
    if not root or not (Path(root) / "babi" / "en-10k").is_dir():
        pytest.skip("real data not available: set QRAG_DATA_DIR to the folder holding babi/ and noise/")
    return Path(root)
