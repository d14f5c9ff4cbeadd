"""Speed: time to first token, prefill and decode tokens/s at each context length and concurrency level,
cold (a prompt no cache has seen) and warm (the same prompts again), with the cache hits the endpoint
claims beside the speed-up actually seen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .runner import Item, Record, Run, median

NAME = "speed"
ASK = "Summarise the text above in a few sentences."


def planned(r: Run) -> int:
    s = r.settings
    return 1 + 2 * len(s.contexts) * sum(s.concurrency)


def cell(records: Sequence[Record], cold: dict[str, Any] | None = None) -> dict[str, Any]:
    """One (context, concurrency, phase) point: medians over its requests, the aggregate decode rate over
    the batch's wall time, the share of prompt tokens the endpoint says it read from its cache, and (warm)
    the cold TTFT over the warm one."""
    tags = records[0].tags
    ok = [r.call for r in records if r.call.ok]
    prompt = sum(c.usage.prompt_tokens for c in ok)
    wall = max((c.started_s + c.total_s for c in ok), default=0.0) - min((c.started_s for c in ok), default=0.0)
    ttft = median([c.ttft_s for c in ok])
    out: dict[str, Any] = {
        "context": tags["context"], "concurrency": tags["concurrency"], "phase": tags["phase"],
        "requests": len(records), "ok": len(ok),
        "prompt_tokens": median([c.usage.prompt_tokens for c in ok if c.usage.reported]),
        "ttft_s": ttft, "total_s": median([c.total_s for c in ok]),
        "prefill_tps": median([c.prefill_tps for c in ok]), "decode_tps": median([c.decode_tps for c in ok]),
        "aggregate_tps": sum(c.usage.completion_tokens for c in ok) / wall if ok and wall > 0 else None,
        "cache_hit_share": sum(c.usage.cached_tokens for c in ok) / prompt if prompt else None,
        "speedup": None,
    }
    if cold is not None and cold["ttft_s"] and ttft:
        out["speedup"] = cold["ttft_s"] / ttft
    return out


def _items(bodies: list[dict[str, Any]], ctx: int, phase: str) -> list[Item]:
    return [Item(phase, b, {"context": ctx, "concurrency": len(bodies), "phase": phase, "slot": i})
            for i, b in enumerate(bodies)]


def run(r: Run) -> dict[str, Any]:
    s = r.settings
    # one short request first, kept out of the cells: the first after a load pays for lazy set-up
    r.one(NAME, "warmup", {"messages": [{"role": "user", "content": r.cold_prompt(128, f"{NAME}/warmup", ASK)}],
                           "max_tokens": 2, **r.thinking()}, {"phase": "warmup"})
    cells = []
    for ctx in s.contexts:
        for c in s.concurrency:
            # Greedy: a sampled answer may end after a token or two, and then there is no decode rate to
            # measure; the speed of a step does not depend on how its token was picked.
            bodies = [{"messages": [{"role": "user", "content": r.cold_prompt(ctx, f"{NAME}/{ctx}/{c}/{i}", ASK)}],
                       "max_tokens": s.max_tokens, "temperature": 0, **r.thinking()} for i in range(c)]
            cold = cell(r.batch(NAME, _items(bodies, ctx, "cold")))
            warm = cell(r.batch(NAME, _items(bodies, ctx, "warm")), cold)
            cells += [cold, warm]
    return {"cells": cells}
