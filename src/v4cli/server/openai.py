"""The OpenAI dialect (as DeepSeek speaks it): request bodies -> the internal `Request`, answer events ->
`chat.completion` / `text_completion` objects and their streamed chunks."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..events import Content, Progress, Reasoning, Reply, Stats, TokenInfo, ToolCall, tool_call_dict
from ..request import Request
from . import sse
from .errors import bad
from .models import ModelTable
from .openai_types import ChatCompletionRequest, ChatMessage, CompletionRequest, Sampling
from .tools import check_tools

EFFORTS = {"low": "high", "medium": "high", "high": "high", "max": "max", "xhigh": "max"}  # DeepSeek's mapping
ROLES = ("system", "user", "assistant", "tool", "developer")
DEFAULT_MAX_TOKENS = 32768
MAX_STOPS = 16


def _thinking(body: Sampling, default: bool | None) -> bool:
    if body.thinking is None:
        return True if default is None else default
    kind = body.thinking.type
    if kind not in ("enabled", "disabled", "adaptive"):
        raise bad(f"thinking.type must be 'enabled' or 'disabled', not {kind!r}", "thinking.type", 422)
    return kind != "disabled"


def sampling(body: Sampling, req: Request) -> Request:
    """The sampling fields both endpoints share, range-checked."""
    if body.temperature is not None:
        if not 0 <= body.temperature <= 2:
            raise bad(f"temperature must be between 0 and 2, got {body.temperature}", "temperature", 422)
        req.temperature = body.temperature
    if body.top_p is not None:
        if not 0 < body.top_p <= 1:
            raise bad(f"top_p must be in (0, 1], got {body.top_p}", "top_p", 422)
        req.top_p = body.top_p
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value is not None and not -2 <= value <= 2:
            raise bad(f"{name} must be between -2 and 2, got {value}", name, 422)
        setattr(req, name, value or 0.0)
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOPS:
        raise bad(f"stop takes at most {MAX_STOPS} sequences, got {len(stops)}", "stop", 422)
    req.stop = [s for s in stops if s]
    req.seed = body.seed
    user = body.user_id or body.user or ""
    if len(user) > 512:
        raise bad("user_id is longer than 512 characters", "user_id", 422)
    req.user = user
    return req


def max_tokens(requested: int | None, prompt_tokens: int, context: int, param: str = "max_tokens",
               cap: int = DEFAULT_MAX_TOKENS) -> int:
    """The answer's budget: what was asked, within what the context leaves after the prompt."""
    room = context - prompt_tokens
    if room < 1:
        raise bad(f"the prompt is {prompt_tokens} tokens but the context holds {context}; shorten the "
                  "messages or start the server with a larger --context", "messages")
    if requested is None:
        return min(room, cap)
    if requested < 1:
        raise bad(f"{param} must be at least 1, got {requested}", param, 422)
    if requested > room:
        raise bad(f"{param} is {requested} but the prompt ({prompt_tokens} tokens) leaves {room} of the "
                  f"{context}-token context; lower {param} or shorten the prompt", param)
    return requested


def _content(msg: ChatMessage, i: int) -> str | None:
    if msg.content is None or isinstance(msg.content, str):
        return msg.content
    parts = []
    for j, part in enumerate(msg.content):
        if part.type != "text":
            raise bad(f"content type {part.type!r} is not supported (only text)", f"messages[{i}].content[{j}].type")
        parts.append(part.text or "")
    return "\n\n".join(parts)


def messages(body: ChatCompletionRequest) -> tuple[list[dict[str, Any]], bool]:
    """Client messages -> the encoder's message dicts; (messages, whether the last is a prefix)."""
    out: list[dict[str, Any]] = []
    calls: set[str] = set()
    for i, m in enumerate(body.messages):
        if m.role not in ROLES:
            raise bad(f"messages[{i}].role must be one of {', '.join(ROLES)}, not {m.role!r}", f"messages[{i}].role")
        text = _content(m, i)
        role = "system" if m.role == "developer" else m.role  # OpenAI's newer name for the system role
        msg: dict[str, Any] = {"role": role, "content": text or ""}
        if role == "assistant":
            if m.reasoning_content:
                msg["reasoning_content"] = m.reasoning_content
            if m.tool_calls:
                msg["tool_calls"] = []
                for j, c in enumerate(m.tool_calls):
                    cid = c.id or f"call_{i}_{j}"
                    calls.add(cid)
                    args = c.function.arguments
                    msg["tool_calls"].append({"id": cid, "type": "function", "function": {
                        "name": c.function.name, "arguments": args if isinstance(args, str) else
                        json.dumps(args or {}, ensure_ascii=False)}})
        elif role == "tool":
            if not m.tool_call_id:
                raise bad(f"messages[{i}] is a tool result without tool_call_id", f"messages[{i}].tool_call_id")
            if m.tool_call_id not in calls:
                raise bad(f"messages[{i}] answers tool call {m.tool_call_id!r}, which no earlier assistant "
                          "message made", f"messages[{i}].tool_call_id")
            msg["tool_call_id"] = m.tool_call_id
        if text is None and role != "assistant":  # only an assistant turn (with tool calls) may have none
            raise bad(f"messages[{i}].content is missing", f"messages[{i}].content")
        out.append(msg)
    last = body.messages[-1]
    prefix = last.role == "assistant" and bool(last.prefix)
    if last.role == "assistant" and not prefix:
        raise bad("the last message is the assistant's: send a user or tool message next, or set prefix: true "
                  "on it to have the answer continue it", f"messages[{len(body.messages) - 1}]")
    if prefix and last.tool_calls:
        raise bad("a prefix message cannot carry tool_calls", f"messages[{len(body.messages) - 1}].tool_calls")
    return out, prefix


