"""Token ids -> text as they arrive: whole UTF-8 characters only, and stop strings held back and cut."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer


class TextStream:
    """Incremental detokenization: decodes a short window so each step costs O(1), and holds back
    text that ends inside a multi-byte character (the tokenizer then yields U+FFFD)."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False) -> None:
        self.tok, self.skip = tokenizer, skip_special
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix : self.read])
        now = self._decode(self.ids[self.prefix :])
        if now.endswith("\ufffd") or len(now) <= len(before):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before) :]

    def flush(self) -> str:
        before = self._decode(self.ids[self.prefix : self.read])
        now = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return now[len(before) :]


class StopMatcher:
    """Cuts the text at the first stop string, even one split across many pushes; text that could still
    be the start of a stop string is held back until it is known not to be."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit: str | None = None

    def push(self, text: str) -> str:
        if self.hit is not None:
            return ""
        buf = self.pending + text
        found = [(buf.find(s), s) for s in self.stops if s in buf]
        if found:
            at, self.hit = min(found)
            self.pending = ""
            return buf[:at]
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        self.pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        out, self.pending = ("" if self.hit is not None else self.pending), ""
        return out
