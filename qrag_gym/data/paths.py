"""Where benchmark data lives: an explicit argument, else ``QRAG_DATA_DIR``, then the user data folder.

An explicit folder is the only place searched: topping it up from ``$QRAG_DATA_DIR`` would mix, say, its
stories with another machine's books without a word.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "QRAG_DATA_DIR"


def user_data_dir() -> Path:
    """The per-user default folder (``$XDG_DATA_HOME/qrag-gym`` or ``~/.local/share/qrag-gym``)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "qrag-gym"


def candidate_data_dirs(explicit: str | os.PathLike[str] | None = None) -> list[tuple[str, Path]]:
    """The folders searched for data, in order, each with a label saying why it is searched.

    An explicit folder is searched alone (everything comes from there, or the error says what is missing).
    """
    if explicit is not None:
        return [("data_dir argument", Path(explicit).expanduser())]
    found: list[tuple[str, Path]] = []
    if os.environ.get(DATA_ENV_VAR):
        found.append((f"${DATA_ENV_VAR}", Path(os.environ[DATA_ENV_VAR]).expanduser()))
    found.append(("user data folder", user_data_dir()))
    return found


class DataNotFoundError(FileNotFoundError):
    """Raised when a data folder is needed and none of the searched places has it."""


def find_data_subdir(subdir: str, explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Return ``<root>/<subdir>`` for the first searched root that has it, or None.

    An explicit argument that does not exist is an error at once: the user asked for that folder.
    """
    if explicit is not None and not Path(explicit).expanduser().is_dir():
        raise DataNotFoundError(f"data_dir={str(explicit)!r} does not exist or is not a folder")
    for _, root in candidate_data_dirs(explicit):
        if (root / subdir).is_dir():
            return root / subdir
    return None


def require_data_subdir(subdir: str, explicit: str | os.PathLike[str] | None = None) -> Path:
    """Like :func:`find_data_subdir` but raise an error that lists every place searched."""
    path = find_data_subdir(subdir, explicit)
    if path is None:
        searched = "\n".join(f"  - {root / subdir} ({why})" for why, root in candidate_data_dirs(explicit))
        advice = (f"Put '{subdir}/' into data_dir={str(explicit)!r} or pass a data_dir that holds it (an explicit "
                  f"data_dir is the only place searched)." if explicit is not None else
                  f"Pass data_dir=..., or set {DATA_ENV_VAR} to the folder that holds '{subdir}/'.")
        raise DataNotFoundError(f"no '{subdir}' data folder found. Searched, in order:\n{searched}\n{advice}")
    return path