def chat_request(body: ChatCompletionRequest, table: ModelTable) -> Request:
    alias = table.resolve(body.model)
    if body.n not in (None, 1):
        raise bad(f"n must be 1, got {body.n}", "n", 422)
    req = Request(thinking=_thinking(body, alias.thinking))
    if body.reasoning_effort is not None:
        if body.reasoning_effort not in EFFORTS:
            raise bad(f"reasoning_effort must be one of {', '.join(EFFORTS)}, not {body.reasoning_effort!r}",
                      "reasoning_effort", 422)
        req.effort = EFFORTS[body.reasoning_effort]
    req.messages, req.prefix = messages(body)
    req.tools, req.tool_choice = check_tools(body.tools, body.tool_choice, req.thinking and not req.prefix)
    fmt = body.response_format.type if body.response_format else "text"
    if fmt not in ("text", "json_object"):
        raise bad(f"response_format.type must be 'text' or 'json_object', not {fmt!r}", "response_format.type", 422)
    req.json_output = fmt == "json_object"
    if body.top_logprobs is not None and not 0 <= body.top_logprobs <= 20:
        raise bad(f"top_logprobs must be between 0 and 20, got {body.top_logprobs}", "top_logprobs", 422)
    if body.top_logprobs is not None and not body.logprobs:
        raise bad("top_logprobs needs logprobs: true", "top_logprobs", 422)
    req.logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return sampling(body, req)


def completion_request(body: CompletionRequest, table: ModelTable) -> Request:
    table.resolve(body.model)
    if body.thinking is not None and body.thinking.type != "disabled":
        raise bad("completions (and FIM) work in non-thinking mode only; send thinking: {type: disabled} or "
                  "leave it out", "thinking.type")
    if body.n not in (None, 1):
        raise bad(f"n must be 1, got {body.n}", "n", 422)
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise bad(f"prompt must be one string (got a list of {len(prompt)})", "prompt", 422)
        prompt = prompt[0]
    if body.logprobs is not None and not 0 <= body.logprobs <= 20:
        raise bad(f"logprobs must be between 0 and 20, got {body.logprobs}", "logprobs", 422)
    req = Request(thinking=False, text=prompt, suffix=body.suffix, logprobs=body.logprobs)
    return sampling(body, req)


# ---- responses -------------------------------------------------------------------------------------------
@dataclass
class Meta:
    """What every object of one response repeats."""

    model: str
    fingerprint: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))


def usage(st: Stats | None) -> dict[str, Any]:
    if st is None:
        return {}
    return {"prompt_tokens": st.prompt_tokens, "completion_tokens": st.completion_tokens,
            "total_tokens": st.prompt_tokens + st.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": st.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": st.reasoning_tokens},
            "prompt_cache_hit_tokens": st.cached_tokens,
            "prompt_cache_miss_tokens": st.prompt_tokens - st.cached_tokens}


def finish_reason(st: Stats | None) -> str:
    reason = st.finish_reason if st else "stop"
    return {"abort": "stop"}.get(reason, reason)


def _logprob_entry(t: TokenInfo) -> dict[str, Any]:
    return {"token": t.text, "logprob": t.logprob, "bytes": list(t.text.encode()),
            "top_logprobs": [{"token": s, "logprob": v, "bytes": list(s.encode())} for s, v in t.top]}


