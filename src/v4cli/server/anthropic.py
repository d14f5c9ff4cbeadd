"""The Anthropic Messages dialect (as DeepSeek serves it at /anthropic): request bodies -> the internal
`Request`, answer events -> `message` objects and their event stream, errors in Anthropic's shape.

What DeepSeek ignores is accepted and ignored (cache_control, citations, is_error, top_k, budget_tokens,
context_management, container, mcp_servers, service_tier, disable_parallel_tool_use, anthropic-beta);
what it does not support (images, documents, server tools, ...) is refused with the block's name.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ..events import Content, Progress, Reasoning, Reply, Stats, ToolCall
from ..request import Request
from . import sse
from .anthropic_types import Block, CountTokensRequest, MessagesRequest
from .errors import bad
from .models import Alias, ModelTable, UnknownModel
from .openai import EFFORTS
from .tools import check_tools

TEXTUAL = ("text",)
UNSUPPORTED = "image, document, search_result, redacted_thinking, server tool and MCP blocks"
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "abort": "end_turn"}


def resolve(table: ModelTable, name: str) -> Alias:
    """DeepSeek's mapping: our own names as in the OpenAI format; claude-opus* -> pro, claude-sonnet* and
    claude-haiku* -> flash, anything else -> flash. One server has one model, which answers them all."""
    try:
        return table.resolve(name)
    except UnknownModel:
        return Alias(table.family or "flash")


def _text(content: str | list[Block] | None, where: str) -> str:
    """Text of a string or of text blocks (tool_result contents); other blocks are refused by name."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for j, b in enumerate(content):
        if b.type not in TEXTUAL:
            raise bad(f"{where}[{j}] is a {b.type!r} block, which is not supported (only text; DeepSeek "
                      f"does not take {UNSUPPORTED})", f"{where}[{j}].type")
        parts.append(b.text or "")
    return "\n\n".join(parts)


