"""Recall: long-range reference stability. One fact (a needle) is placed at each chosen depth of a
haystack at each context length; the model is asked for it and the answer is scored exactly. The
summary is a depth x length grid; each request's tags keep the depth asked and the depth measured."""

from __future__ import annotations

from typing import Any

from . import scorers
from .haystack import depth_of, needle, place
from .runner import FORMAT_TOKENS, Item, Record, Run, Settings

NAME = "recall"


def planned(r: Run) -> int:
    return len(r.settings.contexts) * len(r.settings.depths)


def prompt(r: Run, ctx: int, depth: float) -> tuple[str, dict[str, Any], str]:
    """The user message, its tags and the fact it asks for."""
    n = needle(r.rng)
    ask = f"\n{n.question}"
    filler = r.filler(ctx - FORMAT_TOKENS - r.count(ask) - r.count(n.line))
    hay = place(r.tok, filler, depth, n.line)
    tags = {"context": ctx, "depth": depth, "depth_measured": depth_of(r.tok, hay, n.line), "fact": n.answer,
            "haystack_tokens": r.count(hay)}
    return hay + ask, tags, n.answer


def grid(records: list[Record], s: Settings) -> dict[str, Any]:
    """scores[i][j]: the score at depths[i] and contexts[j] (None: the request failed)."""
    at = {(r.tags["depth"], r.tags["context"]): r.scores.get("recall") for r in records}
    return {"contexts": s.contexts, "depths": s.depths,
            "scores": [[at.get((d, c)) for c in s.contexts] for d in s.depths]}


def run(r: Run) -> dict[str, Any]:
    """The depths of one length go at once (recall is scored, not timed)."""
    s = r.settings
    records = []
    for ctx in s.contexts:
        items = []
        for depth in s.depths:
            content, tags, fact = prompt(r, ctx, depth)
            body = {"messages": [{"role": "user", "content": content}], "max_tokens": r.budget(), "temperature": 0,
                    **r.thinking()}
            items.append(Item(f"{ctx}@{depth:g}", body, tags,
                              lambda call, fact=fact: {"recall": scorers.recall(call.content, fact)}))
        records += r.batch(NAME, items)
    scored = [x.scores["recall"] for x in records if x.call.ok]
    return {"grid": grid(records, s), "score": sum(scored) / len(scored) if scored else None}
