"""Tools: a fixed set of tool-use scenarios, each scored for well-formed calls, schema-valid arguments, the
right tool and no markup leaking into content (spec §3: DSML leaks and the reasoning_content round trip
are what breaks agents in practice). Tools are `strict`, so an endpoint that constrains strict schemas
(v4 serve, DeepSeek's /beta) can be held to 100%; calls are forced (thinking off) where the scenario
needs one, since DeepSeek refuses a forced tool_choice in thinking mode."""

from __future__ import annotations

import json
from typing import Any

from . import scorers
from .client import Call
from .runner import Item, Run, rate

NAME = "tools"


def _fn(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "strict": True, "parameters": {
        "type": "object", "properties": properties, "required": required, "additionalProperties": False}}}


WEATHER = _fn("get_weather", "The weather forecast for a city.", {
    "city": {"type": "string"}, "days": {"type": "integer"},
    "units": {"type": "string", "enum": ["metric", "imperial"]}}, ["city", "days", "units"])
SEARCH = _fn("search_docs", "Search the project's documentation.", {
    "query": {"type": "string"}, "limit": {"type": "integer"}}, ["query", "limit"])
CALC = _fn("calculate", "Evaluate an arithmetic expression exactly.", {"expression": {"type": "string"}},
           ["expression"])
NOTE = _fn("save_note", "Save a note with its metadata.", {
    "title": {"type": "string"},
    "meta": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}},
        "author": {"type": "object", "properties": {"name": {"type": "string"}, "lang": {"type": "string"}},
                   "required": ["name", "lang"], "additionalProperties": False}},
        "required": ["tags", "author"], "additionalProperties": False}}, ["title", "meta"])

NOTE_TITLE = 'Café «Zürich» — "naïve" façade 東京 🚀'
NO_THINK = {"thinking": {"type": "disabled"}}


def _named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# (case, messages, tools, tool_choice, expected tool, calls wanted)
SCENARIOS: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]], Any, str | None, int]] = [
    ("single", _user("What will the weather be in Lisbon over the next 3 days? Use metric units."), [WEATHER],
     _named("get_weather"), "get_weather", 1),
    ("parallel", _user("Compare the weather in Oslo and in Nairobi for tomorrow, metric units: look both up at "
                       "once."), [WEATHER], "required", "get_weather", 2),
    ("choose", _user("What is 1234 * 5678? Compute it exactly."), [WEATHER, SEARCH, CALC], "required", "calculate",
     1),
    ("arguments", _user(f"Save a note titled {json.dumps(NOTE_TITLE, ensure_ascii=False)}, tags [\"travel\", "
                        "\"ünïcode\", \"say \\\"hi\\\"\"], author Zoë, language fr."),
     [NOTE], _named("save_note"), "save_note", 1),
]


def planned(r: Run) -> int:
    return len(SCENARIOS) + 2  # + the turn after the single call's result and the reasoning_content turn


def _scorer(tools: list[dict[str, Any]], expect: str | None, min_calls: int) -> Any:
    def score(call: Call) -> dict[str, Any]:
        return scorers.tool_calls(call.tool_calls, call.content, tools, expect=expect, min_calls=min_calls,
                                  reasoning=call.reasoning)
    return score


def _answer_scorer(call: Call) -> dict[str, Any]:
    """A turn after a tool result: an answer in content (a thinking turn whose budget ran out while it
    reasoned has none), no markup, any calls still valid."""
    out = scorers.tool_calls(call.tool_calls, call.content, [WEATHER], reasoning=call.reasoning)
    return {"answered": bool(call.content.strip()), "no_leak": out["no_leak"], "well_formed": out["well_formed"],
            "schema_valid": out["schema_valid"]}


def _history(calls: list[dict[str, str]], reasoning: str | None) -> list[dict[str, Any]]:
    turn: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls]}
    if reasoning is not None:
        turn["reasoning_content"] = reasoning
    results = [{"role": "tool", "tool_call_id": c["id"], "content": json.dumps(
        {"city": "Lisbon", "forecast": ["sun", "sun", "rain"], "high_c": [24, 25, 19]})} for c in calls]
    return [turn, *results]


def run(r: Run) -> dict[str, Any]:
    """Two batches, each sent at once (scored, not timed): the first turns, then the turns after a tool
    result (the round trip replays the calls the endpoint made)."""
    budget = r.budget(False) + 96  # room for a call's markup and arguments
    answer = r.budget(False)
    first = [Item(case, {"messages": messages, "tools": tools, "tool_choice": choice, "max_tokens": budget,
                         **NO_THINK}, {"scenario": case}, _scorer(tools, expect, n))
             for case, messages, tools, choice, expect, n in SCENARIOS]
    records = r.batch(NAME, first)
    ask = SCENARIOS[0][1]  # call, then result, then answer: the single call's turn goes on
    calls = records[0].call.tool_calls or [{"id": "call_0", "name": "get_weather",
                                            "arguments": '{"city": "Lisbon", "days": 3, "units": "metric"}'}]
    # thinking mode: a tool turn's reasoning_content must be sent back (DeepSeek answers 400 without it)
    past = [{"id": "call_r0", "name": "get_weather", "arguments": '{"city": "Lisbon", "days": 3, "units": "metric"}'}]
    thought = "The user wants a 3-day forecast; I should call get_weather."
    records += r.batch(NAME, [
        Item("round_trip", {"messages": ask + _history(calls, None), "tools": [WEATHER], "max_tokens": answer,
                            **NO_THINK}, {"scenario": "round_trip"}, _answer_scorer),
        Item("reasoning_round_trip", {"messages": ask + _history(past, thought), "tools": [WEATHER],
                                      "max_tokens": r.budget(True), "thinking": {"type": "enabled"}},
             {"scenario": "reasoning_round_trip"}, _answer_scorer)])
    keys = ("called", "well_formed", "schema_valid", "right_tool", "no_leak", "answered")
    return {"rates": {k: rate([x.scores.get(k) for x in records if x.call.ok]) for k in keys},
            "scenarios": {x.case: x.scores for x in records}}
