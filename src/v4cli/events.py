"""What every backend speaks: the typed answer events, `Reply` (the one fold of a streamed answer),
`Options`, `BackendError` and the `Backend` protocol.

`Reply.add` takes both the chat-format parser's events (`v4cli.dsml`) and these, and returns the
backend events each one completes: a tool call is reported once, whole, when its block closes. The
local engine, the remote client, the server and `chat_format.collect_events` all fold through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .dsml import ContentDelta, Done, ReasoningDelta, ToolCallDelta, ToolCallEnd, ToolCallStart
from .errors import UserError

Message = Mapping[str, Any]


@dataclass(frozen=True)
class Reasoning:
    text: str


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class ToolCall:
    """A complete call: `arguments` is a JSON object text."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Progress:
    """Prompt tokens read so far (prefill), of `total`."""

    done: int
    total: int


@dataclass(frozen=True)
class Notice:
    """A one-line remark about the backend (e.g. the tiny model's output is noise); ``warn``: shown as a
    warning (something optional is off, an answer that ran out of budget)."""

    text: str
    warn: bool = False


@dataclass(frozen=True)
class TokenInfo:
    """One generated token's log-probability and its best alternatives (when logprobs were asked for).
    `top` holds (token text, logprob) pairs, best first."""

    text: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Stats:
    """The last event of an answer."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    prefill_s: float
    decode_s: float
    finish_reason: str
    reasoning_tokens: int = 0
    stop_sequence: str | None = None  # the stop string that ended the answer, if one did

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.decode_s if self.decode_s > 0 else 0.0


BackendEvent = Reasoning | Content | ToolCall | Progress | Notice | TokenInfo | Stats


@dataclass
class Reply:
    """An answer folded from its events: what the chat history, `--json` output and the server's
    non-streaming responses keep."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tokens: list[TokenInfo] = field(default_factory=list)
    stats: Stats | None = None
    warnings: tuple[str, ...] = ()
    saw_eos: bool = False
    _open: dict[int, list[str]] = field(default_factory=dict, repr=False)  # calls whose block is still open

    def add(self, ev: Any) -> list[BackendEvent]:
        """Fold one event (a parser event or a backend event); returns the backend events it completes."""
        if isinstance(ev, ReasoningDelta):
            ev = Reasoning(ev.text)
        elif isinstance(ev, ContentDelta):
            ev = Content(ev.text)
        elif isinstance(ev, ToolCallStart):
            self._open[ev.index] = [ev.id, ev.name, ""]
            return []
        elif isinstance(ev, ToolCallDelta):
            if ev.index in self._open:
                self._open[ev.index][2] += ev.arguments
            return []
        elif isinstance(ev, ToolCallEnd):
            if ev.index not in self._open:
                return []
            cid, name, args = self._open.pop(ev.index)
            ev = ToolCall(ev.index, cid, name, args or "{}")
        elif isinstance(ev, Done):
            self.warnings, self.saw_eos = tuple(ev.warnings), ev.saw_eos
            return []
        if isinstance(ev, Content):
            if not ev.text:
                return []
            self.content += ev.text
        elif isinstance(ev, Reasoning):
            if not ev.text:
                return []
            self.reasoning += ev.text
        elif isinstance(ev, ToolCall):
            self.tool_calls.append(ev)
        elif isinstance(ev, TokenInfo):
            self.tokens.append(ev)
        elif isinstance(ev, Stats):
            self.stats = ev
        return [ev]

    def fold(self, events: Sequence[Any]) -> list[BackendEvent]:
        return [out for ev in events for out in self.add(ev)]

    def message(self) -> dict[str, Any]:
        """The OpenAI-style assistant message (reasoning kept as `reasoning_content`)."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content, "reasoning_content": self.reasoning}
        if self.tool_calls:
            msg["tool_calls"] = [tool_call_dict(c) for c in self.tool_calls]
        return msg


def tool_call_dict(call: ToolCall) -> dict[str, Any]:
    """A call in the OpenAI wire shape."""
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


class BackendError(UserError):
    """Something the user can fix (wrong URL, bad key, server refusal); the message says what."""


@dataclass
class Options:
    """Sampling knobs the REPL's /set changes; None leaves the backend's default."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int = 2048
    seed: int | None = None

    @staticmethod
    def parse(key: str, text: str) -> float | int:
        """``text`` as the value of option ``key``, checked against its range (the sampler's: `SamplingParams`);
        raises ValueError saying the valid range."""
        kind, ok, valid = OPTION_RANGES[key]
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"{key} must be {valid}, not {text!r}") from None
        if not ok(value):
            raise ValueError(f"{key} must be {valid} (got {text})")
        return value


# (type, check, the valid range in words) for each Options field; the runtime's SamplingParams checks the same
OPTION_RANGES: dict[str, tuple[type, Callable[[Any], bool], str]] = {
    "temperature": (float, lambda v: 0 <= v < float("inf"), "a number >= 0"),
    "top_p": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "max_tokens": (int, lambda v: v >= 1, "a whole number >= 1"),
    "seed": (int, lambda v: True, "a whole number"),
}


class Backend(Protocol):
    model: str

    def chat(self, messages: Sequence[Message], *, thinking: bool = True, effort: str | None = None,
             options: Options | None = None, prompt_ids: list[int] | None = None,
             cache_prefix: int | None = None) -> Iterator[BackendEvent]: ...

    def close(self) -> None: ...
