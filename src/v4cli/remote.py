"""The client for any OpenAI-compatible server (`v4 chat --url`): streamed Chat Completions over urllib."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from .dsml import ContentDelta, ReasoningDelta, ToolCallDelta, ToolCallEnd, ToolCallStart
from .events import BackendError, BackendEvent, Message, Options, Reply, Stats


def _endpoint(url: str, path: str = "chat/completions") -> str:
    """`http://host:8000` -> `.../v1/chat/completions`; a URL already ending in /v1 (or any /vN) keeps it."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        url = url[: -len("/chat/completions")]
    last = url.rsplit("/", 1)[-1]
    if not (last.startswith("v") and last[1:].isdigit()) and url.count("/") <= 2:  # bare host: OpenAI's /v1
        url += "/v1"
    return f"{url}/{path}"


def _http_error(code: int, body: bytes, where: str) -> BackendError:
    try:
        err = json.loads(body or b"{}")
        detail = err.get("error", err)
        detail = detail.get("message", detail) if isinstance(detail, dict) else detail
    except ValueError:
        detail = body.decode("utf-8", "replace").strip()[:300]
    hint = {401: " Set --api-key or V4_API_KEY.", 402: " The account has no balance left.",
            404: " Check --url (and --model).", 429: " Too many requests: wait and try again."}.get(code, "")
    return BackendError(f"{where} answered HTTP {code}: {detail or 'no details'}.{hint}")


class RemoteBackend:
    """Any OpenAI-compatible `/v1/chat/completions` (v4 serve, DeepSeek's API, SGLang, vLLM), streamed
    as server-sent events. Sends DeepSeek's `thinking` and `reasoning_effort` fields."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, timeout: float = 600) -> None:
        # a bare host:port means http://host:port, as curl and httpie read it; said only if it fails
        self.assumed = None if "://" in url else f"--url {url} was read as http://{url}"
        url = url if self.assumed is None else f"http://{url}"
        self.url, self.timeout = url, timeout
        self.api_key = api_key or os.environ.get("V4_API_KEY") or None
        self.model = model or ""
        self.endpoint = _endpoint(url)

    def _request(self, url: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if body else "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        try:
            req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body else "GET")
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as e:
            raise _http_error(e.code, e.read(), url) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            told = f" ({self.assumed}; give the scheme if it is https://)" if self.assumed else ""
            raise BackendError(f"cannot reach {url}: {reason}{told}. Is the server running? (`v4 serve` starts "
                               "one)") from None
        except ValueError as e:  # urllib refuses the URL itself (a scheme it does not know, no host)
            raise BackendError(f"--url {self.url} is not a URL urllib can open: {e}. Use http://HOST:PORT") from None

    def resolve_model(self) -> str:
        """The model to ask for: the one given, else the server's first listed model."""
        if not self.model:
            try:
                with self._request(_endpoint(self.url, "models"), timeout=10) as resp:
                    models = json.loads(resp.read()).get("data") or []
                self.model = models[0]["id"] if models else "deepseek-v4-flash"
            except (BackendError, ValueError, KeyError, TypeError):
                self.model = "deepseek-v4-flash"
        return self.model

    def chat(self, messages: Sequence[Message], *, thinking: bool = True, effort: str | None = None,
             options: Options | None = None, prompt_ids: list[int] | None = None,
             cache_prefix: int | None = None) -> Iterator[BackendEvent]:
        opts = options or Options()
        body: dict[str, Any] = {
            "model": self.resolve_model(), "stream": True, "stream_options": {"include_usage": True},
            # reasoning is only needed back on turns with tool calls (DeepSeek's rule); drop it elsewhere
            "messages": [{k: v for k, v in m.items() if k != "reasoning_content" or m.get("tool_calls")}
                         for m in messages],
            "thinking": {"type": "enabled" if thinking else "disabled"}, "max_tokens": opts.max_tokens,
        }
        if effort:
            body["reasoning_effort"] = effort
        for key in ("temperature", "top_p", "seed"):
            if getattr(opts, key) is not None:
                body[key] = getattr(opts, key)
        t0 = time.perf_counter()
        resp = self._request(self.endpoint, body)
        first: float | None = None
        reply, usage = Reply(), {}
        reason, pieces, calls = "stop", 0, set()
        try:
            for chunk in _sse(resp, self.endpoint):
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if first is None and (delta.get("content") or delta.get("reasoning_content")):
                        first = time.perf_counter()
                    parts: list[Any] = []
                    if delta.get("reasoning_content"):
                        parts.append(ReasoningDelta(delta["reasoning_content"]))
                    if delta.get("content"):
                        parts.append(ContentDelta(delta["content"]))
                    pieces += len(parts)
                    for tc in delta.get("tool_calls") or []:  # a call streams as pieces of one index
                        i, fn = int(tc.get("index", len(calls))), tc.get("function") or {}
                        if i not in calls:
                            calls.add(i)
                            parts.append(ToolCallStart(i, tc.get("id") or "", fn.get("name") or ""))
                        if fn.get("arguments"):
                            parts.append(ToolCallDelta(i, fn["arguments"]))
                    yield from reply.fold(parts)
                    reason = choice.get("finish_reason") or reason
        finally:
            resp.close()  # on Ctrl-C too: closing the connection is how a client cancels
        yield from reply.fold([ToolCallEnd(i) for i in sorted(calls)])
        end = time.perf_counter()
        first = first or end
        cached = usage.get("prompt_cache_hit_tokens")
        if cached is None:
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
        yield Stats(int(usage.get("prompt_tokens", 0)), int(cached or 0),
                    int(usage.get("completion_tokens", pieces)), first - t0, end - first, reason,
                    int(reasoning or 0))

    def close(self) -> None:
        pass


class StreamCut(BackendError):
    """A stream that ended before `[DONE]`."""


def _sse(resp: Any, where: str, *, require_done: bool = False, last: str | None = None) -> Iterator[dict[str, Any]]:
    """The JSON objects of an SSE stream's `data:` lines, until `[DONE]`; `: keep-alive` comments skipped.
    `last`: the `type` of the event that ends a stream instead (Anthropic's `message_stop`; yielded).
    `require_done`: a stream that ends without its end marker was cut (the server died or a proxy gave up)."""
    for raw in resp:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line.startswith("data:"):
            continue  # blank separators, comments (": keep-alive"), event:/id: fields
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise BackendError(f"{where} sent something that is not JSON: {data[:200]!r}") from None
        if isinstance(chunk, dict) and chunk.get("error"):
            err = chunk["error"]
            msg = err.get("message", err) if isinstance(err, dict) else err
            raise BackendError(f"{where} reported an error: {msg}")
        yield chunk
        if last is not None and isinstance(chunk, dict) and chunk.get("type") == last:
            return
    if require_done:
        raise StreamCut(f"{where} closed the stream before {last or '[DONE]'}: the answer was cut off")
