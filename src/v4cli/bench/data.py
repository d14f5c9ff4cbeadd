"""JSON the bench reads: its bundled data (the price table, the report schema) and the user's files
(a price table, a report), whose problems are UserErrors in the file's terms."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

from ..errors import UserError


def bundled(name: str) -> Any:
    return json.loads((importlib.resources.files(__package__) / name).read_text(encoding="utf-8"))


def read(path: Path, what: str) -> Any:
    """The JSON in `path`; `what` names the file in the error when there is none ("no such report")."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no such {what}: {path}") from None
    except ValueError as e:
        raise UserError(f"{path} is not JSON: {e}") from None
