"""Prompt text of a chosen token length, and facts (needles) placed at chosen depths inside it.

The text is made of lines: the user's files through the same ingestion as `v4 ask` (`v4cli.ingest`:
ignore rules, binaries and secrets skipped, special-token text defused, each file a ``<file>`` block),
or a generated corpus of plain sentences without digits (so a needle's number is the only one there).
Lengths are counted with the V4 tokenizer; a remote endpoint's own count is reported beside them.
Cuts and insertions fall on line starts, so a needle is a whole line and never splits a token.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

_SUBJECTS = ("the gardener", "a courier", "the old engineer", "our neighbour", "the night guard", "a student",
             "the ferry captain", "the librarian", "a baker", "the surveyor", "the choir", "a tired clerk")
_VERBS = ("repaired", "painted", "counted", "carried", "described", "measured", "ignored", "visited", "sorted",
          "photographed", "mapped", "cleaned")
_OBJECTS = ("the wooden bridge", "a row of lanterns", "the river stones", "the market stalls", "an empty barn",
            "the copper roof", "a box of letters", "the harbour wall", "the orchard fence", "a quiet chapel",
            "the tram depot", "the signal tower")
_TAILS = ("before the rain came", "while the town slept", "for the third time that week", "without a word",
          "under a pale sky", "as the bells rang", "after a long argument", "near the old mill",
          "with great care", "in the early morning", "despite the wind", "on a slow afternoon")
_KEYS = ("amber", "cobalt", "crimson", "ivory", "jade", "saffron", "silver", "violet", "umber", "teal", "scarlet",
         "ochre")
_VAULTS = ("falcon", "harbor", "lantern", "meadow", "orchid", "pebble", "quarry", "raven", "summit", "willow",
           "glacier", "canyon")


@dataclass(frozen=True)
class Needle:
    """A fact to find: its line in the haystack, the question that asks for it and the exact answer."""

    line: str
    question: str
    answer: str


def needle(rng: random.Random) -> Needle:
    key, vault, code = rng.choice(_KEYS), rng.choice(_VAULTS), str(rng.randrange(100000, 1000000))
    return Needle(f"The access code for the {key} {vault} vault is {code}.\n",
                  f"What is the access code for the {key} {vault} vault? Answer with the number only.", code)


class Corpus:
    """Lines to cut prompts from, with the tokenizer that measures them."""

    def __init__(self, tokenizer: Tokenizer, lines: Sequence[str], source: str) -> None:
        self.tok, self.source = tokenizer, source
        self.lines = [ln if ln.endswith("\n") else ln + "\n" for ln in lines if ln.strip()]
        if not self.lines:
            raise UserError(f"{source} has no text to build prompts from")
        self.counts = [len(e.ids) for e in tokenizer.encode_batch(self.lines, add_special_tokens=False)]
        self.tokens = sum(self.counts)

    @classmethod
    def generated(cls, tokenizer: Tokenizer, seed: int = 0, n_lines: int = 2000) -> Corpus:
        rng = random.Random(seed)
        lines = [f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
                 f"{rng.choice(_TAILS)}." for _ in range(n_lines)]
        return cls(tokenizer, lines, "generated corpus")

    @classmethod
    def from_files(cls, tokenizer: Tokenizer, paths: Sequence[Path]) -> Corpus:
        from ..ingest import collect, file_block

        files, skipped = collect(paths)
        if not files:
            why = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5]) or "no files"
            raise UserError(f"nothing to read in {', '.join(map(str, paths))} ({why})")
        text = "".join(file_block(f.path, f.text, tokenizer)[0] for f in files)
        return cls(tokenizer, text.splitlines(keepends=True), f"{len(files)} file(s) from {', '.join(map(str, paths))}")

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)

    def text(self, n_tokens: int, start: int = 0) -> str:
        """About `n_tokens` (never more) of whole lines, from line `start` on, wrapping round the corpus when
        it is shorter than asked (the report's `haystack` says how often)."""
        lines: list[str] = []
        have, i = 0, start
        while have < n_tokens + 64:  # per-line counts are close to the joined count; the cut below is exact
            lines.append(self.lines[i % len(self.lines)])
            have += self.counts[i % len(self.lines)]
            i += 1
        joined = "".join(lines)
        enc = self.tok.encode(joined, add_special_tokens=False)
        if len(enc.ids) <= n_tokens:
            return joined
        cut = enc.offsets[n_tokens][0]  # the first character of the first token over the budget
        starts = _line_starts(lines)
        return joined[: starts[bisect.bisect_right(starts, cut) - 1]]


def _line_starts(lines: Sequence[str]) -> list[int]:
    out, pos = [], 0
    for ln in lines:
        out.append(pos)
        pos += len(ln)
    return out


def place(tok: Tokenizer, filler: str, depth: float, line: str) -> str:
    """`line` inserted into `filler` at the line start nearest `depth` (0: first, 1: last) of its tokens."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth {depth} is not between 0 and 1")
    enc = tok.encode(filler, add_special_tokens=False)
    n = len(enc.ids)
    target = len(filler) if depth >= 1.0 or n == 0 else enc.offsets[min(int(round(depth * n)), n - 1)][0]
    starts = _line_starts(filler.splitlines(keepends=True)) + [len(filler)]
    at = min(starts, key=lambda s: abs(s - target))
    return filler[:at] + line + filler[at:]


def depth_of(tok: Tokenizer, text: str, line: str) -> float:
    """Where `line` sits in `text`, as the fraction of `text`'s tokens before it (0 first, 1 last)."""
    at = text.index(line)
    enc = tok.encode(text, add_special_tokens=False)
    before = bisect.bisect_left([s for s, _ in enc.offsets], at)
    inside = len(tok.encode(line, add_special_tokens=False).ids)
    rest = len(enc.ids) - inside
    return before / rest if rest else 0.0
