"""The grammar as a logits processor: llguidance's token mask, plus a budget that always closes.

Budget: the processor keeps a *closing plan*, a greedy continuation that completes the grammar (per
`Scanner` context, the first valid token of `_CLOSERS`, else the forced tokens, else the longest
allowed token; at the first free choice, such as a tool or an enum value, the candidate whose own
closing is shortest). When the plan needs every token left, its next token is forced. Within
``margin`` tokens of that point, a token is allowed only if the output still closes in time after
it: plain text tokens in free text (they never lengthen the closing) and, of the rest, the model's
best ``n_verify`` candidates, each checked. ``margin`` is twice the costliest first choice the
planner saw (a tool's cheapest call), so one token cannot open more than the budget can close. The
output cut at ``max_tokens`` is then complete under the grammar (the finish reason stays ``length``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llguidance
import numpy as np
import torch

from ..chat_format import DSML, DSML_ID, EOS_ID, THINK_END_ID

REASON, TEXT, JSON, RAW, TAG, TAGS = "reason", "text", "json", "raw", "tag", "tags"
_CLOSERS: dict[str, list[str]] = {  # in order of preference; "D" is the DSML token
    JSON + '"': ['"}', '"]', '"'],
    JSON: ["}}", "]}", "}]", "]]", "}", "]", "D", "</", "0", '""', '"', ":", ",", "false", "null", "true",
           "{}", "[]", "{", "["],
    RAW: ["D", "</"],
    TAG: ['">', '"', ">", "false", "true"],
    TAGS: ["D", "</", "<"],
}


def _ids(bitmask: bytes) -> np.ndarray:
    """The token ids set in an llguidance bitmask (little-endian bits)."""
    packed = np.frombuffer(bitmask, np.uint8)
    nz = np.flatnonzero(packed)
    bits = np.unpackbits(packed[nz], bitorder="little").reshape(-1, 8).astype(bool)
    return (nz[:, None] * 8 + np.arange(8))[bits]


def _plain(data: bytes) -> bool:
    """Text that no grammar here treats as structure: whole UTF-8, no quotes, brackets or escapes."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(text) and not any(c in '"\\<>{}[]:,' or (c < " " and c != "\n") for c in text)


