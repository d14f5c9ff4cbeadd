"""The bench report: built from a run (every request's timings, usage and scores; the endpoint, model,
versions and machine; each suite's summary), checked against its JSON Schema (`report.schema.json`,
kept as data), written, read back, and two of them compared metric by metric as ratios."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import UserError
from . import data
from .runner import Record, Run

SCHEMA_ID = "v4-bench/1"


def schema() -> dict[str, Any]:
    return data.bundled("report.schema.json")


def problems(report: Any) -> list[str]:
    """What makes `report` not a bench report (empty: it is one)."""
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(schema()).iter_errors(report), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


def tokens_label(n: int) -> str:
    """2048 -> 2k, 1048576 -> 1m, 512 -> 512 (the way --context takes them)."""
    for unit, size in (("m", 1 << 20), ("k", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def machine() -> dict[str, Any]:
    """The machine the bench ran on (for --model, also the engine's)."""
    out: dict[str, Any] = {"system": platform.system(), "release": platform.release(), "arch": platform.machine(),
                           "cpus": os.cpu_count() or 0, "processor": platform.processor() or None,
                           "memory_bytes": None, "gpus": []}
    try:
        import psutil

        out["memory_bytes"] = int(psutil.virtual_memory().total)
    except ImportError:
        pass
    if shutil.which("nvidia-smi"):
        try:
            res = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=False)
            out["gpus"] = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return out


def _record(r: Record) -> dict[str, Any]:
    c = r.call
    return {"suite": r.suite, "case": r.case, "tags": r.tags, "ok": c.ok,
            "error": asdict(c.error) if c.error else None,
            "started_s": c.started_s, "ttft_s": c.ttft_s, "total_s": c.total_s,
            "prefill_tps": c.prefill_tps, "decode_tps": c.decode_tps, "usage": asdict(c.usage),
            "finish_reason": c.finish_reason, "content": c.content, "reasoning": c.reasoning,
            "tool_calls": c.tool_calls, "scores": r.scores}


def build(run: Run, summaries: dict[str, Any], endpoint: dict[str, Any]) -> dict[str, Any]:
    failed = run.failed()
    fingerprints = sorted({r.call.fingerprint for r in run.records if r.call.fingerprint})
    return {
        "schema": SCHEMA_ID,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "endpoint": endpoint | {"system_fingerprints": fingerprints},
        "versions": {"v4cli": __version__, "python": platform.python_version()},
        "machine": machine(),
        "settings": asdict(run.settings) | {"haystack": run.corpus.source, "haystack_tokens": run.corpus.tokens},
        "summary": summaries,
        "requests": [_record(r) for r in run.records],
        "ok": not failed, "failed": len(failed),
    }


def write(report: dict[str, Any], path: Path) -> None:
    bad = problems(report)
    if bad:  # our own output: a bug, not the user's
        raise RuntimeError("the bench report does not match its schema: " + "; ".join(bad[:5]))
    Path(path).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load(path: Path) -> dict[str, Any]:
    report = data.read(path, "report")
    bad = problems(report)
    if bad:
        raise UserError(f"{path} is not a v4 bench report (from `v4 bench --json FILE`): {bad[0]}")
    return report


# ------------------------------------------------------------------------------------------- compare

# (metric, higher is better)
_SPEED = (("ttft_s", False), ("prefill_tps", True), ("decode_tps", True), ("aggregate_tps", True))


def metrics(report: dict[str, Any]) -> dict[str, tuple[float | None, bool]]:
    """The report's headline numbers by name, each with whether higher is better."""
    s, out = report["summary"], {}
    for cell in (s.get("speed") or {}).get("cells", []):
        where = f"{tokens_label(cell['context'])} x{cell['concurrency']} {cell['phase']}"
        for key, up in _SPEED:
            out[f"speed {key} {where}"] = (cell[key], up)
    if "recall" in s:
        out["recall score"] = (s["recall"]["score"], True)
        g = s["recall"]["grid"]
        for j, ctx in enumerate(g["contexts"]):
            col = [row[j] for row in g["scores"] if row[j] is not None]
            out[f"recall {tokens_label(ctx)}"] = (sum(col) / len(col) if col else None, True)
    for key, value in ((s.get("tools") or {}).get("rates") or {}).items():
        out[f"tools {key}"] = (value, True)
    if "json" in s:
        out["json valid"], out["json keys"] = (s["json"]["valid"], True), (s["json"]["keys"], True)
    if "cost" in s:
        out["cost total"] = (s["cost"]["total"]["price"], False)
        for suite, row in s["cost"]["suites"].items():
            out[f"cost {suite}"] = (row["price"], False)
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric either report has: both values, B/A, and which side is better."""
    ma, mb = metrics(a), metrics(b)
    rows = []
    for name in [*ma, *(k for k in mb if k not in ma)]:
        va, up = ma.get(name, (None, True))
        vb, up = mb.get(name, (None, up))
        ratio = vb / va if va and vb is not None else None
        better = None
        if va is not None and vb is not None and va != vb:
            better = "B" if (vb > va) == up else "A"
        rows.append({"metric": name, "a": va, "b": vb, "ratio": ratio, "better": better})
    return rows
