"""One request's answer as it streams: the engine loop's items -> typed backend events.

The token texts go through the chat-format parser and `Reply` (the one fold), so reasoning, content
and tool calls come out the same for the REPL, `ask` and every server dialect; the last event is
`Stats`. Feeding is pure bookkeeping: any thread or event loop can drive it.
"""

from __future__ import annotations

import time
from typing import Any

from . import chat_format
from .events import BackendEvent, Progress, Reply, Stats, TokenInfo
from .runtime.loop import Handle, Prefill


class Answer:
    def __init__(self, handle: Handle, mode: str, tokenizer: Any, *, logprobs: bool = False,
                 raw: bool = False) -> None:
        """`mode`: "thinking" or "chat" (how to parse); `raw`: plain text, no chat-format parsing
        (completions); `logprobs`: emit a TokenInfo per answer token (reasoning tokens excluded)."""
        self.handle, self.mode, self.tokenizer, self.logprobs, self.raw = handle, mode, tokenizer, logprobs, raw
        self.parser = chat_format.StreamParser(mode)
        self.reply = Reply()
        self.completion = self.reasoning_tokens = 0
        self.in_reasoning = mode == "thinking" and not raw
        self.first: float | None = None
        self.finish_reason = "abort"
        self.stop_sequence: str | None = None
        self.ended = False

    @property
    def request_id(self) -> int | None:
        return self.handle.request_id

    def feed(self, item: Any) -> list[BackendEvent]:
        """One item from the handle: Prefill -> Progress; an engine Event -> the events its text makes."""
        if isinstance(item, Prefill):
            return [Progress(item.done, item.total)]
        ev = item
        out: list[BackendEvent] = []
        if self.first is None:
            self.first = time.perf_counter()
        if ev.token_id >= 0:
            self.completion += 1
            if self.in_reasoning:
                self.reasoning_tokens += 1
                self.in_reasoning = ev.token_id != chat_format.THINK_END_ID
            elif self.logprobs and ev.logprob is not None:
                out += self.reply.fold([self._token_info(ev.logprob)])
        if self.raw:
            out += self.reply.fold([chat_format.ContentDelta(ev.text)] if ev.text else [])
        else:
            out += self.reply.fold(self.parser.feed(ev.text))
        if ev.finish_reason is not None:
            self.finish_reason, self.stop_sequence = ev.finish_reason, ev.stop
        return out

    def _token_info(self, lp: Any) -> TokenInfo:
        dec = self.tokenizer.decode
        return TokenInfo(dec([lp.token_id], skip_special_tokens=False), lp.logprob,
                         tuple((dec([t], skip_special_tokens=False), v) for t, v in lp.top))

    def finish(self) -> list[BackendEvent]:
        """The parser's last events and the Stats."""
        if self.ended:
            return []
        self.ended = True
        out = [] if self.raw else self.reply.fold(self.parser.finish())
        end = time.perf_counter()
        first = self.first or end
        reason = self.finish_reason
        if reason == "stop" and self.reply.tool_calls:
            reason = "tool_calls"
        stats = Stats(len(self.handle.prompt), self.handle.cached, self.completion, first - self.handle.submitted,
                      end - first, reason, self.reasoning_tokens, self.stop_sequence)
        return out + self.reply.fold([stats])
