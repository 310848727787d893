"""The public sources ``qrag-data fetch`` knows, their checksums, and how each archive is unpacked.

Each unpacker writes into a staging folder exactly the layout the loaders read (``babi/en-10k/``,
``noise/gutenberg/``, ``hotpotqa/``) and returns the relative paths it wrote; the installer in
:mod:`qrag_gym.data.fetch` then moves them into the data folder.

Checksums, and where each one was found (never made up):
- bAbI ``tasks_1-20_v1-2.tar.gz``: SHA-256 and size published in Hugging Face ``datasets``
  (``datasets/babi_qa/dataset_infos.json``, ``download_checksums``, commit 040102f1).
- HotpotQA ``hotpot_dev_distractor_v1.json``: SHA-256 and size published in Hugging Face ``datasets``
  (``datasets/hotpot_qa/dataset_infos.json``, commit 040102f1); the same SHA-256 is pinned by
  ParlAI (``parlai/tasks/hotpotqa/build.py``).
- NLTK ``gutenberg.zip``: no published SHA-256 was found. nltk_data's own ``index.xml`` (commit
  005569f5) publishes its MD5 and size, which are checked; the SHA-256 is recorded at the first
  download in the data folder's lock file and checked on every later download (trust on first use).
"""

from __future__ import annotations

import json
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qrag_gym.data.babi import TASK_FILES
from qrag_gym.data.download import DataFetchError

BABI_DIR = "babi/en-10k"
BOOKS_DIR = "noise/gutenberg"
HOTPOTQA_FILE = "hotpotqa/hotpot_dev_distractor_v1.jsonl"
"""What the HotpotQA unpacker writes; :mod:`qrag_gym.envs.hotpotqa` finds it by default."""


def babi_test_file(train_file: str) -> str:
    """``qa1_single-supporting-fact_train.txt`` -> ``qa1_single-supporting-fact_test.txt``."""
    return train_file.replace("_train.txt", "_test.txt")


@dataclass(frozen=True)
class Source:
    """One downloadable archive and how it becomes files in the data folder."""

    name: str
    title: str
    filename: str
    """The archive's published file name; a mirror (``QRAG_DATA_MIRROR``) serves it under this name."""
    urls: tuple[str, ...]
    """Tried in order until one answers."""
    sha256: str | None
    """Published SHA-256, or None when none was found (then: trust on first use, see the lock file)."""
    checksum_origin: str
    unpack: Callable[[Path, Path], list[str]]
    md5: str | None = None
    size: int | None = None
    licence: str = ""


def _write(staging: Path, rel: str, data: bytes) -> str:
    path = staging / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel


BABI_ROOT = "tasks_1-20_v1-2"


def unpack_babi(archive: Path, staging: Path) -> list[str]:
    """en-10k qa1..qa5 train and test files into ``babi/en-10k/``, the licence and readme into ``babi/``.

    Only the named members are read (never ``extractall``), so a crafted archive cannot write
    outside the staging folder.
    """
    wanted: dict[str, str] = {}
    for train in TASK_FILES.values():
        for name in (train, babi_test_file(train)):
            wanted[f"{BABI_ROOT}/en-10k/{name}"] = f"{BABI_DIR}/{name}"
    wanted[f"{BABI_ROOT}/LICENSE.txt"] = "babi/LICENSE.txt"
    optional = {f"{BABI_ROOT}/README.txt": "babi/README.txt"}
    written: list[str] = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
            missing = sorted(set(wanted) - set(members))
            if missing:
                raise DataFetchError(f"{archive.name} lacks {', '.join(missing[:3])}"
                                     f"{' ...' if len(missing) > 3 else ''}: is it the bAbI v1.2 archive "
                                     f"(tasks_1-20_v1-2.tar.gz)?")
            for member_name, rel in {**wanted, **{k: v for k, v in optional.items() if k in members}}.items():
                handle = tar.extractfile(members[member_name])
                assert handle is not None  # regular files always have a stream
                written.append(_write(staging, rel, handle.read()))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataFetchError(f"{archive.name} is not a readable tar.gz archive: {err}") from err
    return written


_PG_START = re.compile(
    rb"^(?:\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E(?:BOOK|TEXT)|\*END\*THE SMALL PRINT!)[^\n]*\n",
    re.IGNORECASE | re.MULTILINE,
)
_PG_END = re.compile(
    rb"^(?:\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E(?:BOOK|TEXT)|End of (?:the )?Project Gutenberg'?s? )",
    re.IGNORECASE | re.MULTILINE,
)


def strip_gutenberg_boilerplate(text: bytes) -> bytes:
    """Drop a Project Gutenberg licence header and footer when the markers are there; else return as is.

    The NLTK selection already comes without them, but a mirror or a newer zip might not: licence
    prose in the haystack would be noise unlike the rest. Bytes, not str, so an odd encoding is
    passed through untouched.
    """
    start = _PG_START.search(text)
    body = text[start.end():] if start else text
    end = _PG_END.search(body)
    body = body[: end.start()] if end else body
    if start is None and end is None:
        return text
    return body.strip(b"\r\n") + b"\n"


