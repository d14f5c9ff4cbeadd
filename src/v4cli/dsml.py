"""DeepSeek-V4 completion parser: reasoning, content and DSML tool calls, whole or streamed.

The model writes, after the prompt's ``<think>`` (thinking mode) or ``</think>`` (chat mode)::

    REASONING</think>CONTENT\\n\\n<｜DSML｜tool_calls>
    <｜DSML｜invoke name="NAME">
    <｜DSML｜parameter name="P" string="true">raw text</｜DSML｜parameter>
    <｜DSML｜parameter name="Q" string="false">JSON value</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜tool_calls><｜end▁of▁sentence｜>

`StreamParser` turns token texts into events as they arrive; ``chat_format.parse_completion`` runs the
same machine over the whole text, so both always agree. A partial marker (``</thi``, ``<｜DS``, half an EOS) is held
back until it is known to be text or a marker, so no marker piece ever reaches the user as content.

Recovery rules. Malformed output never raises; every repair below adds its code to ``warnings``
(each code once, in order of first occurrence) and no model text is dropped except markers:

- ``missing_think_end``: thinking mode but no ``</think>``. Text up to EOS/end stays reasoning; a
  ``<｜DSML｜tool_calls`` start inside the reasoning ends it and the calls are parsed.
- ``stray_marker``: ``<think>``, BOS, or a second ``</think>`` in the text is removed.
- ``missing_tool_calls_start``: an ``<｜DSML｜invoke`` without the block start opens the block anyway.
- ``unknown_tag``: a ``<｜DSML｜other>`` tag is kept verbatim as content.
- ``malformed_tag``: a DSML tag cut off before its ``>``, with stray text among its attributes, or
  without a required ``name``, is kept verbatim as content.
- ``stray_closing_tag``: a closing tag with nothing open is removed (it carries no data).
- ``parameter_outside_invoke``: a parameter with no open invoke is kept verbatim as content.
- ``unexpected_text_in_tool_calls``: non-blank text between DSML tags goes to content.
- ``invalid_json_parameter``: a non-string (``string="false"``) value that is not JSON is kept as
  a JSON string of its raw text, so ``arguments`` stays a valid JSON object.
- ``duplicate_parameter``: both values are kept in ``arguments`` (JSON readers take the last).
- ``unterminated_parameter`` / ``unterminated_invoke`` / ``unterminated_tool_calls``: the open
  element is closed at EOS or end of text; the call keeps what it has.
- ``text_after_tool_calls``: non-blank text after ``</｜DSML｜tool_calls>`` goes to content (blank
  text there is dropped, it is the format's own spacing).
- ``text_after_eos``: anything after EOS is kept verbatim as content.

``tool_calls[i].function.arguments`` is always a JSON object text: string parameters stay strings,
others are parsed and re-serialised (``ensure_ascii=False``, separators ``", "`` and ``": "``).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
THINK_START, THINK_END = "<think>", "</think>"
DSML = "｜DSML｜"

TOOL_CALLS_OPEN = f"<{DSML}tool_calls"
_OPEN, _CLOSE = f"<{DSML}", f"</{DSML}"
_PARAM_CLOSE = f"</{DSML}parameter>"
_SEP = "\n\n"  # the encoder always puts a blank line between content and the tool-call block
_REASONING_MARKERS = (THINK_END, _SEP + TOOL_CALLS_OPEN, TOOL_CALLS_OPEN, EOS, THINK_START, BOS)
_CONTENT_MARKERS = (EOS, _SEP + _OPEN, _OPEN, _SEP + _CLOSE, _CLOSE, THINK_END, THINK_START, BOS)
_TOOL_MARKERS = (_OPEN, _CLOSE, EOS)
_TAG_RE = re.compile(rf"<(/?){DSML}(\w*)(.*)>", re.DOTALL)
_ATTR_RE = re.compile(r'(\w+)="([^"]*)"')
_ATTRS_RE = re.compile(r'(?:\s+\w+="[^"]*")*\s*')  # stray text in a tag makes it malformed, not dropped
_PARAM_STOPS = (_PARAM_CLOSE, EOS)
_MAX_TAG = 2048  # a "tag" longer than this without '>' is text, not a tag being streamed


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of ``function.arguments``; the pieces of one call concatenate to a JSON object."""

    index: int
    arguments: str


