"""``qrag-data fetch``: download a public source, verify it, and install it into a data folder.

What it guarantees, and why:
- Downloads go to ``<data>/.qrag-data-downloads/<archive>.part`` and resume after an interruption
  (HTTP ``Range``), so a 46 MB file on a flaky link is not restarted from zero.
- Nothing is unpacked before the archive's digests match (see :mod:`qrag_gym.data.sources` for
  where each published checksum comes from). Where no SHA-256 is published (NLTK's gutenberg.zip),
  the digest of the first download is written to ``<data>/qrag-data.lock.json`` and every later
  download into that folder must match it: this is trust on first use, not a published pin.
- The archive is unpacked into a staging folder first; existing files that differ from what would
  be installed are refused (``--overwrite`` replaces them), so hand-made or older data is never
  silently replaced. Each file is moved into place with ``os.replace`` (atomic per file).
- The lock file also lists the files installed and their SHA-256, so a second ``fetch`` of an
  intact source downloads nothing.
- Only files this tool created are ever deleted: its ``.part``/archive downloads and staging folder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from qrag_gym.atomic import atomic_write_bytes
from qrag_gym.data.download import ChecksumError, DataFetchError, Expected, retrieve
from qrag_gym.data.paths import DATA_ENV_VAR, user_data_dir
from qrag_gym.data.sources import SOURCES, Source

MIRROR_ENV_VAR = "QRAG_DATA_MIRROR"
"""Base URL serving the archives under their published names (``<mirror>/gutenberg.zip``, ...)."""

LOCK_FILE = "qrag-data.lock.json"
DOWNLOADS_DIR = ".qrag-data-downloads"
TOFU = "trust-on-first-use"


def default_fetch_dir() -> Path:
    """Where ``fetch`` installs by default: ``$QRAG_DATA_DIR``, else the user data folder the envs search."""
    value = os.environ.get(DATA_ENV_VAR)
    return Path(value).expanduser() if value else user_data_dir()


def source_urls(source: Source, url: str | None = None) -> tuple[str, ...]:
    """An explicit ``url``, else ``$QRAG_DATA_MIRROR/<archive name>``, else the source's own URLs."""
    if url:
        return (url,)
    mirror = os.environ.get(MIRROR_ENV_VAR)
    if mirror:
        return (f"{mirror.rstrip('/')}/{source.filename}",)
    return source.urls


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_lock(root: Path) -> dict[str, Any]:
    """The lock file of a data folder (``{"version": 1, "sources": {...}}``), empty when absent."""
    path = root / LOCK_FILE
    if not path.is_file():
        return {"version": 1, "sources": {}}
    try:
        lock = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataFetchError(f"{path} is not valid JSON ({err}); fix or delete it (it only records "
                             f"what qrag-data installed)") from err
    lock.setdefault("sources", {})
    return lock


def save_lock(root: Path, lock: dict[str, Any]) -> None:
    atomic_write_bytes(root / LOCK_FILE, json.dumps(lock, indent=2, sort_keys=True) + "\n")


def _remove_if_empty(folder: Path) -> None:
    """Remove the tool's downloads folder unless something (another source's ``.part``) is still in it."""
    try:
        folder.rmdir()
    except OSError:
        pass


def installed_intact(root: Path, entry: dict[str, Any] | None) -> bool:
    """True when every file the lock says was installed is there with the same SHA-256."""
    if not entry or not entry.get("files"):
        return False
    return all((root / rel).is_file() and sha256_of(root / rel) == digest for rel, digest in entry["files"].items())


@dataclass
class FetchResult:
    source: str
    root: Path
    status: str
    """"installed" or "already present"."""
    url: str = ""
    sha256: str = ""
    checksum: str = ""
    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)


def _expected(source: Source, sha256: str | None, entry: dict[str, Any] | None) -> tuple[Expected, str]:
    """What the archive must match, and a phrase saying where that expectation comes from."""
    if sha256:
        return Expected(sha256=sha256.lower()), "given with --sha256"
    if source.sha256:
        return Expected(sha256=source.sha256, md5=source.md5, size=source.size), source.checksum_origin
    recorded = entry.get("archive_sha256") if entry and entry.get("checksum") == TOFU else None
    if recorded:
        when = entry.get("recorded", "an earlier run") if entry else "an earlier run"
        return (Expected(sha256=recorded, md5=source.md5, size=source.size),
                f"recorded at first download ({when}) in {LOCK_FILE}")
    return Expected(md5=source.md5, size=source.size), TOFU


