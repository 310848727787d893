"""Result files written atomically: a benchmark killed mid-write never leaves a half table behind."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from qrag_gym.atomic import atomic_write_bytes

STUDY_RESULTS = Path("benchmarks/studies/results")
"""Where the one-off studies write by default: relative to the working folder (the repository root
when run as documented), never inside an installed package."""
BENCHMARK_RESULTS = Path("benchmarks/results")

write_atomic = atomic_write_bytes


def add_out_argument(parser: argparse.ArgumentParser, default: Path) -> None:
    """``--out FOLDER``: the only place a script writes its result files."""
    parser.add_argument("--out", type=Path, default=default,
                        help=f"folder for the result files (default: {default}, relative to the working folder)")


def write_json(path: Path, value: Any) -> Path:
    return write_atomic(path, json.dumps(value, indent=2) + "\n")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
