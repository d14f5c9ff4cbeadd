"""The one base for everything a user can cause and fix (config, checkpoint, memory plan, context limit,
budget, missing path, a remote endpoint's refusal). The CLI prints these as one message with no traceback;
anything else is a bug and keeps its traceback. Imports nothing, so every layer (the runtime included) can
raise these without an import circle."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message says what it is and what to do."""
