"""``qrag-data check``: what data the envs will find, per source, and what is missing.

Without a folder it resolves each source the way the envs do (``$QRAG_DATA_DIR``, then the user data
folder; see :mod:`qrag_gym.data.paths`), so its answer is the envs' answer. With ``--data-dir`` it
looks in that folder only: "is this folder complete?" is a different question from "what will the
envs use?", and falling back to another folder would hide a gap.

Counts are cheap line counts (questions are the bAbI lines with a tab, HotpotQA questions are the
non-blank jsonl lines), not a full parse: the loaders still report a malformed line by file and line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from qrag_gym.data.babi import TASK_FILES, TASKS
from qrag_gym.data.babilong_release import LENGTHS, RELEASE_DIR, release_file
from qrag_gym.data.hotpotqa import DEFAULT_FILES
from qrag_gym.data.noise import VALIDATION_BOOK_EVERY
from qrag_gym.data.paths import find_data_subdir
from qrag_gym.data.sources import BABI_DIR, BOOKS_DIR, babi_test_file

MIN_BOOKS = VALIDATION_BOOK_EVERY
"""Book i is a validation book when i % 6 == 5: fewer than six books leave the validation split empty."""


@dataclass
class SourceCheck:
    """One source: whether the default envs have what they need, and lines that say what is there."""

    name: str
    folder: Path | None
    ok: bool
    lines: list[str] = field(default_factory=list)
    optional: bool = False
    """Not read by any default env (the BABILong release): its absence never fails the check."""


def _locate(subdir: str, data_dir: str | os.PathLike[str] | None) -> Path | None:
    if data_dir is not None:
        path = Path(data_dir).expanduser() / subdir
        return path if path.is_dir() else None
    return find_data_subdir(subdir)


def _count_lines(path: Path, needle: str | None) -> int:
    with open(path, encoding="utf-8", errors="replace") as handle:
        if needle is None:
            return sum(1 for line in handle if line.strip())
        return sum(1 for line in handle if needle in line)


def check_babi(data_dir: str | os.PathLike[str] | None = None) -> SourceCheck:
    """Train files of qa1..qa5 are needed by the BABILong env; test files are for final evaluation only."""
    folder = _locate(BABI_DIR, data_dir)
    if folder is None:
        return SourceCheck("babi", None, False, [f"missing: no {BABI_DIR}/ folder (qrag-data fetch babi)"])
    report = SourceCheck("babi", folder, True)
    for task, train in TASK_FILES.items():
        parts = []
        for split, name in (("train", train), ("test", babi_test_file(train))):
            path = folder / name
            if path.is_file():
                parts.append(f"{split} {_count_lines(path, chr(9)):,} questions")
            else:
                parts.append(f"{split} MISSING ({name})" if split == "train" else f"test missing ({name}; evaluation only)")
                report.ok = report.ok and split != "train"
        report.lines.append(f"{task}: " + ", ".join(parts))
    if not (folder.parent / "LICENSE.txt").is_file():
        report.lines.append(f"note: no licence file at {folder.parent / 'LICENSE.txt'} (bAbI is CC BY 3.0)")
    return report


def check_books(data_dir: str | os.PathLike[str] | None = None) -> SourceCheck:
    """Haystack books for BABILong and NIAH: at least six, so the validation split has one."""
    folder = _locate(BOOKS_DIR, data_dir)
    if folder is None:
        return SourceCheck("books", None, False, [f"missing: no {BOOKS_DIR}/ folder (qrag-data fetch books)"])
    books = sorted(folder.glob("*.txt"))
    size = sum(book.stat().st_size for book in books)
    ok = len(books) >= MIN_BOOKS
    line = f"{len(books)} books ({size / 2**20:.1f} MiB of text)"
    if not ok:
        line += f"; need at least {MIN_BOOKS} so that the validation split (book i with i % 6 == 5) is not empty"
    return SourceCheck("books", folder, ok, [line])


def check_hotpotqa(data_dir: str | os.PathLike[str] | None = None) -> SourceCheck:
    """The HotpotQA env reads the first of :data:`DEFAULT_FILES` present in the ``hotpotqa`` folder."""
    folder = _locate("hotpotqa", data_dir)
    names = [Path(rel).name for rel in DEFAULT_FILES]
    if folder is None:
        return SourceCheck("hotpotqa", None, False, ["missing: no hotpotqa/ folder (qrag-data fetch hotpotqa)"])
    for name in names:
        if (folder / name).is_file():
            return SourceCheck("hotpotqa", folder, True,
                               [f"{name}: {_count_lines(folder / name, None):,} questions (the env's default file)"])
    return SourceCheck("hotpotqa", folder, False, [f"missing: none of {', '.join(names)} (qrag-data fetch hotpotqa)"])


def check_babilong(data_dir: str | os.PathLike[str] | None = None) -> SourceCheck:
    """Which release lengths are present per task (``source="babilong"``); optional, so never a failure."""
    folder = _locate(RELEASE_DIR, data_dir)
    if folder is None or not (folder / "data").is_dir():
        return SourceCheck("babilong", folder, False, [f"not fetched (optional, for source='babilong': "
                                                       f"qrag-data fetch babilong --lengths ...)"], optional=True)
    report = SourceCheck("babilong", folder, True, optional=True)
    for task in TASKS:
        present = [n for n in LENGTHS if release_file(folder, task, n).is_file()]
        size = sum(release_file(folder, task, n).stat().st_size for n in present)
        report.lines.append(f"{task}: {' '.join(present) or 'no lengths'}" + (f" ({size / 2**20:.1f} MiB)" if present else ""))
    others = sorted(p.name for p in (folder / "data").iterdir() if p.is_dir() and p.name not in TASKS)
    if others:
        report.lines.append(f"also present, not used by the env: {' '.join(others)}")
    return report


def check_all(data_dir: str | os.PathLike[str] | None = None) -> list[SourceCheck]:
    return [check_babi(data_dir), check_books(data_dir), check_hotpotqa(data_dir), check_babilong(data_dir)]


def format_report(checks: list[SourceCheck], data_dir: str | os.PathLike[str] | None) -> str:
    where = f"in {data_dir} only" if data_dir is not None else "where the envs look ($QRAG_DATA_DIR, then the user data folder)"
    out = [f"Data {where}:"]
    for check in checks:
        status = "ok" if check.ok else "absent" if check.optional else "MISSING"
        out.append(f"{check.name:9s} {status:8s} {check.folder if check.folder else '-'}")
        out.extend(f"            {line}" for line in check.lines)
    missing = [c.name for c in checks if not c.ok and not c.optional]
    if missing:
        to = f" --to {data_dir}" if data_dir is not None else ""
        out.append(f"Not everything the default envs need is there: run `qrag-data fetch {' '.join(missing)}{to}`.")
    else:
        out.append("Everything the default envs need is there.")
    return "\n".join(out)
