"""``qrag-data fetch babilong``: download the official BABILong release from the Hugging Face Hub.

Why through ``huggingface_hub`` and not the project's urllib downloader: the release is a dataset repo
of many JSON files (one per task and length, some hundreds of MB, stored with LFS/Xet); the hub client
resolves them, resumes, and checks what it fetched. The revision is resolved to one commit first and
every file is taken from that commit, which is recorded in ``qrag-data.lock.json`` with each file's
SHA-256, so a folder always holds one consistent snapshot and says which.

``huggingface_hub`` honours ``HF_ENDPOINT`` (read here at call time too, so a mirror set after import is
used). ``HF_HUB_OFFLINE=1`` forbids downloads: that is refused with a message rather than a traceback.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from qrag_gym.data.babi import TASKS, check_task
from qrag_gym.data.babilong_release import LENGTHS, RELEASE_DIR, REPO_ID, check_length, release_file
from qrag_gym.data.download import DataFetchError
from qrag_gym.data.fetch import load_lock, save_lock, sha256_of

DEFAULT_LENGTHS = ("0k", "1k", "2k", "4k", "8k", "16k", "32k")
"""Fetched when no ``--lengths`` is given: about 0.1 GB for qa1-qa5; 64k..1M add several GB."""
LOCK_NAME = "babilong"
EXTRA_HINT = "pip install 'qrag-gym[babilong]'"


def _hub() -> Any:
    """``huggingface_hub``, imported only when a download is asked for (an optional extra)."""
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
        import huggingface_hub.utils
    except ImportError as err:  # pragma: no cover - transformers depends on it, so it is normally present
        raise DataFetchError(f"downloading the BABILong release needs huggingface_hub: {EXTRA_HINT}") from err
    return huggingface_hub


def release_patterns(tasks: Sequence[str], lengths: Sequence[str]) -> list[str]:
    """Repo paths to download: ``data/<task>/<length>.json`` for each pair, plus the dataset card."""
    return ["README.md", *(f"data/{check_task(t)}/{check_length(n)}.json" for t in tasks for n in lengths)]


def download_release(local_dir: Path, patterns: list[str], *, endpoint: str | None = None,
                     revision: str = "main", progress: bool = True) -> str:
    """Download ``patterns`` of the release at one commit into ``local_dir``; return that commit.

    The only function that talks to the hub. Its caches live under ``local_dir/.cache`` so nothing is
    written outside the data folder.
    """
    hub = _hub()
    if hub.constants.is_offline_mode():
        raise DataFetchError("HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, which forbids downloads from the "
                             "Hugging Face Hub: unset it for this command")
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    bars_were_on = not hub.utils.are_progress_bars_disabled()
    if not progress:
        hub.utils.disable_progress_bars()
    try:
        commit = hub.HfApi(endpoint=endpoint).repo_info(REPO_ID, repo_type="dataset", revision=revision).sha
        hub.snapshot_download(repo_id=REPO_ID, repo_type="dataset", revision=commit, allow_patterns=patterns,
                              local_dir=str(local_dir), cache_dir=str(local_dir / ".cache" / "hub"),
                              endpoint=endpoint, max_workers=4)
    except hub.errors.HfHubHTTPError as err:
        raise DataFetchError(f"{REPO_ID}: the hub refused the download ({err})") from err
    except (OSError, hub.errors.LocalEntryNotFoundError) as err:
        raise DataFetchError(f"{REPO_ID}: could not download from {endpoint or 'the Hugging Face Hub'} ({err}); "
                             f"files already complete are kept: run the same command again to resume") from err
    finally:
        if bars_were_on:
            hub.utils.enable_progress_bars()
    return str(commit)


def fetch_babilong(root: Path, lengths: Sequence[str] | None = None, tasks: Sequence[str] = TASKS, *,
                   endpoint: str | None = None, revision: str = "main", progress: bool = True,
                   overwrite: bool = False, log: Callable[[str], None] = print) -> list[str]:
    """Download the release's ``tasks`` x ``lengths`` into ``root/babilong`` and record them in the lock file.

    Returns the installed paths relative to ``root``. Files missing from the hub's listing (a length the
    release lacks for a task) are reported by name. A file already there that this tool did not install
    (absent from the lock file, or changed since) is refused unless ``overwrite``: the hub client would
    replace it.
    """
    lengths = list(DEFAULT_LENGTHS if not lengths else dict.fromkeys(lengths))
    for length in lengths:
        check_length(length)
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataFetchError(f"--to {root} exists and is not a folder")
    local = root / RELEASE_DIR
    recorded = load_lock(root)["sources"].get(LOCK_NAME, {}).get("files", {})
    foreign = sorted(f"{RELEASE_DIR}/data/{t}/{n}.json" for t in tasks for n in lengths
                     if release_file(local, t, n).is_file()
                     and recorded.get(f"{RELEASE_DIR}/data/{t}/{n}.json") != sha256_of(release_file(local, t, n)))
    if foreign and not overwrite:
        raise DataFetchError(f"{', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''} in {root} were not "
                             "installed by qrag-data (or changed since) and the download would replace them: "
                             "move them away, or pass --overwrite")
    for rel in foreign:  # --overwrite: the hub client trusts its own records and would keep the changed file
        (root / rel).unlink()
    local.mkdir(parents=True, exist_ok=True)
    log(f"babilong: {REPO_ID} ({', '.join(tasks)} at {', '.join(lengths)}) -> {local}")
    commit = download_release(local, release_patterns(tasks, lengths), endpoint=endpoint, revision=revision,
                              progress=progress)
    wanted = {f"{RELEASE_DIR}/data/{t}/{n}.json": release_file(local, t, n) for t in tasks for n in lengths}
    present = {rel: path for rel, path in wanted.items() if path.is_file()}
    missing = sorted(set(wanted) - set(present))
    if not present:
        raise DataFetchError(f"{REPO_ID} at commit {commit} has none of {', '.join(missing[:4])}"
                             f"{' ...' if len(missing) > 4 else ''}: check --lengths against the dataset card")
    lock = load_lock(root)
    entry = lock["sources"].get(LOCK_NAME, {})
    files = dict(entry.get("files", {})) if entry.get("commit") == commit else {}
    files.update({rel: sha256_of(path) for rel, path in present.items()})
    lock["sources"][LOCK_NAME] = {
        "repo": REPO_ID,
        "commit": commit,
        "url": endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co",
        "recorded": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": files,
    }
    save_lock(root, lock)
    log(f"babilong: {len(present)} files at commit {commit[:12]} in {local}")
    if missing:
        log(f"babilong: not in the release at that commit: {', '.join(missing)}")
    return sorted(present)


__all__ = ["DEFAULT_LENGTHS", "LENGTHS", "download_release", "fetch_babilong", "release_patterns"]
