"""The `v4` command line (`v4cli.cli:app`). Importing the verb modules registers them, in `--help` order."""

# isort: off
from . import models, chat, ask, serve, bench, logs  # noqa: F401  (registration, in this order)

# isort: on
from .app import app

__all__ = ["app"]
