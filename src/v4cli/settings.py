"""Where v4 keeps things: V4_HOME (default ~/.cache/v4) holds models/, cache/ and history."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("V4_HOME") or Path.home() / ".cache" / "v4")


def models_dir() -> Path:
    return home() / "models"
