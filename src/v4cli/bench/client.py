"""One streamed request as a client sees it: its timings, the usage the endpoint reports, what came back,
or how it failed. `Client` speaks the OpenAI Chat Completions format over urllib (the same wire code as
`v4 chat --url`: `v4cli.remote`), so it measures `v4 serve`, DeepSeek's API, SGLang or vLLM alike;
`anthropic.AnthropicClient` is the same client in the Anthropic Messages format.

The suites write OpenAI-shaped bodies; a client turns them into its format (`_payload`) and reads its
format's stream into the same `Call` (`_read`). A failure never raises: it is a `Failure` in the `Call`,
classified (refused, http, cut, timeout, bad_response) in one place for both formats, so a run goes on
and the report says what happened to each request."""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from ..events import BackendError
from ..remote import StreamCut, _endpoint, _http_error, _sse


@dataclass
class Failure:
    kind: str  # refused | http | cut | timeout | bad_response
    message: str
    status: int | None = None


@dataclass
class Usage:
    """What the endpoint says it counted (`reported` False when it sent no usage at all)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt_cache_hit_tokens, else prompt_tokens_details.cached_tokens
    reasoning_tokens: int = 0
    reported: bool = False

    @classmethod
    def parse(cls, u: dict[str, Any] | None) -> Usage:
        if not u:
            return cls()
        cached = u.get("prompt_cache_hit_tokens")
        if cached is None:
            cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
        reasoning = (u.get("completion_tokens_details") or {}).get("reasoning_tokens")
        return cls(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0), int(cached or 0),
                   int(reasoning or 0), True)

    @classmethod
    def anthropic(cls, u: dict[str, Any] | None) -> Usage:
        """Anthropic's usage (message_start's merged with message_delta's, which may repeat or update it).
        Its input_tokens leaves out the tokens read from or written to the cache: the prompt is all three."""
        if not u:
            return cls()
        n = {k: int(u.get(k) or 0) for k in ("input_tokens", "cache_read_input_tokens",
                                            "cache_creation_input_tokens", "output_tokens")}
        return cls(n["input_tokens"] + n["cache_read_input_tokens"] + n["cache_creation_input_tokens"],
                   n["output_tokens"], n["cache_read_input_tokens"], 0, True)


@dataclass
class Call:
    """One request's outcome. Times are seconds: `started_s` from the run's start, `ttft_s` from the
    request to its first content, reasoning or tool-call delta, `total_s` to the end of the stream."""

    started_s: float
    total_s: float = 0.0
    ttft_s: float | None = None
    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, str]] = field(default_factory=list)  # {id, name, arguments}
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    fingerprint: str | None = None
    error: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def first(self, start: float) -> None:
        """Output has come (content, reasoning or a tool call): the first time, that is the TTFT."""
        if self.ttft_s is None:
            self.ttft_s = time.perf_counter() - start

    @property
    def prefill_tps(self) -> float | None:
        """Prompt tokens computed (not read from the cache) per second until the first token."""
        if not self.ok or not self.ttft_s or not self.usage.reported:
            return None
        return (self.usage.prompt_tokens - self.usage.cached_tokens) / self.ttft_s

    @property
    def decode_tps(self) -> float | None:
        """Tokens after the first per second of decoding (None with fewer than two tokens)."""
        n = self.usage.completion_tokens
        if not self.ok or self.ttft_s is None or n < 2 or self.total_s <= self.ttft_s:
            return None
        return (n - 1) / (self.total_s - self.ttft_s)


class Client:
    """An OpenAI-compatible endpoint: `url` as `v4 chat --url` takes it (a bare host gets /v1)."""

    format = "openai"
    json_mode_note: str | None = None  # why the format has no JSON mode (None: it has response_format)

    def __init__(self, url: str, *, api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0) -> None:
        self.url, self.timeout = url, timeout
        self.api_key = api_key or os.environ.get("V4_API_KEY") or None
        self.model = model or ""
        self.endpoint = self._endpoint(url)
        self.t0 = time.perf_counter()

    def _endpoint(self, url: str, path: str = "chat/completions") -> str:
        return _endpoint(url, path)

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def resolve_model(self) -> str:
        """The model asked for: the one given, else the endpoint's first listed one (else DeepSeek's Flash)."""
        if not self.model:
            req = urllib.request.Request(self._endpoint(self.url, "models"), headers=self._headers())
            try:
                with urllib.request.urlopen(req, timeout=min(self.timeout, 30)) as resp:
                    data = json.loads(resp.read()).get("data") or []
                self.model = str(data[0]["id"]) if data else "deepseek-v4-flash"
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self.model = "deepseek-v4-flash"
        return self.model

    def _payload(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"model": self.resolve_model(), **body, "stream": True, "stream_options": {"include_usage": True}}

    def chat(self, body: dict[str, Any]) -> Call:
        """Send `body` (OpenAI-shaped messages and options; model and streaming are added) and read the
        whole stream. Never raises for what the endpoint does."""
        payload = self._payload(body)
        start = time.perf_counter()
        call = Call(started_s=start - self.t0)
        try:
            req = urllib.request.Request(self.endpoint, json.dumps(payload).encode(), self._headers(), method="POST")
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                self._read(_until(resp, start + self.timeout), start, call)
        except urllib.error.HTTPError as e:
            call.error = Failure("http", str(_http_error(e.code, e.read(), self.endpoint)), e.code)
        except StreamCut as e:
            call.error = Failure("cut", str(e))
        except BackendError as e:  # not JSON, or an error event inside the stream
            call.error = Failure("bad_response", str(e))
        except TimeoutError:
            call.error = Failure("timeout", f"{self.endpoint} did not answer within {self.timeout:g} s")
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, TimeoutError):
                call.error = Failure("timeout", f"{self.endpoint} did not answer within {self.timeout:g} s")
            else:
                call.error = Failure("refused", f"cannot reach {self.endpoint}: {reason}")
        except (http.client.HTTPException, ConnectionError, OSError) as e:  # the connection died mid-answer
            call.error = Failure("cut", f"{self.endpoint} broke the connection mid-answer: "
                                 f"{type(e).__name__}: {e}".rstrip(": "))
        call.total_s = time.perf_counter() - start
        return call

    def _read(self, lines: Any, start: float, call: Call) -> None:
        """Chat Completions chunks into `call`: content, reasoning_content and tool-call pieces by index."""
        calls: dict[int, dict[str, str]] = {}
        for chunk in _sse(lines, self.endpoint, require_done=True):
            call.fingerprint = chunk.get("system_fingerprint") or call.fingerprint
            if chunk.get("usage"):
                call.usage = Usage.parse(chunk["usage"])
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                text, thought = delta.get("content") or "", delta.get("reasoning_content") or ""
                pieces = delta.get("tool_calls") or []
                if text or thought or pieces:
                    call.first(start)
                call.content += text
                call.reasoning += thought
                for tc in pieces:  # a call may stream as pieces of one index
                    slot = calls.setdefault(int(tc.get("index", len(calls))), {"id": "", "name": "",
                                                                               "arguments": ""})
                    fn = tc.get("function") or {}
                    slot["id"] = tc.get("id") or slot["id"]
                    slot["name"] += fn.get("name") or ""
                    slot["arguments"] += fn.get("arguments") or ""
                call.finish_reason = choice.get("finish_reason") or call.finish_reason
        call.tool_calls = [calls[i] for i in sorted(calls)]


def _until(lines: Any, deadline: float) -> Any:
    """The stream's lines until `deadline` (perf_counter), then TimeoutError: keep-alive comments reset the
    socket's timeout, so a request queued for ever would otherwise never time out."""
    for raw in lines:
        if time.perf_counter() > deadline:
            raise TimeoutError
        yield raw
