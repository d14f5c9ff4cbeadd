"""`v4 serve --model tiny` in the Anthropic format, through the official `anthropic` SDK."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest

from test_serve_errors import call
from test_serve_openai import SEARCH, WEATHER
from v4cli import chat_format
from v4server import words

TOOLS = [{"name": t["function"]["name"], "description": t["function"].get("description", ""),
          "input_schema": t["function"]["parameters"]} for t in (WEATHER, SEARCH)]
NO_THINK = {"type": "disabled"}


@pytest.fixture(scope="module")
def client(v4_server: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{v4_server.url}/anthropic", api_key="x", max_retries=0, timeout=300)


@pytest.mark.parametrize("root", ["/anthropic", ""])
def test_create_thinking_on_and_off(v4_server: Any, root: str) -> None:
    """DeepSeek's /anthropic root and the bare one some clients use."""
    client = anthropic.Anthropic(base_url=v4_server.url + root, api_key="x", max_retries=0, timeout=300)
    on = client.messages.create(model="claude-sonnet-4-5", max_tokens=6, messages=[{"role": "user", "content": "Hi"}],
                                extra_body={"temperature": 0})  # greedy: the built-in model thinks to the end
    assert on.type == "message" and on.role == "assistant" and on.model == "claude-sonnet-4-5"
    assert [b.type for b in on.content] == ["thinking"] and on.content[0].thinking and on.content[0].signature
    assert on.stop_reason == "max_tokens" and on.usage.output_tokens == 6
    off = client.messages.create(model="claude-opus-4-1", max_tokens=6, thinking=NO_THINK,
                                 messages=[{"role": "user", "content": "Hi"}], extra_body={"temperature": 0})
    assert [b.type for b in off.content] == ["text"] and off.content[0].text
    u = off.usage
    assert u.input_tokens + u.cache_read_input_tokens == 5 and u.cache_creation_input_tokens == 0


def test_stream_matches_create(client: anthropic.Anthropic) -> None:
    kw: dict[str, Any] = dict(model="deepseek-v4-flash", max_tokens=10, thinking=NO_THINK,
                              extra_body={"temperature": 0},
                              messages=[{"role": "user", "content": words(60, seed=4)}],
                              metadata={"user_id": json.dumps({"device_id": "d", "session_id": "s"})})
    whole = client.messages.create(**kw)
    with client.messages.stream(**kw) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.cache_read_input_tokens > 0  # the repeated prompt (same user) was read from the cache


def test_stream_thinking_blocks_and_display_omitted(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="claude-haiku-4", max_tokens=6, messages=[{"role": "user", "content": "x"}],
                                thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        kinds = [ev.type for ev in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.content[0].type == "thinking" and final.content[0].thinking and final.content[0].signature
    hidden = client.messages.create(model="claude-haiku-4", max_tokens=6, messages=[{"role": "user", "content": "x"}],
                                    extra_body={"thinking": {"type": "adaptive", "display": "omitted"}})
    assert hidden.content[0].type == "thinking" and hidden.content[0].thinking == "" and hidden.content[0].signature


def test_tool_choice_any_round_trip(client: anthropic.Anthropic) -> None:
    import jsonschema

    for seed in range(1):
        msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=90, thinking=NO_THINK, tools=TOOLS,
                                     tool_choice={"type": "any"}, extra_body={"temperature": 1.0},
                                     messages=[{"role": "user", "content": f"weather please {seed}"}])
        uses = [b for b in msg.content if b.type == "tool_use"]
        assert uses and msg.stop_reason in ("tool_use", "max_tokens")
        for b in uses:
            jsonschema.validate(b.input, next(t["input_schema"] for t in TOOLS if t["name"] == b.name))
    history = [{"role": "user", "content": "weather please"},
               {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": b.id, "content": "21 C",
                                             "is_error": False, "cache_control": {"type": "ephemeral"}}
                                            for b in uses]}]
    answer = client.messages.create(model="claude-sonnet-4-5", max_tokens=5, thinking=NO_THINK, tools=TOOLS,
                                    messages=history)
    assert answer.usage.output_tokens >= 1 and answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=75, thinking=NO_THINK, tools=TOOLS,
                                tool_choice={"type": "tool", "name": "search"},
                                messages=[{"role": "user", "content": "find"}]) as stream:
        final = stream.get_final_message()
    assert [b.name for b in final.content if b.type == "tool_use"] == ["search"]
    jsonschema.validate(final.content[-1].input, TOOLS[1]["input_schema"])


