"""What can go wrong with a model operation, each a UserError whose message says why and what to do."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..sizes import size


class HubError(UserError):
    """A model operation that cannot be done; the message says why and what to do."""


class ModelNotFound(HubError):
    pass


class PullError(HubError):
    pass


class NotEnoughDisk(PullError):
    def __init__(self, need: int, free: int, where: Path) -> None:
        self.need, self.free, self.where = need, free, where
        super().__init__(f"not enough disk space in {where}: the pull needs {size(need)} ({need:,} bytes) "
                         f"but only {size(free)} ({free:,} bytes) is free")
