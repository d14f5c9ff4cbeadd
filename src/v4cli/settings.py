"""Where v4 keeps things: V4_HOME (default ~/.cache/v4) holds models/, cache/, history and logs.db."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("V4_HOME") or Path.home() / ".cache" / "v4")


def models_dir() -> Path:
    return home() / "models"


def logs_path() -> Path:
    """The SQLite log of every `chat` and `ask` exchange (`v4 logs`)."""
    return home() / "logs.db"