def test_count_tokens_is_the_encoder_count(client: anthropic.Anthropic) -> None:
    system = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}]
    got = client.messages.count_tokens(model="claude-sonnet-4-5", system=system, messages=messages, tools=TOOLS)
    tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                               "parameters": t["input_schema"]}} for t in TOOLS]
    prompt = chat_format.encode_messages([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "What is 2+2?"}], "thinking", tools=tools)
    assert got.input_tokens == len(chat_format.encode_prompt_ids(prompt))
    off = client.messages.count_tokens(model="x", system=system, messages=messages, thinking=NO_THINK)
    plain = chat_format.encode_messages([{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "What is 2+2?"}], "chat")
    assert off.input_tokens == len(chat_format.encode_prompt_ids(plain))
    create = client.messages.create(model="x", system=system, messages=messages, thinking=NO_THINK, max_tokens=1)
    assert create.usage.input_tokens + create.usage.cache_read_input_tokens == off.input_tokens


ANTHROPIC_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("max_tokens missing", {"model": "x", "messages": [{"role": "user", "content": "hi"}]}, 422, "max_tokens"),
    ("messages a string", {"model": "x", "max_tokens": 5, "messages": "hi"}, 422, "messages"),
    ("messages empty", {"model": "x", "max_tokens": 5, "messages": []}, 422, "messages"),
    ("unknown role", {"model": "x", "max_tokens": 5, "messages": [{"role": "bot", "content": "hi"}]}, 400, "bot"),
    ("image block", {"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]}, 400, "image"),
    ("document block", {"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {}}]}]}, 400, "document"),
    ("tool_result without its tool_use", {"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}]}, 400, "toolu_9"),
    ("server tool", {"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                     "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, 400, "web_search_20250305"),
    ("bad tool_choice", {"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                         "tools": TOOLS, "tool_choice": {"type": "sometimes"}}, 400, "sometimes"),
    ("tool_choice names a missing tool", {"model": "x", "max_tokens": 5, "thinking": NO_THINK,
                                          "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
                                          "tool_choice": {"type": "tool", "name": "nope"}}, 400, "nope"),
    ("negative max_tokens", {"model": "x", "max_tokens": -1, "messages": [{"role": "user", "content": "hi"}]}, 422,
     "max_tokens"),
    ("temperature too high", {"model": "x", "max_tokens": 5, "temperature": 9,
                              "messages": [{"role": "user", "content": "hi"}]}, 400, "temperature"),
    ("bad thinking type", {"model": "x", "max_tokens": 5, "thinking": {"type": "lots"},
                           "messages": [{"role": "user", "content": "hi"}]}, 400, "lots"),
    ("bad effort", {"model": "x", "max_tokens": 5, "output_config": {"effort": "huge"},
                    "messages": [{"role": "user", "content": "hi"}]}, 400, "huge"),
    ("invalid input_schema", {"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                              "tools": [{"name": "f", "input_schema": {"type": "object", "required": 3}}]}, 400,
     "schema"),
    ("content a number", {"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": 7}]}, 422,
     "content"),
]


@pytest.mark.parametrize("name,body,status,word", ANTHROPIC_CASES, ids=[c[0] for c in ANTHROPIC_CASES])
def test_malformed_messages_request(v4_server: Any, name: str, body: dict[str, Any], status: int, word: str) -> None:
    got, data = call(v4_server.url, "/anthropic/v1/messages", body)
    assert got == status, data
    assert data["type"] == "error" and set(data["error"]) == {"type", "message"}
    assert data["error"]["type"] == "invalid_request_error" and word in data["error"]["message"]


def test_ignored_fields_are_accepted(v4_server: Any) -> None:
    body = {"model": "claude-opus-4-1", "max_tokens": 3, "stream": False, "top_k": 5, "service_tier": "auto",
            "container": "c1", "mcp_servers": [], "context_management": {"edits": [{"type": "clear_thinking_20251015",
                                                                                    "keep": "all"}]},
            "thinking": {"type": "adaptive", "display": "omitted"}, "output_config": {"effort": "high"},
            "metadata": {"user_id": '{"device_id": "abc", "session_id": "s"}'},
            "tools": [{**TOOLS[0], "cache_control": {"type": "ephemeral"}}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
            "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}, "citations": None}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi",
                                                       "cache_control": {"type": "ephemeral"}}]},
                         {"role": "system", "content": [{"type": "text", "text": "reminder"}]}]}
    got, data = call(v4_server.url, "/v1/messages?beta=true", body,
                     headers={"anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"})
    assert got == 200, data
    assert data["type"] == "message" and data["usage"]["output_tokens"] <= 3
