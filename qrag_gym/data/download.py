"""Resumable, verified HTTP downloads with the standard library only.

Why urllib and not requests: requests is not a dependency, and urllib does ``Range`` requests fine.
A download streams into ``<name>.part`` beside its final name; an interrupted run leaves the ``.part``
behind and the next run asks the server for the rest (``Range: bytes=<size>-``). A server that ignores
``Range`` answers 200 with the whole file, and the ``.part`` is started afresh. Only a file whose
digests match is renamed (atomically) to its final name; one that fails is deleted, so a corrupted
download can never be mistaken for a good one later.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

CHUNK_BYTES = 1 << 16
TIMEOUT_S = 60
USER_AGENT = "qrag-data/0.1 (qrag-gym dataset fetcher; Python urllib)"
"""Some hosts refuse urllib's default agent string; this one says who is asking."""

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DataFetchError(RuntimeError):
    """A download, verification or install step failed; the message says what to do next."""


class DownloadError(DataFetchError):
    """The server could not be reached or the transfer stopped; a ``.part`` file may be kept to resume."""


class ChecksumError(DataFetchError):
    """A downloaded file does not have the expected size or digest; it has been deleted."""


@dataclass(frozen=True)
class Expected:
    """What a download must match. ``sha256=None`` means no digest is known yet (trust on first use)."""

    sha256: str | None = None
    md5: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Digests:
    sha256: str
    md5: str
    size: int


def file_digests(path: Path) -> Digests:
    """SHA-256, MD5 and size of a file, read once in chunks (archives are tens of MB)."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return Digests(sha.hexdigest(), md5.hexdigest(), size)


def check_digests(path: Path, expected: Expected, what: str) -> Digests:
    """Return the file's digests, or raise :class:`ChecksumError` naming every field that differs."""
    got = file_digests(path)
    wrong = []
    if expected.size is not None and got.size != expected.size:
        wrong.append(f"size {got.size:,} bytes, expected {expected.size:,}")
    if expected.md5 is not None and got.md5 != expected.md5.lower():
        wrong.append(f"md5 {got.md5}, expected {expected.md5.lower()}")
    if expected.sha256 is not None and got.sha256 != expected.sha256.lower():
        wrong.append(f"sha256 {got.sha256}, expected {expected.sha256.lower()}")
    if wrong:
        raise ChecksumError(f"{what} does not match: " + "; ".join(wrong))
    return got


def _request(url: str, start: int) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def download_part(url: str, part: Path, *, label: str, progress: bool = True, size: int | None = None) -> None:
    """Append the rest of ``url`` to ``part`` (or write it whole); raise :class:`DownloadError` on failure.

    ``size``, when known, lets a complete ``.part`` skip the request altogether.
    """
    from tqdm import tqdm  # lazy: keeps ``qrag-data --help`` quick

    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have == size:
        return
    if size is not None and have > size:
        part.unlink()
        have = 0
    try:
        try:
            response = _request(url, have)
        except urllib.error.HTTPError as err:
            if err.code != 416 or not have:
                raise
            part.unlink()  # 416: our .part is not a prefix of what the server has; start over
            have = 0
            response = _request(url, 0)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"{url}: cannot connect ({reason})") from err
    with response:
        mode = "wb"
        if have and response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != have:
                raise DownloadError(f"{url}: asked for bytes {have}- but the server sent "
                                    f"{response.headers.get('Content-Range')!r}; delete {part} and run again")
            mode = "ab"
        else:
            have = 0  # 200: the server ignored Range and sends the whole file
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else size
        with open(part, mode) as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=label, disable=not progress) as bar:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                out.flush()
                raise DownloadError(f"{url}: transfer stopped after {out.tell():,} bytes ({err}); "
                                    f"{part} is kept: run the same command again to resume") from err
    got = part.stat().st_size
    if total is not None and got < total:
        raise DownloadError(f"{url}: connection closed after {got:,} of {total:,} bytes; "
                            f"{part} is kept: run the same command again to resume")


def retrieve(urls: Sequence[str], target: Path, expected: Expected, *, label: str, progress: bool = True) -> tuple[str, Digests]:
    """Download the first reachable URL into ``target`` (via ``target.part``) and verify it.

    An already complete, verified ``target`` from an earlier run is reused. Returns the URL used (or
    ``"(already downloaded)"``) and the digests. A failed verification deletes the file and raises.
    """
    what = f"{target.name}"
    if target.exists():
        try:
            return "(already downloaded)", check_digests(target, expected, what)
        except ChecksumError:
            target.unlink()  # our own earlier download, now unusable: fetch it again
    part = target.with_name(target.name + ".part")
    failures: list[str] = []
    for url in urls:
        try:
            download_part(url, part, label=label, progress=progress, size=expected.size)
        except DownloadError as err:
            failures.append(str(err))
            continue
        try:
            digests = check_digests(part, expected, f"{what} downloaded from {url}")
        except ChecksumError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, target)
        return url, digests
    kept = f" The partial file {part} is kept for the next run." if part.exists() else ""
    raise DownloadError("could not download " + what + ":\n  " + "\n  ".join(failures) + kept)