def _stage_and_install(source: Source, archive: Path, root: Path, overwrite: bool, result: FetchResult) -> dict[str, str]:
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".qrag-data-staging-"))
    try:
        written = source.unpack(archive, staging)
        digests = {rel: sha256_of(staging / rel) for rel in written}
        conflicts = [rel for rel in written
                     if (root / rel).exists() and (not (root / rel).is_file() or sha256_of(root / rel) != digests[rel])]
        if conflicts and not overwrite:
            listed = "\n  ".join(str(root / rel) for rel in conflicts[:5])
            more = f"\n  ... and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
            raise DataFetchError(
                f"{len(conflicts)} existing file(s) differ from what '{source.name}' would install; nothing "
                f"was changed:\n  {listed}{more}\nPass --overwrite to replace them, or --to another folder."
            )
        for rel in written:
            target = root / rel
            if target.is_file() and rel not in conflicts:
                result.unchanged.append(rel)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, target)
            (result.replaced if rel in conflicts else result.added).append(rel)
        return digests
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_source(name: str, root: Path | None = None, *, url: str | None = None, sha256: str | None = None,
                 overwrite: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print) -> FetchResult:
    """Download, verify and install one source (``babi``, ``books`` or ``hotpotqa``) into ``root``.

    ``url`` replaces the source's URLs (and ``$QRAG_DATA_MIRROR``); ``sha256`` replaces the expected
    digest (for a mirror that serves a different file, or a test fixture).
    """
    if name not in SOURCES:
        raise DataFetchError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}")
    source = SOURCES[name]
    root = Path(root).expanduser() if root is not None else default_fetch_dir()
    if root.exists() and not root.is_dir():
        raise DataFetchError(f"--to {root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    lock = load_lock(root)
    entry = lock["sources"].get(name)
    if installed_intact(root, entry):
        log(f"{name}: already present in {root} ({len(entry['files'])} files, checked against {LOCK_FILE})")
        return FetchResult(name, root, "already present", entry.get("url", ""), entry.get("archive_sha256", ""))

    expected, origin = _expected(source, sha256, entry)
    downloads = root / DOWNLOADS_DIR
    archive = downloads / source.filename
    log(f"{name}: {source.title}")
    try:
        used, digests = retrieve(source_urls(source, url), archive, expected, label=source.filename, progress=progress)
    except ChecksumError as err:
        _remove_if_empty(downloads)
        raise ChecksumError(f"{err}\nExpected digest: {origin}. The download was deleted and nothing was "
                            f"installed. If this mirror serves a different file on purpose, pass --sha256.") from err
    except DataFetchError:
        _remove_if_empty(downloads)  # kept when it holds a .part to resume from
        raise
    if origin == TOFU:
        log(f"{name}: no published SHA-256 for {source.filename}; recording {digests.sha256} in "
            f"{root / LOCK_FILE} (trust on first use: later downloads must match it)")
    result = FetchResult(name, root, "installed", used, digests.sha256, origin)
    files = _stage_and_install(source, archive, root, overwrite, result)
    recorded = entry.get("recorded") if entry and entry.get("archive_sha256") == digests.sha256 else None
    lock["sources"][name] = {
        "archive": source.filename,
        "archive_sha256": digests.sha256,
        "checksum": TOFU if origin == TOFU or origin.startswith("recorded at first download") else origin,
        "url": used,
        "recorded": recorded or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": files,
    }
    save_lock(root, lock)
    archive.unlink(missing_ok=True)
    _remove_if_empty(downloads)
    log(f"{name}: {len(result.added)} added, {len(result.unchanged)} unchanged, "
        f"{len(result.replaced)} replaced in {root} (sha256 {digests.sha256[:12]}..., {origin})")
    return result