def chat_object(reply: Reply, meta: Meta, thinking: bool, logprobs: bool) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": reply.content or (None if reply.tool_calls else "")}
    if thinking:
        msg["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        msg["tool_calls"] = [tool_call_dict(c) for c in reply.tool_calls]
    choice = {"index": 0, "message": msg, "logprobs": {"content": [_logprob_entry(t) for t in reply.tokens]}
              if logprobs else None, "finish_reason": finish_reason(reply.stats)}
    return {"id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
            "system_fingerprint": meta.fingerprint, "choices": [choice], "usage": usage(reply.stats)}


def _chunk(meta: Meta, choices: list[dict[str, Any]], **extra: Any) -> str:
    obj = {"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
           "system_fingerprint": meta.fingerprint, "choices": choices, **extra}
    return sse.data(obj)


async def chat_stream(events: AsyncIterator[Any], meta: Meta, thinking: bool, *, include_usage: bool,
                      progress: bool, logprobs: bool) -> AsyncIterator[str]:
    """SSE text of a streamed chat completion, ending in `data: [DONE]`."""
    first: dict[str, Any] = {"role": "assistant", "content": ""}
    if thinking:
        first["reasoning_content"] = ""
    yield _chunk(meta, [{"index": 0, "delta": first, "logprobs": None, "finish_reason": None}])
    pending: list[dict[str, Any]] = []
    stats: Stats | None = None
    calls = 0
    async for ev in events:
        delta: dict[str, Any] | None = None
        if ev is sse.KEEPALIVE:
            yield sse.comment("keep-alive")
        elif isinstance(ev, Progress):
            if progress:
                yield _chunk(meta, [], prompt_progress={"processed": ev.done, "total": ev.total})
        elif isinstance(ev, TokenInfo):
            pending.append(_logprob_entry(ev))
        elif isinstance(ev, Reasoning):
            delta = {"reasoning_content": ev.text}
        elif isinstance(ev, Content):
            delta = {"content": ev.text}
        elif isinstance(ev, ToolCall):
            delta = {"tool_calls": [{"index": calls, **tool_call_dict(ev)}]}
            calls += 1
        elif isinstance(ev, Stats):
            stats = ev
        elif isinstance(ev, sse.Failure):
            yield sse.data(ev.error.openai())
            return
        if delta is not None:
            lp = {"content": pending} if logprobs and "content" in delta else None
            if lp:
                pending = []
            yield _chunk(meta, [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": None}])
    last = {"index": 0, "delta": {}, "logprobs": {"content": pending} if logprobs and pending else None,
            "finish_reason": finish_reason(stats)}
    yield _chunk(meta, [last])
    if include_usage:
        yield _chunk(meta, [], usage=usage(stats))
    yield sse.done()


def completion_object(reply: Reply, meta: Meta, echo: str) -> dict[str, Any]:
    lp = None
    if reply.tokens:
        lp = {"tokens": [t.text for t in reply.tokens], "token_logprobs": [t.logprob for t in reply.tokens],
              "top_logprobs": [dict(t.top) for t in reply.tokens], "text_offset": _offsets(reply.tokens, len(echo))}
    choice = {"index": 0, "text": echo + reply.content, "logprobs": lp, "finish_reason": finish_reason(reply.stats)}
    return {"id": meta.id.replace("chatcmpl", "cmpl"), "object": "text_completion", "created": meta.created,
            "model": meta.model, "system_fingerprint": meta.fingerprint, "choices": [choice],
            "usage": usage(reply.stats)}


def _offsets(tokens: list[TokenInfo], start: int) -> list[int]:
    out, at = [], start
    for t in tokens:
        out.append(at)
        at += len(t.text)
    return out


async def completion_stream(events: AsyncIterator[Any], meta: Meta, echo: str, *, include_usage: bool,
                            progress: bool) -> AsyncIterator[str]:
    cid = meta.id.replace("chatcmpl", "cmpl")

    def chunk(text: str, reason: str | None, **extra: Any) -> str:
        choices = [] if text is None else [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}]
        return sse.data({"id": cid, "object": "text_completion", "created": meta.created, "model": meta.model,
                         "system_fingerprint": meta.fingerprint, "choices": choices, **extra})

    if echo:
        yield chunk(echo, None)
    stats = None
    async for ev in events:
        if ev is sse.KEEPALIVE:
            yield sse.comment("keep-alive")
        elif isinstance(ev, Progress) and progress:
            yield chunk(None, None, prompt_progress={"processed": ev.done, "total": ev.total})
        elif isinstance(ev, Content):
            yield chunk(ev.text, None)
        elif isinstance(ev, Stats):
            stats = ev
        elif isinstance(ev, sse.Failure):
            yield sse.data(ev.error.openai())
            return
    yield chunk("", finish_reason(stats))
    if include_usage:
        yield chunk(None, None, usage=usage(stats))
    yield sse.done()