class Vocab:
    """llguidance's view of one tokenizer (built once: a few seconds), token bytes and the closers."""

    def __init__(self, tokenizer: Any) -> None:
        spec = json.loads(tokenizer.to_str())
        for added in spec.get("added_tokens", []):
            if added["content"] == DSML:  # not "<...>"-shaped, so llguidance would take it for text
                added["special"] = True
        self.size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.ll = llguidance.LLTokenizer(json.dumps(spec), n_vocab=self.size, eos_token=EOS_ID)
        self.prefs = {mode: [i for i in map(self._one_token, texts) if i is not None]
                      for mode, texts in _CLOSERS.items()}
        self.prefs[REASON] = [THINK_END_ID]
        self.bytes_of = [self.ll.decode_bytes([i]) for i in range(self.size)]
        special = [i for i in range(self.size) if self.ll.is_special_token(i)]
        self.lengths = np.array([len(b) for b in self.bytes_of], np.int32)
        self.lengths[special] = 0  # the planner's last resort is the longest allowed text token
        self.plain = np.array([_plain(b) for b in self.bytes_of], bool)
        self.plain[special] = False
        self._cache: dict[str, llguidance.LLMatcher] = {}

    def _one_token(self, text: str) -> int | None:
        if text == "D":
            return DSML_ID
        ids = self.ll.tokenize_str(text)
        return ids[0] if len(ids) == 1 else None

    def token_bytes(self, token: int) -> bytes:
        return self.bytes_of[token] if 0 <= token < self.size else b""

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        """A fresh matcher (compiling a grammar takes milliseconds; copying a compiled one, microseconds)."""
        base = self._cache.get(grammar)
        if base is None:
            base = llguidance.LLMatcher(self.ll, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
            if base.is_error():
                raise ValueError(f"grammar does not compile: {base.get_error()}")
            if len(self._cache) >= 64:
                self._cache.pop(next(iter(self._cache)))
            self._cache[grammar] = base
        return base.deep_copy()


@dataclass
class Scanner:
    """Where the output is, as the closing planner needs it: reasoning, free text, JSON (in a string
    or not), a raw parameter value, inside a DSML tag, or between tags."""

    mode: str
    after_think: str
    in_string: bool = False
    escaped: bool = False
    quoted: bool = False
    tag: bytes = b""

    def feed(self, token: int, data: bytes) -> None:
        if token == THINK_END_ID and self.mode == REASON:
            self.mode = self.after_think
            return
        if token == DSML_ID:
            self.mode, self.tag, self.quoted = TAG, b"", False
            return
        if self.mode == TAG:
            for i, b in enumerate(data):
                if b == 0x22:
                    self.quoted = not self.quoted
                elif b == 0x3E and not self.quoted:
                    self._end_tag(self.tag + data[:i])
                    return self.feed(-1, data[i + 1:])
            self.tag += data
        elif self.mode == JSON:
            for b in data:
                if self.escaped:
                    self.escaped = False
                elif b == 0x5C and self.in_string:
                    self.escaped = True
                elif b == 0x22:
                    self.in_string = not self.in_string

    def _end_tag(self, tag: bytes) -> None:
        value = b'string="true"' in tag, b'string="false"' in tag
        self.mode = RAW if value[0] else JSON if value[1] else TAGS
        self.in_string = self.escaped = False

    def key(self) -> str:
        return JSON + '"' if self.mode == JSON and self.in_string else self.mode


class GrammarProcessor:
    """One request's constraint: ``(history, logits) -> logits`` with every grammar-invalid token at -inf
    (after the grammar is complete, all but EOS). Stateful: it follows ``history`` as it grows (and
    rolls back if it shrinks, as a rejected speculative draft does)."""

    def __init__(self, vocab: Vocab, grammar: str, *, start: str, after_think: str, max_tokens: int,
                 probe: Sequence[int] = (), margin: int = 32, n_verify: int = 16) -> None:
        self.vocab, self.max_tokens, self.n_verify = vocab, max_tokens, n_verify
        self.matcher = vocab.matcher(grammar)
        self._start = Scanner(start, after_think)
        self.scanner = copy.copy(self._start)
        self.tokens: list[int] = []
        self._last: tuple[int, list[int] | None] = (-2, None)
        self.worst = 0  # the costliest first choice seen by a planner: about the biggest step one token can add
        plan = self.plan(10_000, choose=True)
        self.min_tokens = len(plan) if plan is not None else None  # the shortest complete output found
        if probe and self.matcher.validate_tokens(list(probe)) == len(probe):
            self.matcher.consume_tokens(list(probe))
            self.plan(10_000, self._fed(self.scanner, list(probe)), choose=True)
            self.matcher.rollback(len(probe))
        self.margin = max(margin, 2 * self.worst, 2 * (self.min_tokens or 0))
        self._plan_len = self.min_tokens or 0

    # ---- following the request ---------------------------------------------------------------------
    def _sync(self, history: Sequence[int]) -> None:
        n = len(self.tokens)
        if len(history) < n or (n and history[n - 1] != self.tokens[-1]):
            keep = 0
            while keep < min(n, len(history)) and history[keep] == self.tokens[keep]:
                keep += 1
            self.matcher.rollback(n - keep)
            del self.tokens[keep:]
            self._last = (-2, None)
            self.scanner = copy.copy(self._start)
            for t in self.tokens:
                self.scanner.feed(t, self.vocab.token_bytes(t))
        for t in history[len(self.tokens):]:
            self.tokens.append(t)
            if not self.matcher.consume_token(t):
                return  # an invalid token (another processor's choice): from here on only EOS
            self.scanner.feed(t, self.vocab.token_bytes(t))

    # ---- closing -----------------------------------------------------------------------------------
    def plan(self, limit: int, scanner: Scanner | None = None, choose: bool = False) -> list[int] | None:
        """The greedy closing continuation from here (empty when already complete), None if it needs more
        than ``limit`` tokens. With ``choose``, its first free choice (a tool or parameter name, an enum
        value) goes to the candidate whose own closing is shortest. The matcher is left as it was."""
        m, s, out = self.matcher, copy.copy(scanner or self.scanner), []
        try:
            while not m.is_accepting():
                if len(out) >= limit or m.is_error():
                    return None
                options = [step[: limit - len(out)] for step in self._closers(m, s)]
                if not options or m.validate_tokens(options[0]) < len(options[0]):
                    return None
                if choose and len(options) > 1:
                    best: list[int] | None = None
                    for step in options:
                        m.consume_tokens(step)
                        rest = self.plan(limit - len(out) - 1, self._fed(s, step))
                        m.rollback(1)
                        if rest is not None and (best is None or len(rest) + 1 < len(best)):
                            best = step + rest
                        if rest is not None:
                            self.worst = max(self.worst, len(out) + 1 + len(rest))
                    return None if best is None else out + best
                m.consume_tokens(options[0])
                s = self._fed(s, options[0])
                out += options[0]
            return out
        finally:
            m.rollback(len(out))

    def _fed(self, s: Scanner, tokens: list[int]) -> Scanner:
        s = copy.copy(s)
        for t in tokens:
            s.feed(t, self.vocab.token_bytes(t))
        return s

    def _closers(self, m: llguidance.LLMatcher, s: Scanner) -> list[list[int]]:
        """Next steps toward the end: the first valid closing preference, else the forced tokens, else
        the longest allowed token for each first byte (up to 8), one step each."""
        for t in self.vocab.prefs.get(s.key(), ()):
            if m.validate_tokens([t]):
                return [[t]]
        forced = m.compute_ff_tokens()
        if forced:
            return [forced]
        ids = _ids(m.compute_bitmask())
        ids = ids[ids < self.vocab.size]
        ids = ids[self.vocab.lengths[ids] > 0]
        if len(ids) > 64:
            ids = ids[np.argpartition(self.vocab.lengths[ids], len(ids) - 64)[-64:]]
        best: dict[int, int] = {}  # the longest token per first byte: one for each way to go on
        for t in sorted(ids.tolist(), key=lambda t: -self.vocab.lengths[t]):
            best.setdefault(self.vocab.bytes_of[t][0], t)
        return [[t] for t in list(best.values())[:8]]

    def _fits(self, token: int, left: int, plan: list[int]) -> bool:
        """Whether the output still closes in ``left`` tokens after ``token``."""
        m = self.matcher
        if token == EOS_ID or (plan and token == plan[0]):
            return True
        if not m.consume_token(token):
            return False
        saved = self.scanner
        try:
            if len(plan) < left and m.validate_tokens(plan + [EOS_ID]) > len(plan):
                return True  # the same closing still works (the common case: a token of text)
            self.scanner = copy.copy(saved)
            self.scanner.feed(token, self.vocab.token_bytes(token))
            return self.plan(left - 1) is not None or self.plan(left - 1, choose=True) is not None
        finally:
            self.scanner = saved
            m.rollback(1)

    # ---- the processor -----------------------------------------------------------------------------
    def mask(self, history: Sequence[int]) -> tuple[np.ndarray, list[int] | None]:
        """The grammar's allowed tokens (bool over the vocabulary) after ``history``, and the budget's
        say: None (free), the one forced token, or the plan to check candidates against."""
        self._sync(history)
        m = self.matcher
        if m.is_error():
            mask = np.zeros(self.vocab.size, bool)
            mask[EOS_ID] = True
            return mask, None
        bits = np.unpackbits(np.frombuffer(m.compute_bitmask(), np.uint8), bitorder="little")
        mask = bits[: self.vocab.size].view(bool)
        left = self.max_tokens - len(history)
        if left <= 0 or (left > self._plan_len + self.margin + 64 and len(history) % 8):
            return mask, None
        last = self._last[1]
        if self._last[0] == len(history) - 1 and last and history[-1] == last[0]:
            plan = last[1:]  # the model followed the plan: the rest of it still closes
        elif last is not None and len(last) <= left and m.validate_tokens(last + [EOS_ID]) > len(last):
            plan = last  # the last plan still closes from here (the model wrote text)
        else:
            plan = self.plan(left, choose=True)
            plan = self.plan(10 * left + 100, choose=True) if plan is None else plan
        self._last = (len(history), plan)
        if plan is None or len(plan) >= left:
            if not plan:
                return mask, None
            only = np.zeros_like(mask)
            only[plan[0]] = True
            return only, None
        self._plan_len = len(plan)
        return mask, (plan if left - len(plan) <= self.margin else None)

    def _narrow(self, full: np.ndarray, x: np.ndarray, plan: list[int], left: int) -> np.ndarray:
        """Near the end of the budget, keep only tokens after which the output still closes in time: in
        free text (most of the vocabulary allowed) plain text tokens, which never lengthen the closing;
        of the rest the model's best ``n_verify``, each checked; the plan's next token; EOS if allowed."""
        size = self.vocab.size
        keep = np.zeros_like(full)
        rest = full.copy()
        if self.scanner.key() in (TEXT, REASON, RAW, JSON + '"') and full[:size].sum() > size // 2:
            keep[:size] = full[:size] & self.vocab.plain
            rest[:size] &= ~self.vocab.plain
        cand = np.flatnonzero(rest)
        if len(cand) > self.n_verify:
            cand = cand[np.argpartition(x[cand], len(cand) - self.n_verify)[-self.n_verify:]]
        for t in cand.tolist():
            keep[t] = self._fits(t, left, plan)
        keep[plan[:1]] = True
        keep[EOS_ID] = full[EOS_ID]
        return keep

    def __call__(self, history: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        mask, plan = self.mask(history)
        n = min(len(mask), logits.shape[-1])
        full = np.zeros(logits.shape[-1], bool)  # ids past the tokenizer's vocabulary stay masked
        full[:n] = mask[:n]
        cpu = logits.device.type == "cpu"
        x = logits.detach().float().cpu().numpy() if cpu or plan is not None else None
        if plan is not None:
            full = self._narrow(full, x, plan, self.max_tokens - len(history))
        if cpu:  # numpy: a few passes over the vocabulary, without torch's thread pool
            return torch.from_numpy(np.where(full, x, np.float32(-np.inf)))
        return logits.masked_fill(~torch.from_numpy(full).to(logits.device), float("-inf"))