def _messages(body: CountTokensRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if body.system:
        out.append({"role": "system", "content": _text(body.system, "system")})
    calls: set[str] = set()
    for i, m in enumerate(body.messages):
        where = f"messages[{i}].content"
        if m.role not in ("user", "assistant", "system"):
            raise bad(f"messages[{i}].role must be user or assistant, not {m.role!r}", f"messages[{i}].role")
        if m.role == "system":  # Claude Code sends one mid-conversation: read it as the user's instructions
            out.append({"role": "user", "content": _text(m.content, where)})
            continue
        blocks = [Block(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        texts, reasoning, tool_calls = [], [], []
        for j, b in enumerate(blocks):
            here = f"{where}[{j}]"
            if b.type == "text":
                texts.append(b.text or "")
            elif b.type == "thinking" and m.role == "assistant":
                reasoning.append(b.thinking or "")
            elif b.type == "tool_use" and m.role == "assistant":
                if not b.id or not b.name:
                    raise bad(f"{here} (tool_use) needs an id and a name", here)
                calls.add(b.id)
                tool_calls.append({"id": b.id, "type": "function", "function": {
                    "name": b.name, "arguments": json.dumps(b.input or {}, ensure_ascii=False)}})
            elif b.type == "tool_result" and m.role == "user":
                if b.tool_use_id not in calls:
                    raise bad(f"{here} answers tool_use {b.tool_use_id!r}, which no earlier assistant message "
                              "made", f"{here}.tool_use_id")
                if texts:  # keep the order: text before the result is its own user message
                    out.append({"role": "user", "content": "\n\n".join(texts)})
                    texts = []
                out.append({"role": "tool", "tool_call_id": b.tool_use_id,
                            "content": _text(b.content, f"{here}.content")})
            else:
                raise bad(f"{here} is a {b.type!r} block, which is not supported in a {m.role} message "
                          f"(DeepSeek does not take {UNSUPPORTED})", f"{here}.type")
        if m.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts)}
            if reasoning:
                msg["reasoning_content"] = "".join(reasoning)
            if tool_calls:
                msg["tool_calls"] = tool_calls
            out.append(msg)
        elif texts or not any(b.type == "tool_result" for b in blocks):
            out.append({"role": "user", "content": "\n\n".join(texts)})
    last = out[-1]
    prefix = last["role"] == "assistant"
    if prefix and last.get("tool_calls"):
        raise bad("the last message is an assistant tool_use: send the tool_result in a user message next",
                  f"messages[{len(body.messages) - 1}]")
    return out


def _tools(body: CountTokensRequest, thinking: bool) -> tuple[list[dict[str, Any]], str]:
    tools = []
    for i, t in enumerate(body.tools or []):
        if t.type not in (None, "custom"):
            raise bad(f"tools[{i}] is a {t.type!r} server tool, which is not supported (only custom tools)",
                      f"tools[{i}].type")
        tools.append({"type": "function", "function": {
            "name": t.name, "description": t.description or "", "parameters": t.input_schema}})
    choice: Any = None
    if body.tool_choice is not None:
        kind = body.tool_choice.type
        if kind not in ("auto", "any", "none", "tool"):
            raise bad(f"tool_choice.type must be auto, any, none or tool, not {kind!r}", "tool_choice.type")
        choice = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or \
            {"type": "function", "function": {"name": body.tool_choice.name}}
    return check_tools(tools, choice, thinking, max_name=128)


def request(body: CountTokensRequest, table: ModelTable) -> Request:
    alias = resolve(table, body.model)
    kind = body.thinking.type if body.thinking else None
    if kind not in (None, "enabled", "disabled", "adaptive"):
        raise bad(f"thinking.type must be enabled, disabled or adaptive, not {kind!r}", "thinking.type")
    thinking = kind != "disabled" if kind else (True if alias.thinking is None else alias.thinking)
    req = Request(thinking=thinking)
    effort = body.output_config.effort if body.output_config else None
    if effort is not None:
        if effort not in EFFORTS:
            raise bad(f"output_config.effort must be one of {', '.join(EFFORTS)}, not {effort!r}",
                      "output_config.effort")
        req.effort = EFFORTS[effort]
    req.messages = _messages(body)
    req.prefix = req.messages[-1]["role"] == "assistant"  # Anthropic continues a final assistant message
    req.tools, req.tool_choice = _tools(body, req.thinking and not req.prefix)
    if isinstance(body, MessagesRequest):
        if body.temperature is not None:
            if not 0 <= body.temperature <= 2:
                raise bad(f"temperature must be between 0 and 2, got {body.temperature}", "temperature")
            req.temperature = body.temperature
        if body.top_p is not None:
            if not 0 < body.top_p <= 1:
                raise bad(f"top_p must be in (0, 1], got {body.top_p}", "top_p")
            req.top_p = body.top_p
        req.stop = [s for s in body.stop_sequences or [] if s]
        user = body.metadata.user_id if body.metadata else None
        req.user = hashlib.sha256(user.encode()).hexdigest()[:32] if user else ""  # any string: Claude Code's is JSON
    return req


# ---- responses -------------------------------------------------------------------------------------------
def _signature(text: str) -> str:
    """An opaque signature for a thinking block (clients send it back; we do not check it)."""
    return "v4:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def usage(st: Stats | None, prompt_tokens: int = 0, cached: int = 0) -> dict[str, Any]:
    if st is not None:
        prompt_tokens, cached = st.prompt_tokens, st.cached_tokens
    return {"input_tokens": prompt_tokens - cached, "output_tokens": st.completion_tokens if st else 0,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def _stop(st: Stats | None) -> tuple[str, str | None]:
    if st is None:
        return "end_turn", None
    if st.stop_sequence is not None:
        return "stop_sequence", st.stop_sequence
    return STOP_REASONS.get(st.finish_reason, "end_turn"), None


def message_object(reply: Reply, model: str, msg_id: str, thinking: bool, show_thinking: bool) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if thinking and reply.reasoning:
        content.append({"type": "thinking", "thinking": reply.reasoning if show_thinking else "",
                        "signature": _signature(reply.reasoning)})
    if reply.content:
        content.append({"type": "text", "text": reply.content})
    for call in reply.tool_calls:
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": json.loads(call.arguments)})
    reason, seq = _stop(reply.stats)
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": reason, "stop_sequence": seq, "usage": usage(reply.stats)}


def new_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


async def message_stream(events: AsyncIterator[Any], answer: Any, model: str, msg_id: str, *,
                         show_thinking: bool) -> AsyncIterator[str]:
    """The SSE events the Anthropic SDKs parse. message_start waits for the request to be admitted (its
    cache hits are known then); `ping`s keep the connection alive meanwhile and while a prompt is read."""
    started, index, open_kind, reasoning = False, -1, None, ""

    def start() -> str:
        nonlocal started
        started = True
        msg = {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None,
               "usage": usage(None, len(answer.handle.prompt), answer.handle.cached)}
        return sse.event("message_start", {"type": "message_start", "message": msg})

    def close() -> list[str]:
        nonlocal open_kind
        out = []
        if open_kind == "thinking":
            out.append(sse.event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                "type": "signature_delta", "signature": _signature(reasoning)}}))
        if open_kind is not None:
            out.append(sse.event("content_block_stop", {"type": "content_block_stop", "index": index}))
        open_kind = None
        return out

    def open_block(kind: str, block: dict[str, Any]) -> list[str]:
        nonlocal index, open_kind
        out = close()
        index += 1
        open_kind = kind
        out.append(sse.event("content_block_start", {"type": "content_block_start", "index": index,
                                                     "content_block": block}))
        return out

    def delta(d: dict[str, Any]) -> str:
        return sse.event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})

    stats: Stats | None = None
    async for ev in events:
        if ev is sse.KEEPALIVE or (isinstance(ev, Progress) and started):
            yield sse.event("ping", {"type": "ping"})
            continue
        if isinstance(ev, sse.Failure):
            yield sse.event("error", ev.error.anthropic())
            return
        if not started:
            yield start()
        if isinstance(ev, Reasoning):
            if open_kind != "thinking":
                for s in open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""}):
                    yield s
            reasoning += ev.text
            if show_thinking:
                yield delta({"type": "thinking_delta", "thinking": ev.text})
        elif isinstance(ev, Content):
            if open_kind != "text":
                for s in open_block("text", {"type": "text", "text": ""}):
                    yield s
            yield delta({"type": "text_delta", "text": ev.text})
        elif isinstance(ev, ToolCall):
            for s in open_block("tool_use", {"type": "tool_use", "id": ev.id, "name": ev.name, "input": {}}):
                yield s
            yield delta({"type": "input_json_delta", "partial_json": ev.arguments})
        elif isinstance(ev, Stats):
            stats = ev
    if not started:
        yield start()
    for s in close():
        yield s
    reason, seq = _stop(stats)
    yield sse.event("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": seq},
                                      "usage": usage(stats)})
    yield sse.event("message_stop", {"type": "message_stop"})

