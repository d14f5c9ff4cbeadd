"""Where v4 keeps things: V4_HOME (default ~/.cache/v4) holds models/, cache/, history and logs.db.

Models are needed; the prefix cache on disk, the chat history and the log are optional: where V4_HOME cannot
be written (a read-only mount, another user's folder) their users warn once and go on without them
(`unwritable` says why). A V4_HOME that is a file, or lies under one, is refused in one message.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UserError

DEFAULT_HOME = "~/.cache/v4"


class HomeError(UserError, OSError):
    """V4_HOME cannot hold v4's folders (it is a file, or cannot be written where it must be)."""


def _named() -> str:
    return "V4_HOME" if os.environ.get("V4_HOME") else f"V4_HOME (unset: {DEFAULT_HOME})"


def home() -> Path:
    path = Path(os.environ.get("V4_HOME") or DEFAULT_HOME).expanduser()
    found = next((p for p in (path, *path.parents) if os.path.lexists(p)), None)
    if found is not None and not found.is_dir():  # mkdir under it would say [Errno 17] or [Errno 20]
        what = "is a file" if found == path else f"lies under {found}, which is a file"
        raise HomeError(f"{_named()} is {path}, which {what}, not a folder: point V4_HOME at a folder "
                        f"(e.g. export V4_HOME={DEFAULT_HOME}) or move the file away")
    return path


def models_dir() -> Path:
    return home() / "models"


def logs_path() -> Path:
    """The SQLite log of every `chat` and `ask` exchange (`v4 logs`)."""
    return home() / "logs.db"


def unwritable(path: Path, *, folder: bool) -> str | None:
    """None when ``path`` (a folder, else a file) can be created or written, else why not (one line)."""
    where = path if folder else path.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        if folder:
            tempfile.TemporaryFile(dir=where).close()
        else:
            with open(path, "a", encoding="utf-8"):
                pass
    except OSError as e:
        return f"{path} cannot be written ({e.strerror or e})"
    return None


def read_only(what: str, why: str) -> str:
    """The warning for an optional thing under V4_HOME that is turned off for this session."""
    return f"{what} is off for this session: {why}; point V4_HOME at a writable folder to keep it"


def cannot_write(what: str, path: Path, e: OSError) -> HomeError:
    """The error for something under V4_HOME that must be written (the built-in model)."""
    return HomeError(f"cannot write {what} to {path} ({e.strerror or e}): {_named()} is not writable here; "
                     "point V4_HOME at a writable folder")
