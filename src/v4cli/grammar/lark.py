"""Lark grammars (llguidance's dialect) for the two constrained outputs: one JSON object, and a DSML
tool-calls block whose parameters follow each tool's JSON schema.

The DSML marker ``｜DSML｜`` is one special token (id 128825) and is written here as ``<[128825]>``:
free-text lexemes never match a special token, so text can only leave a raw parameter value through
that token. A lexeme cannot end right before a special token once it has eaten the ``</``, so a raw
value is the lexeme ``RAW`` that *includes* its closing ``</`` (greedy: ``</`` inside the value is fine).
Tags are written exactly as `chat_format.render_tool_calls` writes them, one ``\\n`` between tags.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..chat_format import DSML_ID, THINK_END_ID

D = f"<[{DSML_ID}]>"
THINK_END = f"<[{THINK_END_ID}]>"
_TERMINALS = r"""
RAW: /(.|\n)*<\//
TEXT: /(.|\n)*/
TEXT_LT: /(.|\n)*</
NAME: /[A-Za-z0-9_.$-]+/
"""
_NOT_RAW = {"anyOf", "oneOf", "allOf", "$ref", "pattern", "format", "minLength", "maxLength"}  # kept as JSON
_LENIENT = {"x-guidance": {"lenient": True}}  # ignore keywords llguidance does not implement


def lit(text: str) -> str:
    """A Lark string literal."""
    return json.dumps(text, ensure_ascii=False)


def inline_json(schema: Mapping[str, Any] | bool, defs: Mapping[str, Any] | None = None) -> str:
    """``%json {...}`` for a (sub-)schema, carrying the root's ``$defs`` so its ``$ref``s resolve."""
    body: dict[str, Any] = {} if schema is True else {"not": {}} if schema is False else dict(schema)
    return "%json " + json.dumps({**(defs or {}), **body, **_LENIENT}, ensure_ascii=False)


def _reasoning(thinking: bool) -> str:
    return f"TEXT {THINK_END} " if thinking else ""


def json_grammar(*, thinking: bool) -> str:
    """Any one JSON object (after free reasoning and ``</think>`` in thinking mode)."""
    return f"start: {_reasoning(thinking)}answer\nanswer: {inline_json({'type': 'object'})}\n{_TERMINALS}"


def _string_part(schema: Mapping[str, Any]) -> tuple[list[str] | bool, Mapping[str, Any] | None]:
    """Split a property schema into what is written raw (``string="true"``) and what as JSON.

    Returns (raw, rest): raw is False (no string values), True (any text) or the allowed strings;
    rest is the schema of the non-string values, or None when every value is a string.
    """
    if "const" in schema:
        return ([schema["const"]], None) if isinstance(schema["const"], str) else (False, schema)
    if "enum" in schema:
        strings = [v for v in schema["enum"] if isinstance(v, str)]
        others = [v for v in schema["enum"] if not isinstance(v, str)]
        return (strings or False), ({**schema, "enum": others} if others else None)
    kind = schema.get("type")
    if kind == "string" and not (_NOT_RAW & schema.keys()):
        return True, None
    if isinstance(kind, list) and "string" in kind:
        rest = [k for k in kind if k != "string"]
        return True, ({**schema, "type": rest} if rest else None)
    branches = schema.get("anyOf")
    if isinstance(branches, list) and kind is None:
        raws, rest_branches = [], []
        for branch in branches:
            raw, rest = _string_part(branch) if isinstance(branch, Mapping) else (False, branch)
            raws.append(raw)
            if rest is not None:
                rest_branches.append(rest)
        raw_all: list[str] | bool = True if True in raws else [s for r in raws if isinstance(r, list) for s in r]
        return (raw_all or False), ({"anyOf": rest_branches} if rest_branches else None)
    return False, schema


