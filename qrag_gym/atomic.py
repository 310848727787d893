"""Atomic file writes: a write killed half-way never leaves a half file where a reader looks.

Everything that must survive an interruption (result tables, checkpoints, cache shards) goes through
:func:`atomic_write`: write under a temporary name in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file onto ``path``.

    The file gets the usual permissions (``mkstemp`` alone makes it private).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Replace ``path`` with ``data`` (text is UTF-8 encoded) in one step."""
    payload = data.encode() if isinstance(data, str) else data
    return atomic_write(path, lambda temporary: Path(temporary).write_bytes(payload))