@dataclass(frozen=True)
class ToolCallEnd:
    index: int


@dataclass(frozen=True)
class Done:
    saw_eos: bool
    warnings: tuple[str, ...]


Event = ReasoningDelta | ContentDelta | ToolCallStart | ToolCallDelta | ToolCallEnd | Done


def _find_first(buf: str, markers: Iterable[str]) -> tuple[int, str] | None:
    """Earliest marker occurrence; on a tie the longer marker wins (it includes the separator)."""
    best: tuple[int, str] | None = None
    for m in markers:
        pos = buf.find(m)
        if pos != -1 and (best is None or pos < best[0] or (pos == best[0] and len(m) > len(best[1]))):
            best = (pos, m)
    return best


def _holdback(buf: str, markers: Iterable[str]) -> int:
    """Length of the longest tail of ``buf`` that could still grow into a marker."""
    keep = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(buf)), keep, -1):
            if buf.endswith(m[:n]):
                keep = n
                break
    return keep


def _tag_end(buf: str) -> int:
    """Length of the tag at the head of ``buf`` (quotes respected); 0 if its '>' may still come.

    Negative: not a tag; its first ``-n`` characters are text (up to an unquoted '<', or a length
    cap, so a whole text and any chunking of it decide alike).
    """
    quoted = False
    for i in range(1, min(len(buf), _MAX_TAG)):
        ch = buf[i]
        if ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return i + 1
        elif ch == "<" and not quoted:
            return -i
    return -_MAX_TAG if len(buf) >= _MAX_TAG else 0


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN/Infinity are not JSON; treat them as invalid values


def _default_id(index: int) -> str:
    return "call_" + secrets.token_hex(12)