class _Rules:
    """Collects named rules; every rule name is unique in the grammar."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, name: str, body: str) -> str:
        self.lines.append(f"{name}: {body}")
        return name


def _value_rule(rules: _Rules, name: str, schema: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    """``string="..."`` plus the value and its closing ``</`` for one parameter."""
    raw, rest = _string_part(schema)
    options = []
    if raw is True:
        options.append('"true\\">" RAW')
    elif raw:
        choices = "(" + " | ".join(lit(s) for s in raw if s) + ")" + ("?" if "" in raw else "")
        options.append(f'"true\\">" {choices if raw != [""] else ""} "</"')
    if rest is not None:
        options.append(f'"false\\">" {rules.add(name + "_json", inline_json(rest, defs))} "</"')
    return rules.add(name, " | ".join(options) if options else '"false\\">" "null" "</"')


def _param(rules: _Rules, name: str, key: str, value: str) -> str:
    head = lit(f'parameter name="{key}" string="')
    return rules.add(name, f'"<" {D} {head} {value} {D} "parameter>\\n"')


def _params(rules: _Rules, name: str, parameters: Any, schema_valid: bool) -> str:
    """The parameters of one invoke: in schema order, required ones present (or any, when not checked)."""
    parameters = {"properties": {}} if parameters is None else parameters  # no parameters at all
    props = parameters.get("properties") if isinstance(parameters, Mapping) else None
    if not schema_valid or not isinstance(props, Mapping):
        value = rules.add(name + "_any", f'"true\\">" RAW | "false\\">" {inline_json(True)} "</"')
        head = '"<" ' + D + ' "parameter name=\\"" NAME "\\" string=\\""'
        return rules.add(name, f"({head} {value} {D} " + '"parameter>\\n")*')
    required = set(parameters.get("required") or [])
    defs = {k: parameters[k] for k in ("$defs", "definitions") if k in parameters}
    items = []
    for i, (key, sub) in enumerate(props.items()):
        if '"' in key or "\n" in key:
            raise ValueError(f"parameter name {key!r} cannot be written in a DSML tag")
        sub = sub if isinstance(sub, Mapping) else {}
        item = _param(rules, f"{name}_{i}", key, _value_rule(rules, f"{name}_{i}_v", sub, defs))
        items.append(item if key in required else item + "?")
    return rules.add(name, " ".join(items)) if items else ""


def _function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    return tool.get("function", tool)


def tools_grammar(tools: Sequence[Mapping[str, Any]], *, choice: str, thinking: bool,
                  json_content: bool = False) -> str | None:
    """The DSML grammar for ``choice`` ("auto", "required" or a tool name); None when nothing is constrained.

    required: the answer is a block of one or more invokes, every tool's parameters schema-valid.
    name: a block of exactly one invoke of that tool. auto: free content (one JSON object with
    ``json_content``), and a block only if the model starts one (``<`` then the DSML token): strict
    tools schema-valid, the others any parameters.
    """
    fns = [_function(t) for t in tools]
    strict = any(f.get("strict") for f in fns)
    if choice == "none" or not fns or (choice == "auto" and not strict and not json_content):
        return None
    if choice not in ("auto", "required"):
        fns = [f for f in fns if f.get("name") == choice]
        if not fns:
            raise ValueError(f"tool_choice names {choice!r}, which is not among the tools")
    rules = _Rules()
    alternatives = []
    for i, fn in enumerate(fns):
        name = str(fn.get("name", ""))
        if '"' in name or "\n" in name:
            raise ValueError(f"tool name {name!r} cannot be written in a DSML tag")
        checked = choice != "auto" or bool(fn.get("strict"))
        params = _params(rules, f"p{i}", fn.get("parameters"), checked)
        alternatives.append(f'{lit(name + chr(34) + ">" + chr(10))} {params} "</" {D} "invoke>\\n"')
    rules.add("invoke", f'"<" {D} "invoke name=\\"" (' + " | ".join(alternatives) + ")")
    calls = "invoke" if choice not in ("auto", "required") else "invoke+"
    rules.add("block", f'"tool_calls>\\n" {calls} "</" {D} "tool_calls>"')
    if choice != "auto":
        start = f'start: {_reasoning(thinking)}"\\n\\n<" {D} block'
    elif json_content:
        rules.add("answer", inline_json({"type": "object"}))
        start = f'start: {_reasoning(thinking)}(answer | answer? "\\n\\n<" {D} block)'
    else:
        start = f"start: {_reasoning(thinking)}(TEXT | TEXT_LT {D} block)"
    return "\n".join([start, *rules.lines, _TERMINALS])
