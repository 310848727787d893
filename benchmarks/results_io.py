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
    """``--out FOLDER``, the only place a script writes its result files, and ``--overwrite`` to replace them
    there (see :func:`claim_outputs`)."""
    parser.add_argument("--out", type=Path, default=default,
                        help=f"folder for the result files (default: {default}, relative to the working folder)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace result files of the same names already in --out (else the run is refused)")


def claim_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Refuse, before any work, to replace result files ``names`` that already exist in ``args.out`` unless
    ``--overwrite``: a study never overwrites earlier results silently (the committed ones included)."""
    existing = [str(args.out / name) for name in names if (args.out / name).exists()]
    if existing and not args.overwrite:
        parser.error(f"{', '.join(existing)} already exist: pass --overwrite to replace them, or --out another folder")


def write_json(path: Path, value: Any) -> Path:
    return write_atomic(path, json.dumps(value, indent=2) + "\n")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
