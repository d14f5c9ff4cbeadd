"""Malformed requests get a 4xx in DeepSeek's error shape that names the field, never a 500, and the
server keeps serving; schemathesis fuzzes the app's own OpenAPI schema for 500s."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

CHAT = "/v1/chat/completions"
OK_MSG = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def call(url: str, path: str, body: Any, raw: bytes | None = None, headers: dict[str, str] | None = None,
         method: str = "POST") -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data, {"Content-Type": "application/json", **(headers or {})},
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


# (name, body or raw bytes, expected status, expected `param` or None, a word the message must contain)
CASES: list[tuple[str, Any, int, str | None, str]] = [
    ("not json", b"{not json", 400, None, "JSON"),
    ("body is a list", b"[1, 2]", 400, None, "JSON object"),
    ("messages is a string", {"model": "deepseek-chat", "messages": "hello"}, 422, "messages", "list"),
    ("messages missing", {"model": "deepseek-chat"}, 422, "messages", "required"),
    ("messages empty", {"model": "deepseek-chat", "messages": []}, 422, "messages", "at least 1"),
    ("unknown role", {"model": "deepseek-chat", "messages": [{"role": "robot", "content": "x"}]}, 400,
     "messages[0].role", "robot"),
    ("content wrong type", {"model": "deepseek-chat", "messages": [{"role": "user", "content": 5}]}, 422,
     "messages[0].content", ""),
    ("image content", {"model": "deepseek-chat", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "messages[0].content[0].type", "image_url"),
    ("tool message without its call", {"model": "deepseek-chat", "messages": [
        {"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_9", "content": "42"}]}, 400,
     "messages[1].tool_call_id", "call_9"),
    ("last message is the assistant's", {"model": "deepseek-chat", "messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, 400, "messages[1]", "prefix"),
    ("unknown model", {"model": "gpt-9", "messages": OK_MSG}, 400, "model", "gpt-9"),
    ("negative max_tokens", {"model": "deepseek-chat", "messages": OK_MSG, "max_tokens": -5}, 422, "max_tokens",
     "-5"),
    ("max_tokens over the context", {"model": "deepseek-chat", "messages": OK_MSG, "max_tokens": 10**7}, 400,
     "max_tokens", "10000000"),
    ("max_tokens not a number", {"model": "deepseek-chat", "messages": OK_MSG, "max_tokens": "many"}, 422,
     "max_tokens", ""),
    ("temperature too high", {"model": "deepseek-chat", "messages": OK_MSG, "temperature": 3}, 422, "temperature",
     "3"),
    ("top_p zero", {"model": "deepseek-chat", "messages": OK_MSG, "top_p": 0}, 422, "top_p", ""),
    ("too many stops", {"model": "deepseek-chat", "messages": OK_MSG, "stop": [str(i) for i in range(17)]}, 422,
     "stop", "16"),
    ("bad tool name", {"model": "deepseek-chat", "messages": OK_MSG, "tools": [
        {"type": "function", "function": {"name": "get weather!"}}]}, 400, "tools[0].function.name", "get weather!"),
    ("invalid tool schema", {"model": "deepseek-chat", "messages": OK_MSG, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": 7}}}]}, 400,
     "tools[0].function.parameters", "schema"),
    ("tool_choice names a missing tool", {"model": "deepseek-chat", "messages": OK_MSG, "tools": [TOOL],
                                          "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     400, "tool_choice", "nope"),
    ("thinking refuses required", {"model": "deepseek-reasoner", "messages": OK_MSG, "tools": [TOOL],
                                   "tool_choice": "required"}, 400, "tool_choice", "Thinking"),
    ("json_schema response format", {"model": "deepseek-chat", "messages": OK_MSG,
                                     "response_format": {"type": "json_schema"}}, 422, "response_format.type", ""),
    ("top_logprobs over 20", {"model": "deepseek-chat", "messages": OK_MSG, "logprobs": True, "top_logprobs": 21},
     422, "top_logprobs", "20"),
    ("n over 1", {"model": "deepseek-chat", "messages": OK_MSG, "n": 2}, 422, "n", ""),
    ("bad thinking type", {"model": "deepseek-chat", "messages": OK_MSG, "thinking": {"type": "sometimes"}}, 422,
     "thinking.type", "sometimes"),
    ("bad reasoning_effort", {"model": "deepseek-reasoner", "messages": OK_MSG, "reasoning_effort": "extreme"}, 422,
     "reasoning_effort", "extreme"),
    ("FIM in thinking mode", {"model": "deepseek-chat", "prompt": "a", "suffix": "b",
                              "thinking": {"type": "enabled"}}, 400, "thinking.type", "non-thinking"),
]


@pytest.mark.parametrize("name,body,status,param,word", CASES, ids=[c[0] for c in CASES])
def test_malformed_request(v4_server: Any, name: str, body: Any, status: int, param: str | None, word: str) -> None:
    path = "/v1/completions" if "prompt" in (body if isinstance(body, dict) else {}) else CHAT
    got, data = call(v4_server.url, path, None if isinstance(body, bytes) else body,
                     raw=body if isinstance(body, bytes) else None)
    assert got == status, data
    err = data["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == param
    assert word in err["message"]


def test_server_healthy_after_bad_requests(v4_server: Any) -> None:
    for _, body, *_ in CASES[:5]:
        call(v4_server.url, CHAT, None if isinstance(body, bytes) else body,
             raw=body if isinstance(body, bytes) else None)
    assert v4_server.health() == 200
    status, data = call(v4_server.url, CHAT, {"model": "deepseek-chat", "messages": OK_MSG, "max_tokens": 2})
    assert status == 200 and data["choices"][0]["message"]["content"]


def test_unknown_route_and_method(v4_server: Any) -> None:
    assert call(v4_server.url, "/v1/nothing", {})[0] == 404
    assert call(v4_server.url, CHAT, None, method="GET")[0] == 405


def _fuzz(operation: Any, base_url: str, failures: list[str], seen: set[int]) -> None:
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy())
    def check(case: Any) -> None:
        if isinstance(case.body, dict):  # keep each generation short: this fuzzes the edges, not the decoder
            mt = case.body.get("max_tokens")
            case.body["max_tokens"] = min(mt, 3) if isinstance(mt, int) and not isinstance(mt, bool) else 2
        response = case.call(base_url=base_url, timeout=120)
        seen.add(response.status_code)
        if response.status_code >= 500:
            failures.append(f"{operation.method} {operation.path} {case.body!r} -> {response.status_code} "
                            f"{response.text[:300]}")

    check()


def test_schemathesis_finds_no_500(v4_server: Any) -> None:
    """Fuzz every operation of the app's OpenAPI schema; every answer must be below 500."""
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_url(f"{v4_server.url}/openapi.json")
    failures: list[str] = []
    seen: set[int] = set()
    for op in schema.get_all_operations():
        _fuzz(op.ok(), v4_server.url, failures, seen)
    assert not failures, "\n".join(failures[:5])
    assert 200 in seen and seen & {400, 422}, seen  # it reached the model and the refusals both
    assert v4_server.health() == 200
