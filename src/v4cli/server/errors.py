"""Errors in the clients' terms: one exception for every refusal, rendered in each dialect's shape.

DeepSeek's OpenAI-format body is `{"error": {"message", "type", "param", "code"}}`; the status codes are
DeepSeek's (400 bad format, 401 key, 422 bad parameter, 429 too many, 503 overloaded).
"""

from __future__ import annotations

import re
from typing import Any

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
         500: "api_error", 503: "overloaded_error"}


ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                   413: "request_too_large", 422: "invalid_request_error", 429: "rate_limit_error",
                   503: "overloaded_error"}


class ApiError(Exception):
    """A refusal: HTTP status, a message that names what to fix, and the offending parameter."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code = code or TYPES.get(status, "invalid_request_error")

    @property
    def type(self) -> str:
        return TYPES.get(self.status, "invalid_request_error")

    def openai(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def anthropic(self) -> dict[str, Any]:
        kind = ANTHROPIC_TYPES.get(self.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": self.message}}

    def body(self, path: str) -> dict[str, Any]:
        """The error in the shape of the dialect `path` belongs to."""
        return self.anthropic() if is_anthropic(path) else self.openai()


def is_anthropic(path: str) -> bool:
    return path.startswith("/anthropic") or "/messages" in path


def bad(message: str, param: str | None = None, status: int = 400) -> ApiError:
    return ApiError(status, message, param)


_TAG = re.compile(r"^(str|int|float|bool|none|[a-z-]+\[.*\]|[A-Za-z]+\[.*\]|json-or-python\[.*\])$")


def loc_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """A pydantic error location as a parameter path: ("body", "messages", 0, "role") -> messages[0].role
    (the tags pydantic adds for union members, `str` or `list[ContentPart]`, are left out)."""
    out = ""
    for part in loc:
        if (part == "body" and not out) or (isinstance(part, str) and _TAG.match(part)):
            continue
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "body"


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str]:
    """(param, message) for pydantic's errors: the first parameter named, each of its problems once."""
    param = loc_name(errors[0].get("loc", ()))
    msgs: list[str] = []
    for err in errors:
        if loc_name(err.get("loc", ())) == param and err.get("msg") not in msgs:
            msgs.append(err.get("msg", "invalid"))
    others = len({loc_name(e.get("loc", ())) for e in errors} - {param})
    more = f" (and {others} other parameter(s))" if others else ""
    return param, f"{param}: {'; or '.join(msgs)}{more}"
