"""What a model name means: the built-in `tiny`, an alias (flash, pro), a Hub repo id (owner/name) or a folder.

Pure string and path checks (no network, no cache scan), so every other part of the hub can ask.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

BUILTIN = "tiny"
ALIASES: dict[str, str] = {"flash": "deepseek-ai/DeepSeek-V4-Flash", "pro": "deepseek-ai/DeepSeek-V4-Pro",
                           BUILTIN: "builtin:tiny"}
# The Hub's rule for each half of owner/name: letters, digits, `-`, `_` and `.`, neither starting nor ending
# with `-` or `.`, and no `--` or `..` (so `./x` and `../x` are paths, never repo ids).
_PART = r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^{_PART}/{_PART}$")
VALID = "flash, pro, tiny, a Hub repo id (owner/name) or a folder that holds a model (its config.json)"


def repo_id_of(name: str) -> str | None:
    """The repo id a name stands for (an alias or `owner/name`), or None."""
    if name in ALIASES and name != BUILTIN:
        return ALIASES[name]
    return name if _REPO_ID.match(name) and "--" not in name and ".." not in name else None


def alias_of(repo_id: str) -> str:
    """The short name of a repo id (flash for deepseek-ai/DeepSeek-V4-Flash), else the id itself."""
    return next((a for a, r in ALIASES.items() if r == repo_id), repo_id)


def looks_like_path(name: str) -> bool:
    """Written as a path (`./x`, `~/x`, `/x`, `a/b/c`) rather than as a name or a repo id."""
    return name.startswith((".", "~", os.sep)) or (os.sep in name and repo_id_of(name) is None)


def is_model_dir(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").exists()


def local_folder(name: str) -> Path | None:
    """The folder `name` names: a model folder, or any folder written as a path (`./x`, `~/x`, `a/b`)."""
    local = Path(name).expanduser()
    if is_model_dir(local) or (local.is_dir() and (os.sep in name or looks_like_path(name))):
        return local.resolve()
    return None
