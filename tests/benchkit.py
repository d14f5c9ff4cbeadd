"""For the `v4 bench` tests: `bench(...)` runs the CLI in-process, `SMALL` keeps answers a few tokens long,
and `Misbehaving` is an endpoint that misbehaves on purpose: a stdlib HTTP server standing in for a
remote API in both formats (OpenAI Chat Completions, or Anthropic Messages for a path with /messages),
answering each POST as its plan says: an HTTP status with the format's error body, a cut stream, a
stall, endless keep-alives, or a good answer."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from typer.testing import CliRunner

from hubserver import LoopbackServer
from v4cli.cli import app

SMALL = ["--max-tokens", "4", "--answer-tokens", "4", "--think-tokens", "4"]
_runner = CliRunner()


def bench(*args: str) -> Any:
    """`v4 bench ARGS` in-process: the Click result (exit_code, output, stdout)."""
    return _runner.invoke(app, ["bench", *args], catch_exceptions=False)


ANSWER = '{"name": "Lyon"}'
ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
                    500: "api_error", 529: "overloaded_error"}


def openai_chunks(text: str) -> list[bytes]:
    """A streamed answer of `text` in two pieces: 100 prompt tokens (64 from the cache), 5 completion."""
    base = {"id": "x", "object": "chat.completion.chunk", "system_fingerprint": "fp_fake"}
    out = [base | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    out += [base | {"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in (text[:3], text[3:])]
    out.append(base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    out.append(base | {"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
                                                "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36}})
    return [f"data: {json.dumps(c)}\n\n".encode() for c in out]


def anthropic_events(text: str) -> list[bytes]:
    """The same answer as Messages events (input_tokens leaves the 64 cached ones out, as Anthropic's does)."""
    msg = {"id": "msg_fake", "type": "message", "role": "assistant", "model": "deepseek-v4-flash", "content": [],
           "stop_reason": None, "stop_sequence": None,
           "usage": {"input_tokens": 36, "cache_read_input_tokens": 64, "cache_creation_input_tokens": None,
                     "output_tokens": 1}}
    out = [{"type": "message_start", "message": msg},
           {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
           {"type": "ping"}]
    out += [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            for piece in (text[:3], text[3:])]
    out += [{"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": 5}},
            {"type": "message_stop"}]
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in out]


class Misbehaving(LoopbackServer):
    """Answers POSTs with `plan` in order (then "ok"): an HTTP status, "cut" (a stream that stops before
    [DONE] or message_stop), "stall" (no answer for seconds), "keepalive" (only keep-alive comments), "ok".
    `seen` counts the POSTs, `requests` keeps each one's (path, headers)."""

    def __init__(self, plan: list[Any]) -> None:
        self.plan, self.lock, self.seen = list(plan), threading.Lock(), 0
        self.requests: list[tuple[str, dict[str, str]]] = []

    def __enter__(self) -> Misbehaving:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, status: int, value: Any) -> None:
                body = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._json(200, {"data": [{"id": "deepseek-v4-flash"}]})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                anthropic = "/messages" in self.path
                with fake.lock:
                    what = fake.plan.pop(0) if fake.plan else "ok"
                    fake.seen += 1
                    fake.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                if isinstance(what, int):
                    message = f"fake {what}"
                    self._json(what, {"type": "error", "error": {"type": ANTHROPIC_ERRORS.get(what, "api_error"),
                                                                 "message": message}} if anthropic else
                               {"error": {"message": message, "type": "invalid_request_error"}})
                    return
                if what == "stall":
                    time.sleep(2.5)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                if what == "keepalive":
                    for _ in range(12):
                        self.wfile.write(b"event: ping\ndata: {\"type\": \"ping\"}\n\n" if anthropic
                                         else b": keep-alive\n\n")
                        self.wfile.flush()
                        time.sleep(0.2)
                    return
                if anthropic:  # cut: after the first piece of text, before message_stop
                    events = anthropic_events(ANSWER)
                    self.wfile.write(b"".join(events[:4] if what == "cut" else events))
                else:
                    chunks = openai_chunks(ANSWER)
                    self.wfile.write(b"".join(chunks[:2] if what == "cut" else [*chunks, b"data: [DONE]\n\n"]))
                self.wfile.flush()
                self.close_connection = True

        self._start(Handler)
        return self
