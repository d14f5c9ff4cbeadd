"""A bench run: the settings, the endpoint's client, the corpus prompts are cut from, and every request
made so far with its tags and scores. Suites ask it for prompts and send batches through it."""

from __future__ import annotations

import random
import secrets
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .client import Call, Client
from .haystack import Corpus

Scorer = Callable[[Call], dict[str, Any]]

# Tokens the chat format adds around a user message (V4: BOS, User, Assistant, think tag) with room to
# spare, so a prompt sized to N tokens stays within N as the endpoint counts it.
FORMAT_TOKENS = 8


@dataclass
class Settings:
    suites: list[str]
    contexts: list[int]  # prompt lengths in tokens
    concurrency: list[int]
    depths: list[float]  # needle depths, 0..1
    max_tokens: int = 64  # decoded per speed request
    answer_tokens: int = 128  # the budget of a recall, JSON or after-tool answer (a tool call gets 96 more)
    think: bool = False  # thinking mode for the speed, recall and JSON requests
    think_tokens: int = 2048  # added to an answer's budget when it reasons first
    seed: int = 0


@dataclass
class Item:
    """A request to make: its case name, body, tags for the report and how to score the answer."""

    case: str
    body: dict[str, Any]
    tags: dict[str, Any] = field(default_factory=dict)
    score: Scorer | None = None


@dataclass
class Record:
    suite: str
    case: str
    tags: dict[str, Any]
    call: Call
    scores: dict[str, Any] = field(default_factory=dict)


class Run:
    def __init__(self, client: Client, corpus: Corpus, settings: Settings,
                 on_done: Callable[[Record], None] | None = None) -> None:
        self.client, self.corpus, self.settings = client, corpus, settings
        self.on_done = on_done or (lambda r: None)
        self.records: list[Record] = []
        self.nonce = secrets.token_hex(4)  # no cache (RAM or disk) has seen this run's cold prompts
        self.rng = random.Random(settings.seed)

    @property
    def tok(self) -> Any:
        return self.corpus.tok

    def count(self, text: str) -> int:
        return self.corpus.count(text)

    def thinking(self, on: bool | None = None) -> dict[str, Any]:
        """DeepSeek's switch (thinking is its default, so it is always sent)."""
        on = self.settings.think if on is None else on
        return {"thinking": {"type": "enabled" if on else "disabled"}}

    def budget(self, on: bool | None = None) -> int:
        """max_tokens of a short answer: reasoning first needs room of its own."""
        on = self.settings.think if on is None else on
        return self.settings.answer_tokens + (self.settings.think_tokens if on else 0)

    def filler(self, n_tokens: int) -> str:
        """Corpus text of at most `n_tokens`, from a random line (so two prompts differ)."""
        return self.corpus.text(n_tokens, start=self.rng.randrange(len(self.corpus.lines)))

    def cold_prompt(self, n_tokens: int, key: str, ask: str) -> str:
        """A user message of about `n_tokens` (with the chat format) that starts with this run's nonce."""
        head = f"Run {self.nonce}, request {key}.\n"
        tail = f"\n{ask}"
        return head + self.filler(n_tokens - FORMAT_TOKENS - self.count(head) - self.count(tail)) + tail

    def one(self, suite: str, case: str, body: dict[str, Any], tags: dict[str, Any] | None = None,
            score: Scorer | None = None) -> Record:
        return self.batch(suite, [Item(case, body, tags or {}, score)])[0]

    def batch(self, suite: str, items: Sequence[Item]) -> list[Record]:
        """Send every item's body at once (one thread each), score the answers that came and record them in
        order (a failed request has no scores: the report counts it as failed, not as a wrong answer)."""
        if len(items) == 1:
            calls = [self.client.chat(items[0].body)]
        else:
            with ThreadPoolExecutor(max_workers=len(items)) as pool:
                calls = list(pool.map(self.client.chat, [it.body for it in items]))
        out = []
        for it, call in zip(items, calls, strict=True):
            rec = Record(suite, it.case, dict(it.tags), call)
            if it.score is not None and call.ok:
                rec.scores = it.score(call)
            self.records.append(rec)
            self.on_done(rec)
            out.append(rec)
        return out

    def failed(self) -> list[Record]:
        return [r for r in self.records if not r.call.ok]


def median(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def rate(values: Sequence[Any]) -> float | None:
    """The share of true values among those judged (None: not judged)."""
    kept = [bool(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
