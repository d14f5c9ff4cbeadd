"""`v4 serve --model tiny` through the official `openai` SDK, as DeepSeek's own clients talk to it."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import openai
import pytest

from v4server import words

NO_THINK = {"thinking": {"type": "disabled"}}


@pytest.fixture(scope="module")
def client(v4_server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{v4_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_deepseek_names(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"deepseek-v4-flash", "deepseek-v4-pro", "deepseek-chat", "deepseek-reasoner", "tiny"} <= ids


def test_chat_non_streaming_thinking_off(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="deepseek-v4-flash", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=6, temperature=0, extra_body=NO_THINK)
    msg = r.choices[0].message
    assert r.object == "chat.completion" and r.model == "deepseek-v4-flash"
    assert r.system_fingerprint and r.system_fingerprint.startswith("fp_")
    assert isinstance(msg.content, str) and msg.content
    assert getattr(msg, "reasoning_content", None) is None  # no thinking: no reasoning field
    assert r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.completion_tokens <= 6 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    extra = u.model_extra
    assert extra["prompt_cache_hit_tokens"] + extra["prompt_cache_miss_tokens"] == u.prompt_tokens
    assert u.prompt_tokens_details.cached_tokens == extra["prompt_cache_hit_tokens"]
    assert u.completion_tokens_details.reasoning_tokens == 0


def test_chat_thinking_on_by_default_and_reasoner(client: openai.OpenAI) -> None:
    for model in ("deepseek-v4-flash", "deepseek-reasoner"):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Why?"}],
                                           max_tokens=5, temperature=0)
        msg = r.choices[0].message
        assert msg.model_extra.get("reasoning_content"), "thinking is DeepSeek's default"
        assert r.usage.completion_tokens_details.reasoning_tokens == r.usage.completion_tokens == 5
        assert r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "Why?"}],
                                       max_tokens=5)
    assert r.choices[0].message.model_extra.get("reasoning_content") is None  # deepseek-chat: thinking off


def test_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = dict(model="deepseek-chat", messages=[{"role": "user", "content": words(30)}],
                              max_tokens=12, temperature=0, user="stream-test")
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_streaming_thinking_deltas(client: openai.OpenAI) -> None:
    # greedy: sampled, the built-in model may close its thinking within 6 tokens and answer
    chunks = list(client.chat.completions.create(model="deepseek-reasoner", stream=True, max_tokens=6,
                                                 temperature=0, messages=[{"role": "user", "content": "Think."}]))
    reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks if c.choices)
    assert reasoning and not any(c.choices[0].delta.content for c in chunks if c.choices)


def test_repeated_prefix_and_next_turn_hit_the_cache(client: openai.OpenAI) -> None:
    system = {"role": "system", "content": "You are terse. " + words(300, seed=1)}
    first = [system, {"role": "user", "content": "First question?"}]
    kw: dict[str, Any] = dict(model="deepseek-chat", max_tokens=8, temperature=0, user="cache-test")
    a = client.chat.completions.create(messages=first, **kw)
    assert a.usage.model_extra["prompt_cache_hit_tokens"] == 0
    again = client.chat.completions.create(messages=first, **kw)
    assert again.usage.model_extra["prompt_cache_hit_tokens"] == again.usage.prompt_tokens - 1
    assert again.choices[0].message.content == a.choices[0].message.content  # restored state, same tokens
    # another question after the same system prompt: the system prompt is a unit of its own
    other = client.chat.completions.create(messages=[system, {"role": "user", "content": "Other?"}], **kw)
    assert 300 < other.usage.model_extra["prompt_cache_hit_tokens"] < other.usage.prompt_tokens - 3
    # the conversation's next turn reuses the whole first turn
    turn2 = first + [{"role": "assistant", "content": a.choices[0].message.content},
                     {"role": "user", "content": "And then?"}]
    b = client.chat.completions.create(messages=turn2, **kw)
    assert b.usage.model_extra["prompt_cache_hit_tokens"] >= a.usage.prompt_tokens
    # another user does not see these entries
    c = client.chat.completions.create(messages=first, **{**kw, "user": "someone-else"})
    assert c.usage.model_extra["prompt_cache_hit_tokens"] == 0


def test_prefix_completion(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="deepseek-chat", max_tokens=6, temperature=0,
        messages=[{"role": "user", "content": "Write code"}, {"role": "assistant", "content": "```python\nx = ",
                                                               "prefix": True}])
    assert r.choices[0].message.content  # the continuation only, as DeepSeek returns it
    plain = client.chat.completions.create(model="deepseek-chat", max_tokens=6, temperature=0,
                                           messages=[{"role": "user", "content": "Write code"}])
    assert r.choices[0].message.content != plain.choices[0].message.content


def test_fim_and_plain_completions(client: openai.OpenAI) -> None:
    fim = client.completions.create(model="deepseek-v4-flash", prompt="def add(a, b):\n", suffix="\n    return c",
                                    max_tokens=5, temperature=0)
    assert fim.object == "text_completion" and fim.choices[0].text and fim.usage.completion_tokens == 5
    plain = client.completions.create(model="deepseek-v4-flash", prompt="def add(a, b):\n", max_tokens=5,
                                      temperature=0, echo=True)
    assert plain.choices[0].text.startswith("def add(a, b):\n")
    assert plain.usage.prompt_tokens < fim.usage.prompt_tokens  # the suffix and FIM markers count
    stream = list(client.completions.create(model="deepseek-v4-flash", prompt="x = ", max_tokens=4,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in stream if c.choices)


def test_seed_stop_and_logprobs(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = dict(model="deepseek-chat", messages=[{"role": "user", "content": "Go"}], max_tokens=8)
    a = client.chat.completions.create(**kw, seed=7, temperature=1.0)
    b = client.chat.completions.create(**kw, seed=7, temperature=1.0)
    assert a.choices[0].message.content == b.choices[0].message.content
    full = client.chat.completions.create(**kw, temperature=0).choices[0].message.content
    stop = full[3:6]
    cut = client.chat.completions.create(**kw, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    lp = client.chat.completions.create(**kw, temperature=0, logprobs=True, top_logprobs=3)
    entries = lp.choices[0].logprobs.content
    assert len(entries) == lp.usage.completion_tokens
    assert all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in entries)
    assert "".join(e.token for e in entries) == lp.choices[0].message.content
    assert all(e.top_logprobs[0].logprob >= e.logprob - 1e-6 for e in entries)  # greedy picked the best


def test_prefill_progress_opt_in(v4_server: Any) -> None:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": words(1500, seed=3)}],
            "max_tokens": 2, "stream": True, "stream_options": {"include_progress": True}}
    req = urllib.request.Request(f"{v4_server.url}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        lines = [ln.decode() for ln in r]
    progress = [json.loads(ln[5:])["prompt_progress"] for ln in lines
                if ln.startswith("data: {") and "prompt_progress" in ln]
    assert len(progress) >= 2 and progress[-1]["processed"] == progress[-1]["total"]
    assert [p["processed"] for p in progress] == sorted(p["processed"] for p in progress)
    assert lines[-2].strip() == "data: [DONE]" or lines[-1].strip() == "data: [DONE]"


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city", "strict": True,
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"},
        "units": {"type": "string", "enum": ["metric", "imperial"]},
        "hourly": {"type": "boolean"}, "spots": {"type": "array", "items": {"type": "string"}}},
        "required": ["city", "days", "units"], "additionalProperties": False}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "strict": True, "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}, "filters": {"type": "object", "properties": {
            "year": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
            "required": ["year"], "additionalProperties": False}},
        "required": ["query", "filters"], "additionalProperties": False}}}


def _validate(call: Any, tools: list[dict[str, Any]]) -> dict[str, Any]:
    import jsonschema

    schema = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == call.function.name)
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, schema)
    return args


def test_json_mode_always_parses(client: openai.OpenAI) -> None:
    for i, (think, max_tokens) in enumerate([(False, 40), (False, 7), (True, 30), (True, 12), (False, 3)]):
        extra = {} if think else NO_THINK
        r = client.chat.completions.create(
            model="deepseek-v4-flash", messages=[{"role": "user", "content": f"Reply in json, case {i}"}],
            response_format={"type": "json_object"}, max_tokens=max_tokens, temperature=1.0, seed=i,
            extra_body=extra)
        assert isinstance(json.loads(r.choices[0].message.content), dict), r.choices[0].message.content
        assert r.usage.completion_tokens <= max_tokens


def test_required_and_named_tools_are_schema_valid(client: openai.OpenAI) -> None:
    tools = [WEATHER, SEARCH]
    for i, choice in enumerate(["required", {"type": "function", "function": {"name": "search"}}]):
        for max_tokens in (110, 70):
            r = client.chat.completions.create(
                model="deepseek-chat", messages=[{"role": "user", "content": "Use a tool."}], tools=tools,
                tool_choice=choice, max_tokens=max_tokens, temperature=1.0, seed=10 * i + max_tokens)
            msg = r.choices[0].message
            assert msg.tool_calls, msg
            for call in msg.tool_calls:
                _validate(call, tools)
                assert call.id and call.type == "function"
            if isinstance(choice, dict):
                assert [c.function.name for c in msg.tool_calls] == ["search"]
            assert r.choices[0].finish_reason in ("tool_calls", "length")
            assert "DSML" not in (msg.content or "")


def test_too_small_budget_for_a_tool_call_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="shortest valid tool call"):
        client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "x"}],
                                       tools=[WEATHER], tool_choice="required", max_tokens=3)


def test_tool_call_round_trip_streamed(client: openai.OpenAI) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris?"}]
    chunks = list(client.chat.completions.create(
        model="deepseek-chat", messages=messages, tools=[WEATHER], tool_choice="required", max_tokens=80,
        temperature=0, stream=True))
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] = tc.id or slot["id"]
            slot["name"] = (tc.function.name if tc.function else None) or slot["name"]
            slot["arguments"] += (tc.function.arguments if tc.function else None) or ""
    assert calls and all(json.loads(c["arguments"])["city"] is not None for c in calls.values())
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    messages.append({"role": "assistant", "content": "", "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls.values()]})
    messages += [{"role": "tool", "tool_call_id": c["id"], "content": '{"temp_c": 21}'} for c in calls.values()]
    r = client.chat.completions.create(model="deepseek-chat", messages=messages, tools=[WEATHER], max_tokens=8,
                                       temperature=0)
    assert r.choices[0].message.content is not None and r.usage.completion_tokens >= 1
    # thinking mode takes the same history back, with or without reasoning_content on the tool turn
    r = client.chat.completions.create(model="deepseek-reasoner", messages=messages, tools=[WEATHER], max_tokens=4)
    assert r.choices[0].message.model_extra.get("reasoning_content") is not None


def test_auto_with_strict_tools_and_none(client: openai.OpenAI) -> None:
    for seed in range(2):
        r = client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "Hm"}],
                                           tools=[WEATHER, SEARCH], max_tokens=40, temperature=1.0, seed=seed)
        for call in r.choices[0].message.tool_calls or []:
            _validate(call, [WEATHER, SEARCH])
        assert "DSML" not in (r.choices[0].message.content or "")
    r = client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "Hm"}],
                                       tools=[WEATHER], tool_choice="none", max_tokens=20, temperature=0)
    assert not r.choices[0].message.tool_calls
