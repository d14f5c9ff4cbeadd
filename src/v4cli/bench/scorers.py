"""Scores of one answer, as pure functions of what came back (no network, no model): recall is exact,
tool calls are checked for form, schema, the right tool and leaked markup, JSON for parsing and keys."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

# DSML (V4) and the older DeepSeek tool tokens, also as clients have shown them with the full-width bars
# turned into ASCII ("< | DSML | tool_calls"): any of these in content means the server's parser missed them.
_LEAK = re.compile(r"<\s*/?\s*[｜|]\s*DSML\s*[｜|]|[｜|]\s*DSML\s*[｜|]|<｜tool▁call|<｜tool▁calls▁begin｜")


def recall(answer: str, fact: str) -> float:
    """1.0 when the answer holds `fact` as a whole word (case and surrounding punctuation aside), else 0.0.
    A near miss (one digit off, the fact inside a longer number) scores 0: the score is exact."""
    if not fact:
        raise ValueError("an empty fact cannot be scored")
    pattern = r"(?<![0-9A-Za-z])" + re.escape(fact.strip().lower()) + r"(?![0-9A-Za-z])"
    return 1.0 if re.search(pattern, answer.lower()) else 0.0


def leaked_markup(*texts: str) -> bool:
    """True when any text carries tool-call markup that should have been parsed into tool_calls."""
    return any(_LEAK.search(t or "") for t in texts)


def _arguments(call: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        args = json.loads(call.get("arguments") or "")
    except (TypeError, ValueError):
        return None
    return args if isinstance(args, dict) else None


def tool_calls(calls: Sequence[Mapping[str, Any]], content: str, tools: Sequence[Mapping[str, Any]], *,
               expect: str | None = None, min_calls: int = 1, reasoning: str = "") -> dict[str, bool | None]:
    """Scores of one answer to a tool request (OpenAI-style `tools`; calls as {id, name, arguments}).

    called: at least `min_calls` calls; well_formed: every call has a name and arguments that are a JSON
    object; schema_valid: every call names one of the tools and its arguments validate against its
    schema; right_tool: every call is `expect` (None when no tool is expected); no_leak: no tool markup in
    content, reasoning or arguments. Without calls, well_formed and schema_valid are None (nothing to judge).
    """
    from jsonschema import Draft202012Validator

    schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
    scores: dict[str, bool | None] = {
        "called": len(calls) >= min_calls,
        "no_leak": not leaked_markup(content, reasoning, *(c.get("arguments") or "" for c in calls)),
        "right_tool": None if expect is None else bool(calls) and all(c.get("name") == expect for c in calls),
    }
    if not calls:
        return scores | {"well_formed": None, "schema_valid": None}
    parsed = [_arguments(c) for c in calls]
    scores["well_formed"] = all(c.get("name") and a is not None for c, a in zip(calls, parsed, strict=True))
    scores["schema_valid"] = all(
        a is not None and c.get("name") in schemas
        and not any(Draft202012Validator(schemas[c["name"]]).iter_errors(a))
        for c, a in zip(calls, parsed, strict=True))
    return scores


def json_answer(content: str, keys: Sequence[str]) -> dict[str, float | bool]:
    """parses: the content is JSON; object: a JSON object; keys: the share of `keys` present at its top."""
    try:
        value = json.loads(content)
    except (TypeError, ValueError):
        return {"parses": False, "object": False, "keys": 0.0}
    if not isinstance(value, dict):
        return {"parses": True, "object": False, "keys": 0.0}
    return {"parses": True, "object": True, "keys": sum(k in value for k in keys) / len(keys) if keys else 1.0}
