"""Tool definitions and tool_choice, checked as DeepSeek checks them (one place for both dialects)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .errors import bad

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_TOOLS = 128
# DeepSeek's strict mode (beta) supports these JSON-schema types and refuses these keywords.
STRICT_UNSUPPORTED = ("minLength", "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
                      "exclusiveMaximum", "multipleOf", "patternProperties", "minItems", "maxItems")


def _walk(schema: Any, path: str) -> list[tuple[str, str]]:
    """(path, keyword) of every keyword strict mode refuses, anywhere in the schema."""
    found: list[tuple[str, str]] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in STRICT_UNSUPPORTED and not (key == "format" and isinstance(value, dict)):
                found.append((path, key))
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                for name, sub in value.items():
                    found += _walk(sub, f"{path}.{key}.{name}")
            elif isinstance(value, (dict, list)):
                found += _walk(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            found += _walk(sub, f"{path}[{i}]")
    return found


def check_schema(schema: Any, param: str, strict: bool) -> dict[str, Any]:
    """A tool's parameters: a valid JSON schema of an object (strict: without refused keywords)."""
    from jsonschema import SchemaError, validators

    if schema is None:
        return {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise bad(f"{param} must be a JSON schema object", param)
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as e:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.path)
        raise bad(f"{param}{where} is not a valid JSON schema: {e.message}", param) from None
    if schema.get("type", "object") != "object":
        raise bad(f"{param} must describe an object (type: object), not {schema.get('type')!r}", param)
    if strict:
        refused = _walk(schema, param)
        if refused:
            path, key = refused[0]
            raise bad(f"strict mode does not support {key!r} (at {path}); remove it or set strict: false", path)
    return schema


def check_tools(tools: Sequence[Any] | None, choice: str | dict[str, Any] | None, thinking: bool,
                max_name: int = 64) -> tuple[list[dict[str, Any]], str]:
    """OpenAI-style tools (pydantic models or dicts) -> (function tools as dicts, choice name).
    `choice` is "auto", "none", "required" or the one tool's name. `max_name`: DeepSeek's OpenAI format
    takes names of up to 64 characters; Anthropic's clients (MCP tools) send up to 128."""
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, tool in enumerate(tools or []):
        t = tool if isinstance(tool, dict) else tool.model_dump(exclude_none=True)
        if t.get("type", "function") != "function":
            raise bad(f"tools[{i}].type must be 'function', not {t.get('type')!r}", f"tools[{i}].type")
        fn = dict(t.get("function") or {})
        name = fn.get("name", "")
        if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > max_name:
            raise bad(f"tools[{i}].function.name {name!r} must be 1-{max_name} letters, digits, '_' or '-'",
                      f"tools[{i}].function.name")
        if name in names:
            raise bad(f"tools[{i}]: a second tool named {name!r}", f"tools[{i}].function.name")
        names.add(name)
        fn["parameters"] = check_schema(fn.get("parameters"), f"tools[{i}].function.parameters",
                                        bool(fn.get("strict")))
        out.append({"type": "function", "function": fn})
    if len(out) > MAX_TOOLS:
        raise bad(f"at most {MAX_TOOLS} tools, got {len(out)}", "tools")
    if choice is None:
        name = "auto" if out else "none"
    elif isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise bad(f"tool_choice must be 'none', 'auto', 'required' or a named function, not {choice!r}",
                      "tool_choice")
        name = choice
    else:
        name = ((choice.get("function") or {}).get("name") if isinstance(choice, dict) else None) or ""
        if choice.get("type", "function") != "function" or not name:
            raise bad("tool_choice must name a function: {\"type\": \"function\", \"function\": {\"name\": ...}}",
                      "tool_choice")
        if name not in names:
            raise bad(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
    if name in ("required",) or name not in ("auto", "none"):
        if not out:
            raise bad(f"tool_choice {name!r} needs tools", "tool_choice")
        if thinking:
            raise bad("Thinking mode does not support this tool_choice: use 'auto' or 'none', or turn thinking "
                      "off (thinking: {type: disabled})", "tool_choice")
    return out, name
