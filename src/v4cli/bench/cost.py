"""Cost: tokens and an estimated price per suite, from the usage the endpoint reports (cache hits apart
from misses) and a price table kept as data (`prices.json`: DeepSeek's published per-million prices;
`--prices FILE` in the same shape overrides it). Its own two requests share a long prefix, so the second
shows what the endpoint's prefix cache does to the bill."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from . import data
from .runner import FORMAT_TOKENS, Record, Run

NAME = "cost"
PRICE_KEYS = ("cache_hit", "cache_miss", "output")


@dataclass(frozen=True)
class Prices:
    """Per-`per_tokens` prices of one model, and where they come from."""

    model: str
    cache_hit: float
    cache_miss: float
    output: float
    per_tokens: int
    currency: str
    source: str

    def of(self, hit: int, miss: int, out: int) -> float:
        return (hit * self.cache_hit + miss * self.cache_miss + out * self.output) / self.per_tokens


def load_table(path: Path | None = None) -> dict[str, Any]:
    """The price table: the bundled one, or `path` (checked, with errors in the file's terms)."""
    if path is None:
        return data.bundled("prices.json")
    table = data.read(path, "price file")
    models = table.get("models") if isinstance(table, dict) else None
    if not isinstance(models, dict) or not models:
        raise UserError(f'{path} needs "models": {{"MODEL": {{"cache_hit": .., "cache_miss": .., "output": ..}}}} '
                        "(prices per million tokens unless \"per_tokens\" says otherwise)")
    for name, p in models.items():
        bad = [k for k in PRICE_KEYS if not isinstance((p or {}).get(k), (int, float)) or p[k] < 0]
        if bad:
            raise UserError(f"{path}: model {name!r} needs non-negative numbers for {', '.join(bad)}")
    if not isinstance(table.get("per_tokens", 1_000_000), int) or table.get("per_tokens", 1_000_000) <= 0:
        raise UserError(f'{path}: "per_tokens" must be a positive whole number')
    return table


def prices_for(model: str, table: dict[str, Any]) -> tuple[Prices, str]:
    """The prices of `model` (directly, by alias, else the table's default or first model) and a note
    saying which model's prices were used when it was not the model itself."""
    models, aliases = table["models"], table.get("aliases") or {}
    name = model if model in models else aliases.get(model)
    note = ""
    if name not in models:
        name = table.get("default") if table.get("default") in models else next(iter(models))
        note = f"{model!r} is not in the price table: priced as {name}"
    p = models[name]
    return Prices(name, float(p["cache_hit"]), float(p["cache_miss"]), float(p["output"]),
                  int(table.get("per_tokens", 1_000_000)), str(table.get("currency", "USD")),
                  str(table.get("source", ""))), note


def planned(r: Run) -> int:
    return 2


def run(r: Run) -> dict[str, Any]:
    """A question about a long text, then a follow-up in the same conversation: the second prompt starts
    with the whole first one, which an endpoint's prefix cache can serve (an agent's every turn)."""
    n = min(r.settings.contexts)
    first = [{"role": "user", "content": f"Run {r.nonce}, cost.\n" + r.filler(n - FORMAT_TOKENS - 32)
              + "\nWhich object is mentioned most often above?"}]
    rec = r.one(NAME, "first", {"messages": first, "max_tokens": r.budget(), **r.thinking()}, {"context": n})
    follow = first + [{"role": "assistant", "content": rec.call.content},
                      {"role": "user", "content": "And who is mentioned first?"}]
    r.one(NAME, "follow_up", {"messages": follow, "max_tokens": r.budget(), **r.thinking()}, {"context": n})
    return {}


def summary(records: list[Record], prices: Prices, note: str = "") -> dict[str, Any]:
    """Tokens and price per suite (over the requests that came back with usage), and the total; `saved`
    is what the cache hits took off compared with paying the miss price for every prompt token."""
    rows: dict[str, dict[str, Any]] = {}
    for rec in records:
        u = rec.call.usage
        if not rec.call.ok or not u.reported:
            continue
        row = rows.setdefault(rec.suite, {"requests": 0, "prompt_tokens": 0, "cache_hit_tokens": 0,
                                          "cache_miss_tokens": 0, "completion_tokens": 0})
        row["requests"] += 1
        row["prompt_tokens"] += u.prompt_tokens
        row["cache_hit_tokens"] += u.cached_tokens
        row["cache_miss_tokens"] += u.prompt_tokens - u.cached_tokens
        row["completion_tokens"] += u.completion_tokens
    total = {k: sum(row[k] for row in rows.values()) for k in
             ("requests", "prompt_tokens", "cache_hit_tokens", "cache_miss_tokens", "completion_tokens")}
    for row in [*rows.values(), total]:
        row["price"] = prices.of(row["cache_hit_tokens"], row["cache_miss_tokens"], row["completion_tokens"])
        row["saved"] = prices.of(0, row["prompt_tokens"], row["completion_tokens"]) - row["price"]
    return {"priced_as": prices.model, "note": note, "currency": prices.currency, "per_tokens": prices.per_tokens,
            "prices": {k: getattr(prices, k) for k in PRICE_KEYS}, "source": prices.source,
            "suites": rows, "total": total}