def unpack_books(archive: Path, staging: Path) -> list[str]:
    """Every ``gutenberg/*.txt`` of NLTK's zip into ``noise/gutenberg/``, boilerplate stripped."""
    written: list[str] = []
    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                folder, _, name = info.filename.rpartition("/")
                if info.is_dir() or folder != "gutenberg" or not name or name.startswith("."):
                    continue
                data = bundle.read(info)
                if name.endswith(".txt"):
                    data = strip_gutenberg_boilerplate(data)
                written.append(_write(staging, f"{BOOKS_DIR}/{name}", data))
    except (zipfile.BadZipFile, OSError) as err:
        raise DataFetchError(f"{archive.name} is not a readable zip archive: {err}") from err
    if not any(rel.endswith(".txt") for rel in written):
        raise DataFetchError(f"{archive.name} has no gutenberg/*.txt books: is it NLTK's gutenberg.zip?")
    return written


def unpack_hotpotqa(archive: Path, staging: Path) -> list[str]:
    """The official JSON list of records, rewritten one record per line (the loader reads jsonl).

    Every record is checked with the loader's own parser first, so a file the env would reject is
    never installed.
    """
    from qrag_gym.data.hotpotqa import parse_record

    try:
        with open(archive, encoding="utf-8") as handle:
            records = json.load(handle)
    except (ValueError, OSError) as err:
        raise DataFetchError(f"{archive.name} is not a JSON file: {err}") from err
    if not isinstance(records, list) or not records:
        raise DataFetchError(f"{archive.name}: expected a non-empty JSON list of HotpotQA records")
    for index, record in enumerate(records):
        try:
            parse_record(record)
        except (ValueError, KeyError, TypeError) as err:
            raise DataFetchError(f"{archive.name}: record {index} is not a HotpotQA record: {err}") from err
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    return [_write(staging, HOTPOTQA_FILE, lines.encode("utf-8"))]


SOURCES: dict[str, Source] = {
    "babi": Source(
        name="babi",
        title="bAbI tasks v1.2 (en-10k qa1-qa5, train and test)",
        filename="tasks_1-20_v1-2.tar.gz",
        urls=(
            "https://dl.fbaipublicfiles.com/babi/tasks_1-20_v1-2.tar.gz",
            "http://www.thespermwhale.com/jaseweston/babi/tasks_1-20_v1-2.tar.gz",
        ),
        # Published in huggingface/datasets, datasets/babi_qa/dataset_infos.json (commit
        # 040102f100964a33fd334e2695f1c493fa6b92db), "download_checksums" of the thespermwhale URL.
        sha256="0364ebde659f14d11bc21744516c5ec49d3d06cb692733f66680771244998898",
        size=15_719_851,
        checksum_origin="published (huggingface/datasets babi_qa dataset_infos.json)",
        unpack=unpack_babi,
        licence="CC BY 3.0 (babi/LICENSE.txt)",
    ),
    "books": Source(
        name="books",
        title="Project Gutenberg books (NLTK's gutenberg selection)",
        filename="gutenberg.zip",
        urls=("https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/corpora/gutenberg.zip",),
        # No SHA-256 published anywhere we could find. MD5 and size from nltk/nltk_data index.xml
        # (commit 005569f5d91002697c5dfd5bced624209af0b3bb): <package id="gutenberg" size="4251829"
        # checksum="48c9c8605cd70b0230687557ee543633" .../> (NLTK's downloader checks this MD5).
        sha256=None,
        md5="48c9c8605cd70b0230687557ee543633",
        size=4_251_829,
        checksum_origin="MD5 and size published (nltk_data index.xml); SHA-256 trust-on-first-use",
        unpack=unpack_books,
        licence="public domain",
    ),
    "hotpotqa": Source(
        name="hotpotqa",
        title="HotpotQA distractor dev set (7,405 questions)",
        filename="hotpot_dev_distractor_v1.json",
        urls=("http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_dev_distractor_v1.json",),
        # Published in huggingface/datasets, datasets/hotpot_qa/dataset_infos.json (commit
        # 040102f100964a33fd334e2695f1c493fa6b92db); also pinned in facebookresearch/ParlAI,
        # parlai/tasks/hotpotqa/build.py.
        sha256="4e9ecb5c8d3b719f624d66b60f8d56bf227f03914f5f0753d6fa1b359d7104ea",
        size=46_320_117,
        checksum_origin="published (huggingface/datasets hotpot_qa dataset_infos.json; ParlAI)",
        unpack=unpack_hotpotqa,
        licence="CC BY-SA 4.0",
    ),
}
