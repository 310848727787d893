"""Result files written atomically: a benchmark killed mid-write never leaves a half table behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qrag_gym.atomic import atomic_write_bytes

RESULTS_DIR = Path(__file__).parent / "results"


write_atomic = atomic_write_bytes


def write_json(path: Path, value: Any) -> Path:
    return write_atomic(path, json.dumps(value, indent=2) + "\n")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
