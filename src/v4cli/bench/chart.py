"""The speed-vs-context curves and the recall grid: as text for the terminal (bars of block characters,
printed by the Console), or as a PNG through matplotlib (`--plot`, an optional extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from .report import tokens_label

_EIGHTHS = " ▏▎▍▌▋▊▉"
SPEED_METRICS = (("decode_tps", "decode tokens/s per request"), ("ttft_s", "time to first token, s"),
                 ("prefill_tps", "prefill tokens/s"))


def bar(value: float | None, top: float, width: int = 24) -> str:
    """`value` as a bar of `width` cells at most (eighths of a cell), `top` filling it."""
    if value is None or top <= 0:
        return ""
    eighths = round(max(0.0, min(value / top, 1.0)) * width * 8)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"


def speed_lines(speed: dict[str, Any], metric: str, title: str) -> list[str]:
    """One block per concurrency level: a bar per context length, cold and warm side by side."""
    cells = speed.get("cells") or []
    values = [c[metric] for c in cells if c[metric] is not None]
    if not values:
        return []
    top, width = max(values), 24
    out = [f"{title} (cold | warm)"]
    for conc in sorted({c["concurrency"] for c in cells}):
        out.append(f"  concurrency {conc}")
        by = {(c["context"], c["phase"]): c[metric] for c in cells if c["concurrency"] == conc}
        for ctx in sorted({k[0] for k in by}):
            cold, warm = by.get((ctx, "cold")), by.get((ctx, "warm"))
            out.append(f"  {tokens_label(ctx):>6} {bar(cold, top, width):<{width}} {_fmt(cold):>7} | "
                       f"{bar(warm, top, width):<{width}} {_fmt(warm):>7}")
    return out


def recall_rows(recall: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """A table: one row per depth, one column per context length; ✓ found, · missed, ✗ failed."""
    g = recall["grid"]
    columns = ["depth", *(tokens_label(c) for c in g["contexts"])]
    rows = [[f"{d:.0%}", *("✗" if v is None else "✓" if v == 1 else "·" if v == 0 else f"{v:.2f}" for v in row)]
            for d, row in zip(g["depths"], g["scores"], strict=True)]
    return columns, rows


def pyplot() -> Any:
    """matplotlib's pyplot (drawing to files only), or a UserError that says how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib, which is not installed: pip install 'v4cli[plot]' (or "
                        "matplotlib); without --plot the terminal shows the same curves") from None
    return plt


def plot(report: dict[str, Any], path: Path) -> None:
    """A PNG with the speed curves (one line per concurrency and phase) and the recall grid."""
    plt = pyplot()
    s = report["summary"]
    cells = (s.get("speed") or {}).get("cells") or []
    panels = [m for m in SPEED_METRICS if any(c[m[0]] is not None for c in cells)]
    n = len(panels) + ("recall" in s)
    if n == 0:
        raise UserError("--plot draws the speed and recall suites; run at least one of them")
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
    for ax, (metric, title) in zip(axes[0], panels, strict=False):
        for conc in sorted({c["concurrency"] for c in cells}):
            for phase, style in (("cold", "-o"), ("warm", "--s")):
                pts = sorted((c["context"], c[metric]) for c in cells
                             if c["concurrency"] == conc and c["phase"] == phase and c[metric] is not None)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"x{conc} {phase}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context, tokens")
        ax.set_title(title)
        ax.legend(fontsize=8)
    if "recall" in s:
        g = s["recall"]["grid"]
        ax = axes[0][n - 1]
        grid = [[float("nan") if v is None else v for v in row] for row in g["scores"]]
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(g["contexts"])), [tokens_label(c) for c in g["contexts"]])
        ax.set_yticks(range(len(g["depths"])), [f"{d:.0%}" for d in g["depths"]])
        ax.set_xlabel("context")
        ax.set_ylabel("needle depth")
        ax.set_title(f"recall ({_fmt(s['recall']['score'])} overall)")
    fig.suptitle(f"v4 bench: {report['endpoint']['model']} at {report['endpoint']['url']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
