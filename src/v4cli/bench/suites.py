"""The suites by name, in the order they run (cost last: it prices what the others used), and one run
of a chosen set of them, from settings to the full report."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from . import cost, jsonmode, recall, report, speed, tools
from .client import Client
from .haystack import Corpus
from .runner import Record, Run, Settings

SUITES: dict[str, ModuleType] = {m.NAME: m for m in (speed, recall, tools, jsonmode, cost)}


def parse(names: str) -> list[str]:
    """`speed,json` -> the suites in run order; an unknown name is a ValueError saying which exist."""
    asked = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in asked if n not in SUITES]
    if unknown or not asked:
        raise ValueError(f"unknown suite {', '.join(unknown) or '(none given)'}: choose from {', '.join(SUITES)}")
    return [n for n in SUITES if n in asked]


def execute(client: Client, corpus: Corpus, settings: Settings, prices: dict[str, Any], endpoint: dict[str, Any],
            *, on_suite: Callable[[str, int], None] | None = None,
            on_done: Callable[[Record], None] | None = None) -> dict[str, Any]:
    """Run `settings.suites` in order against `client`; `on_suite(name, planned requests)` before each,
    `on_done(record)` after each request. Returns the report (see report.schema.json)."""
    run = Run(client, corpus, settings, on_done)
    summaries: dict[str, Any] = {}
    for name in settings.suites:
        module = SUITES[name]
        if on_suite:
            on_suite(name, module.planned(run))
        summaries[name] = module.run(run)
    if "cost" in summaries:
        table, note = cost.prices_for(client.resolve_model(), prices)
        summaries["cost"] = cost.summary(run.records, table, note)
    return report.build(run, summaries, endpoint)
