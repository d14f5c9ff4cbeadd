"""Piped input for `v4 ask` (`cat build.log | v4 ask ...`): read with a bound, refuse binary, and cut what
does not fit the token budget, keeping the head and (mostly) the tail, where a log says what went wrong.

The bound: at most `READ_BYTES_PER_TOKEN` bytes per token of budget (never under `MIN_READ_BYTES`). Text
runs 2 to 4 bytes a token (log lines full of numbers and ids nearer 2), so what is read is a few times what
can be kept, while `< /dev/zero` or a 200 MB log stops after a bounded read instead of filling memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from ..errors import UserError
from .files import _decode

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

READ_BYTES_PER_TOKEN = 16
MIN_READ_BYTES = 1 << 20
_CHUNK = 1 << 16
HEAD_SHARE, HEAD_MAX = 5, 4096  # a cut keeps 1/5 of the room (at most 4096 tokens) for the head: the command
MIN_STDIN_TOKENS = 64  # less room than this for stdin is no room: the budget is refused instead


class StdinError(UserError, ValueError):
    """Piped input that is not text."""


@dataclass
class Piped:
    """Text read from stdin: ``bytes`` read, ``complete`` False when reading stopped at ``limit`` bytes."""

    text: str
    bytes: int
    complete: bool = True
    limit: int = 0


def read_limit(budget_tokens: int) -> int:
    return max(MIN_READ_BYTES, READ_BYTES_PER_TOKEN * budget_tokens)


def read_piped(stream: IO[bytes], limit: int) -> Piped | None:
    """Read at most ``limit`` bytes (and one more, to know whether more followed); None when empty or blank.

    Binary input (a NUL byte, or mostly control bytes) raises `StdinError` as soon as it is seen."""
    chunks: list[bytes] = []
    n = 0
    while n <= limit:
        chunk = stream.read(min(_CHUNK, limit + 1 - n))
        if not chunk:
            break
        utf16 = (chunks[0] if chunks else chunk).startswith((b"\xff\xfe", b"\xfe\xff"))
        if not utf16 and b"\0" in chunk:
            raise StdinError(_binary(n + chunk.index(b"\0")))
        chunks.append(chunk)
        n += len(chunk)
    data = b"".join(chunks)
    complete = len(data) <= limit
    if not complete:
        data = _whole_lines(data[:limit])
    text, _ = _decode(data)
    if text is None:
        raise StdinError(_binary(None))
    return Piped(text, n, complete, limit) if text.strip() else None


def _binary(at: int | None) -> str:
    where = f"a NUL byte at offset {at:,}" if at is not None else "mostly control bytes"
    return (f"stdin is not text ({where}); pipe text into v4 ask (for a binary file, `strings FILE | v4 ask ...`), "
            "or name a file with --file")


def _whole_lines(data: bytes) -> bytes:
    """Data cut at the read limit, ending at its last newline (or, in one long line, on a whole character)."""
    nl = data.rfind(b"\n", max(len(data) - _CHUNK, 0))
    if nl >= 0:
        return data[: nl + 1]
    for back in range(1, 4):  # an unfinished UTF-8 sequence at the end: its lead byte is within 3 bytes
        if len(data) >= back and data[-back] & 0xC0 == 0xC0:
            need = 2 if data[-back] < 0xE0 else 3 if data[-back] < 0xF0 else 4
            return data[:-back] if need > back else data
    return data


# --------------------------------------------------------------------------------------------------- cut

@dataclass
class StdinCut:
    """What a cut kept of stdin, for the summary: lines kept at the head and tail of ``lines`` read."""

    bytes: int
    complete: bool
    limit: int
    lines: int
    head_lines: int
    tail_lines: int
    cut_lines: int
    cut_bytes: int
    cut_tokens: int

    def describe(self) -> str:
        kept = (f"its first {self.head_lines:,} and last {self.tail_lines:,} lines" if self.head_lines
                else f"its last {self.tail_lines:,} lines")
        text = ""
        if self.cut_lines or self.cut_bytes:
            text = (f"stdin cut to fit the token budget: kept {kept} of {self.lines:,} "
                    f"({self.cut_lines:,} lines, {self.cut_bytes:,} bytes, about {self.cut_tokens:,} tokens cut)")
        if not self.complete:
            text += ("; " if text else "") + (
                f"stdin is longer than {self.limit:,} bytes (the read limit, {READ_BYTES_PER_TOKEN} bytes per "
                f"token of budget): only its first {self.limit:,} bytes were read (pipe its end: `tail -c`)")
        return text

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _lines(text: str) -> int:
    return text.count("\n") + (not text.endswith("\n") and bool(text))


def fit_piped(piped: Piped, defused: str, cap: int, tok: Tokenizer, wrap: Callable[[str], str],
              whole_enc: Encoding | None = None) -> tuple[str, list[int], StdinCut | None] | None:
    """The ``<stdin>`` block (``wrap(text)``) and its ids in at most ``cap`` tokens: whole when it fits, else
    its head and tail with a line in the text saying what was cut; None when ``cap`` leaves no room for any.
    ``defused``: piped.text made safe (`defuse`); the cut is made on it, so the kept tokens are the prompt's.
    ``whole_enc``: ``wrap(defused)`` already encoded (the caller counted it)."""
    whole = wrap(defused)
    enc = whole_enc or tok.encode(whole, add_special_tokens=False)
    if len(enc.ids) <= cap and piped.complete:
        return whole, enc.ids, None
    start = whole.index("\n") + 1  # where the text starts in the block (after "<stdin>\n")
    offsets = [a - start for a, _ in enc.offsets]
    body = [i for i, a in enumerate(offsets) if 0 <= a < len(defused)]
    first, n = (body[0], len(body)) if body else (0, 0)
    room = cap - (len(enc.ids) - n) - 48  # the tags, the marker lines and some slack
    for _ in range(8):
        if room < MIN_STDIN_TOKENS and n > room:
            return None
        if n <= room:
            head_end = tail_start = len(defused)
        else:
            head_k = min(room // HEAD_SHARE, HEAD_MAX) if room >= 8 * MIN_STDIN_TOKENS else 0
            head_end = offsets[first + head_k] if head_k else 0
            nl = defused.rfind("\n", 0, head_end)
            head_end = nl + 1 if nl >= 0 else head_end
            tail_start = offsets[first + n - (room - head_k)]
            if tail_start > 0 and defused[tail_start - 1] != "\n":
                nl = defused.find("\n", tail_start)
                tail_start = nl + 1 if 0 <= nl < len(defused) - 1 else tail_start
            tail_start = max(tail_start, head_end)
        head, cut, tail = defused[:head_end], defused[head_end:tail_start], defused[tail_start:]
        cut_tokens = sum(1 for i in body if head_end <= offsets[i] < tail_start)
        marker = (f"[... {len(cut.encode()):,} bytes ({_lines(cut):,} line(s), about {cut_tokens:,} tokens) cut "
                  "here to fit the token budget ...]\n") if cut else ""
        end = "" if piped.complete else f"[... stdin went on past {piped.limit:,} bytes; the rest was not read ...]\n"
        sep = "" if not head or head.endswith("\n") else "\n"
        tail_sep = "" if not tail or tail.endswith("\n") or not end else "\n"
        text = wrap(head + sep + marker + tail + tail_sep + end)
        ids = tok.encode(text, add_special_tokens=False).ids
        if len(ids) <= cap:
            info = StdinCut(piped.bytes, piped.complete, piped.limit, _lines(defused), _lines(head),
                            _lines(tail), _lines(cut), len(cut.encode()), cut_tokens)
            return text, ids, info
        room -= len(ids) - cap + 16  # a line boundary moved more than the slack covers: take less
    return None