class StreamParser:
    """Incremental parser: ``feed(token_text)`` then ``finish()``; both return new events."""

    def __init__(self, thinking_mode: str = "thinking", id_factory: Callable[[int], str] | None = None):
        if thinking_mode not in ("thinking", "chat"):
            raise ValueError(f"thinking_mode must be 'thinking' or 'chat', not {thinking_mode!r}")
        self._state = "reasoning" if thinking_mode == "thinking" else "content"
        self._new_id = id_factory or _default_id
        self._buf = ""
        self._param: tuple[str, str | None] | None = None  # (name, string attr); None: stray, to content
        self._value: list[str] = []
        self._events: list[Event] = []
        self._warnings: list[str] = []
        self._calls = 0
        self._open_call: int | None = None
        self._params: list[str] = []
        self._block_open = False
        self._after_tools = False
        self._pending_sep = ""
        self._junk_run = False
        self._saw_eos = False
        self._done = False

    def feed(self, text: str) -> list[Event]:
        if self._done:
            raise RuntimeError("feed() after finish()")
        self._buf += text
        while self._step(final=False):
            pass
        return self._drain()

    def finish(self) -> list[Event]:
        if self._done:
            return []
        while self._step(final=True):
            pass
        if self._state == "reasoning":
            self._warn("missing_think_end")
        if self._open_call is not None:
            self._close_call("unterminated_invoke")
        if self._block_open:
            self._warn("unterminated_tool_calls")
        self._events.append(Done(self._saw_eos, tuple(self._warnings)))
        self._done = True
        return self._drain()

    # -- helpers ---------------------------------------------------------------------------
    def _drain(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def _warn(self, code: str) -> None:
        if code not in self._warnings:
            self._warnings.append(code)

    def _consume(self, n: int) -> None:
        self._buf = self._buf[n:]

    def _reasoning(self, text: str) -> None:
        if text:
            self._events.append(ReasoningDelta(text))

    def _content(self, text: str) -> None:
        if self._after_tools:
            # Blank text after the block is the format's own spacing; anything else is a deviation.
            text = text.lstrip()
            if not text:
                return
            self._warn("text_after_tool_calls")
            self._after_tools = False
        if text:
            self._events.append(ContentDelta(text))

    def _flush_sep(self) -> None:
        sep, self._pending_sep = self._pending_sep, ""
        self._content(sep)

    def _close_call(self, warning: str | None = None) -> None:
        if warning:
            self._warn(warning)
        index = self._open_call
        assert index is not None
        self._events.append(ToolCallDelta(index, "}" if self._params else "{}"))
        self._events.append(ToolCallEnd(index))
        self._open_call, self._params = None, []

    def _open_block(self) -> None:
        self._block_open, self._pending_sep, self._after_tools = True, "", False

    # -- the state machine -----------------------------------------------------------------
    def _step(self, final: bool) -> bool:
        """Handle one thing at the head of the buffer; False when more input is needed."""
        if self._state == "param":
            return self._step_param(final)
        if not self._buf:
            return False
        if self._state == "after_eos":
            self._warn("text_after_eos")
            self._events.append(ContentDelta(self._buf))
            self._consume(len(self._buf))
            return False
        if self._state == "tools":
            return self._step_tools(final)
        markers = _REASONING_MARKERS if self._state == "reasoning" else _CONTENT_MARKERS
        emit = self._reasoning if self._state == "reasoning" else self._content
        hit = _find_first(self._buf, markers)
        if hit is None:
            keep = 0 if final else _holdback(self._buf, markers)
            emit(self._buf[: len(self._buf) - keep])
            self._consume(len(self._buf) - keep)
            return False
        pos, marker = hit
        emit(self._buf[:pos])
        if marker == EOS:
            if self._state == "reasoning":
                self._warn("missing_think_end")
            self._saw_eos, self._state = True, "after_eos"
            self._consume(pos + len(EOS))
        elif marker == THINK_END and self._state == "reasoning":
            self._state = "content"
            self._consume(pos + len(marker))
        elif marker in (THINK_START, THINK_END, BOS):
            self._warn("stray_marker")
            self._consume(pos + len(marker))
        else:  # a DSML tag: keep it in the buffer for the tool-call state
            if self._state == "reasoning":
                self._warn("missing_think_end")
            sep = _SEP if marker.startswith(_SEP) else ""
            self._pending_sep = sep if self._state == "content" else ""
            self._state = "tools"
            self._consume(pos + len(sep))
        return True

    def _step_tools(self, final: bool) -> bool:
        buf = self._buf
        if self._block_open and not self._junk_run and buf[:1].isspace():
            self._consume(len(buf) - len(buf.lstrip()))  # spacing between tags
            return bool(self._buf)
        if buf.startswith(EOS):
            self._junk_run = False
            if self._open_call is not None:
                self._close_call("unterminated_invoke")
            if self._block_open:
                self._warn("unterminated_tool_calls")
            self._block_open, self._saw_eos, self._state = False, True, "after_eos"
            self._consume(len(EOS))
            return True
        if buf.startswith((_OPEN, _CLOSE)):
            return self._tag(final)
        if not final and any(m.startswith(buf) for m in _TOOL_MARKERS):
            return False  # could still become a tag or EOS
        hit = _find_first(buf, _TOOL_MARKERS)
        end = hit[0] if hit else len(buf) - (0 if final else _holdback(buf, _TOOL_MARKERS))
        if end:
            # Inside a run of stray text, spaces are the model's text; only spacing between tags is not.
            self._junk_run = True
            self._warn("unexpected_text_in_tool_calls")
            self._content(buf[:end])
            self._consume(end)
        return hit is not None

    def _junk(self, text: str, warning: str) -> None:
        self._flush_sep()
        self._warn(warning)
        self._content(text)
        self._consume(len(text))

    def _leave_if_no_block(self) -> None:
        if not self._block_open:
            self._flush_sep()
            self._state = "content"

    def _tag(self, final: bool) -> bool:
        buf = self._buf
        self._junk_run = False
        end = _tag_end(buf)
        if end == 0 and not final:
            return False
        if end <= 0:  # cut off by the end of the text, or a '<' before its '>': not a tag
            self._junk(buf[: -end] if end else buf, "malformed_tag")
            self._leave_if_no_block()
            return True
        tag = buf[:end]
        match = _TAG_RE.fullmatch(tag)
        assert match is not None  # the buffer starts with the DSML prefix and the tag ends in '>'
        closing, name = match.group(1) == "/", match.group(2)
        attrs = dict(_ATTR_RE.findall(match.group(3)))
        kind = "/" + name if closing else name
        if (not _ATTRS_RE.fullmatch(match.group(3)) or (closing and attrs)
                or (kind in ("invoke", "parameter") and "name" not in attrs)):
            self._junk(tag, "malformed_tag")
        elif kind in ("/tool_calls", "/invoke", "/parameter"):
            self._closing_tag(name)
            self._consume(end)
        elif kind == "tool_calls":
            if not self._block_open:
                self._open_block()
            self._consume(end)
        elif kind == "invoke":
            self._invoke(attrs["name"])
            self._consume(end)
        elif kind == "parameter":
            self._parameter_tag(tag, attrs)
            return True
        else:
            self._junk(tag, "unknown_tag")
        self._leave_if_no_block()
        return True

    def _closing_tag(self, name: str) -> None:
        if name == "invoke" and self._open_call is not None:
            self._close_call()
        elif name == "tool_calls" and self._block_open:
            if self._open_call is not None:
                self._close_call("unterminated_invoke")
            self._block_open, self._after_tools, self._state = False, True, "content"
        else:
            self._warn("stray_closing_tag")

    def _invoke(self, name: str) -> None:
        if not self._block_open:
            self._warn("missing_tool_calls_start")
            self._open_block()
        if self._open_call is not None:
            self._close_call("unterminated_invoke")
        index, self._calls = self._calls, self._calls + 1
        self._open_call = index
        self._events.append(ToolCallStart(index, self._new_id(index), name))

    def _parameter_tag(self, tag: str, attrs: dict[str, str]) -> None:
        if self._open_call is None:
            self._junk(tag, "parameter_outside_invoke")
            self._param = None  # its value and closing tag follow as content too
        else:
            self._consume(len(tag))
            self._param = (attrs["name"], attrs.get("string"))
        self._value, self._state = [], "param"

    def _step_param(self, final: bool) -> bool:
        # Values can be long (file contents): they move out of the buffer as they arrive.
        buf = self._buf
        hit = _find_first(buf, _PARAM_STOPS)
        if hit is None and not final:
            n = len(buf) - _holdback(buf, _PARAM_STOPS)
            self._take_value(buf[:n])
            self._consume(n)
            return False
        stop = hit[0] if hit else len(buf)
        closed = hit is not None and hit[1] == _PARAM_CLOSE
        self._take_value(buf[:stop])
        self._consume(stop + (len(_PARAM_CLOSE) if closed else 0))
        if self._param is None:
            self._content(_PARAM_CLOSE if closed else "")
        else:
            if not closed:
                self._warn("unterminated_parameter")
            self._add_param(*self._param, "".join(self._value))
        self._state = "tools"
        self._leave_if_no_block()
        return True

    def _take_value(self, text: str) -> None:
        if self._param is None:
            self._content(text)
        else:
            self._value.append(text)

    def _add_param(self, key: str, string: str | None, value: str) -> None:
        assert self._open_call is not None
        if string == "true":
            encoded = json.dumps(value, ensure_ascii=False)
        else:
            try:
                encoded = json.dumps(json.loads(value, parse_constant=_reject_constant), ensure_ascii=False)
            except ValueError:
                self._warn("invalid_json_parameter")
                encoded = json.dumps(value, ensure_ascii=False)
        if key in self._params:
            self._warn("duplicate_parameter")
        piece = (", " if self._params else "{") + json.dumps(key, ensure_ascii=False) + ": " + encoded
        self._params.append(key)
        self._events.append(ToolCallDelta(self._open_call, piece))
