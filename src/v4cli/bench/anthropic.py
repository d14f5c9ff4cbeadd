"""The bench client in the Anthropic Messages format (DeepSeek's /anthropic, `v4 serve`'s /v1/messages and
/anthropic/v1/messages, SGLang, vLLM): the suites' OpenAI-shaped bodies as Messages requests, and the
Messages event stream read into the same `Call` (tool_use blocks as {id, name, arguments}), so the
scorers, the report and compare treat both formats alike. HTTP, SSE and the failure classes are
`client.Client`'s: one place for each rule."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from ..remote import _sse
from .client import Call, Client, Usage

FORMATS = ("openai", "anthropic")
VERSION = "2023-06-01"  # anthropic-version: DeepSeek ignores it, Anthropic's SDKs send this one
# Anthropic's stop reasons in the OpenAI terms the rest of the report uses
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
NO_JSON_MODE = ("not supported by the anthropic format: Messages has no response_format, and DeepSeek's "
                "Anthropic API (as v4 serve's) takes output_config.effort only")
# the body keys the suites send and the Messages field each becomes (messages and tools are rebuilt)
_KEPT = {"max_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "thinking": "thinking",
         "stop": "stop_sequences"}


def is_messages_url(url: str) -> bool:
    """The format rule when --format is not given: anthropic when the URL's path ends in /anthropic,
    /anthropic/v1 or /v1/messages (DeepSeek's https://api.deepseek.com/anthropic), else openai."""
    path = urllib.parse.urlsplit(url if "://" in url else f"http://{url}").path.rstrip("/")
    return path.endswith(("/anthropic", "/anthropic/v1", "/v1/messages"))


def messages_url(url: str, path: str = "messages") -> str:
    """`https://api.deepseek.com/anthropic` -> `.../anthropic/v1/messages`; a URL ending in /v1 gets
    /messages and one ending in /v1/messages is kept. `path` "models": the model list beside it."""
    url = url.rstrip("/")
    if url.endswith("/v1/messages"):
        url = url[: -len("/messages")]
    elif not url.endswith("/v1"):
        url += "/v1"
    return f"{url}/{path}"


def _input(arguments: str) -> dict[str, Any]:
    """A replayed call's arguments as a tool_use input (an object; arguments that are not one, as an
    endpoint may have sent, go back empty: Messages has no way to carry them)."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _assistant(m: dict[str, Any]) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    if m.get("reasoning_content") is not None:  # sent back first, as Anthropic's thinking turns are
        blocks.append({"type": "thinking", "thinking": m["reasoning_content"], "signature": ""})
    if m.get("content"):
        blocks.append({"type": "text", "text": m["content"]})
    for tc in m.get("tool_calls") or []:
        fn = tc["function"]
        blocks.append({"type": "tool_use", "id": tc["id"], "name": fn["name"], "input": _input(fn["arguments"])})
    return {"role": "assistant", "content": blocks or m.get("content") or ""}


def _tool_choice(choice: Any) -> dict[str, Any]:
    if isinstance(choice, dict):  # {"type": "function", "function": {"name": ...}}: that tool, forced
        return {"type": "tool", "name": choice["function"]["name"]}
    return {"type": {"required": "any"}.get(choice, choice)}  # auto, none; required is "any"


def messages_body(body: dict[str, Any]) -> dict[str, Any]:
    """A suite's Chat Completions body as a Messages body: system messages into `system`, tool results
    into tool_result blocks of one user turn, an assistant's calls (and the reasoning sent back) into
    tool_use and thinking blocks, tools into input_schema, tool_choice into auto, any, none or tool."""
    if "response_format" in body:
        raise ValueError(f"JSON mode is {NO_JSON_MODE}")
    unknown = set(body) - {"messages", "tools", "tool_choice", *_KEPT}
    if unknown:  # a suite option this format would drop silently
        raise ValueError(f"no Messages field for {', '.join(sorted(unknown))}")
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for m in body["messages"]:
        if m["role"] == "system":
            system.append(m["content"])
        elif m["role"] == "assistant":
            messages.append(_assistant(m))
        elif m["role"] == "tool":  # results of one turn's calls go back together, in one user message
            block = {"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": m["content"]}
            last = messages[-1] if messages else None
            if last and last["role"] == "user" and isinstance(last["content"], list):
                last["content"].append(block)
            else:
                messages.append({"role": "user", "content": [block]})
        else:
            messages.append({"role": "user", "content": m["content"]})
    out: dict[str, Any] = {_KEPT[k]: v for k, v in body.items() if k in _KEPT}
    out["messages"] = messages
    if system:
        out["system"] = "\n\n".join(system)
    if body.get("tools"):
        out["tools"] = [{"name": t["function"]["name"], "description": t["function"].get("description", ""),
                         "input_schema": t["function"].get("parameters") or {"type": "object"}}
                        for t in body["tools"]]
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    return out


class AnthropicClient(Client):
    """An Anthropic-compatible endpoint: POST {base}/v1/messages with x-api-key and anthropic-version."""

    format = "anthropic"
    json_mode_note = NO_JSON_MODE

    def _endpoint(self, url: str, path: str = "messages") -> str:
        return messages_url(url, path)

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "text/event-stream", "anthropic-version": VERSION}
        if self.api_key:
            h["x-api-key"] = self.api_key
        return h

    def _payload(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"model": self.resolve_model(), **messages_body(body), "stream": True}

    def _read(self, lines: Any, start: float, call: Call) -> None:
        """Messages events into `call`: text, thinking and tool_use blocks by index, the usage of
        message_start and message_delta merged; a stream without message_stop was cut."""
        usage: dict[str, Any] = {}
        calls: dict[int, dict[str, str]] = {}
        given: dict[int, Any] = {}  # a tool_use block's own input, for a call that streams no input_json
        for ev in _sse(lines, self.endpoint, require_done=True, last="message_stop"):
            kind = ev.get("type")
            if kind == "message_start":
                usage |= {k: v for k, v in ((ev.get("message") or {}).get("usage") or {}).items() if v is not None}
            elif kind == "content_block_start":
                block, i = ev.get("content_block") or {}, int(ev.get("index", len(calls)))
                if block.get("type") == "tool_use":
                    call.first(start)  # its name is the first of the call to come out
                    calls[i] = {"id": str(block.get("id") or ""), "name": str(block.get("name") or ""),
                                "arguments": ""}
                    given[i] = block.get("input")
                elif block.get("text") or block.get("thinking"):  # a block that starts with its text
                    call.first(start)
                    call.content += block.get("text") or ""
                    call.reasoning += block.get("thinking") or ""
            elif kind == "content_block_delta":
                d, i = ev.get("delta") or {}, int(ev.get("index", 0))
                piece = {"text_delta": d.get("text"), "thinking_delta": d.get("thinking"),
                         "input_json_delta": d.get("partial_json")}.get(d.get("type")) or ""
                if piece:
                    call.first(start)
                if d.get("type") == "text_delta":
                    call.content += piece
                elif d.get("type") == "thinking_delta":
                    call.reasoning += piece
                elif d.get("type") == "input_json_delta":
                    calls.setdefault(i, {"id": "", "name": "", "arguments": ""})["arguments"] += piece
            elif kind == "message_delta":
                reason = (ev.get("delta") or {}).get("stop_reason")
                if reason:
                    call.finish_reason = STOP_REASONS.get(reason, reason)
                usage |= {k: v for k, v in (ev.get("usage") or {}).items() if v is not None}
        for i, slot in calls.items():
            if not slot["arguments"] and isinstance(given.get(i), dict):
                slot["arguments"] = json.dumps(given[i], ensure_ascii=False)
        call.tool_calls = [calls[i] for i in sorted(calls)]
        call.usage = Usage.anthropic(usage)


def client(url: str, fmt: str, **kwargs: Any) -> Client:
    """The client of `fmt` ("openai" or "anthropic") for `url`."""
    return (AnthropicClient if fmt == "anthropic" else Client)(url, **kwargs)
