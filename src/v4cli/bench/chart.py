"""The speed-vs-context curves and the recall grid: as text for the terminal (bars of block characters,
printed by the Console), or as a matplotlib Figure and PNG (`--plot`, an optional extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from .report import tokens_label

_EIGHTHS = " ▏▎▍▌▋▊▉"
SPEED_METRICS = (("decode_tps", "decode tokens/s per request"), ("ttft_s", "time to first token, s"),
                 ("prefill_tps", "prefill tokens/s"))
_UNITS = {"decode_tps": "tokens/s per request", "ttft_s": "seconds", "prefill_tps": "tokens/s"}


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


def require_matplotlib() -> Any:
    """matplotlib's Figure class (no pyplot: nothing global, no GUI backend), or a UserError that says how
    to get it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("--plot needs matplotlib, which is not installed: pip install 'v4cli[plot]' (or "
                        "matplotlib); without --plot the terminal shows the same curves") from None
    return Figure


def _speed_panel(ax: Any, cells: list[dict[str, Any]], metric: str, title: str) -> None:
    """One metric against context length (log scale, ticks at the lengths measured): a colour per
    concurrency level, solid cold and dashed warm."""
    contexts = sorted({c["context"] for c in cells})
    for k, conc in enumerate(sorted({c["concurrency"] for c in cells})):
        for phase, style in (("cold", "-o"), ("warm", "--s")):
            pts = sorted((c["context"], c[metric]) for c in cells
                         if c["concurrency"] == conc and c["phase"] == phase and c[metric] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=f"C{k}",
                        label=f"concurrency {conc}, {phase}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(contexts, [tokens_label(c) for c in contexts])
    ax.minorticks_off()
    ax.set_xlabel("context length, tokens (log scale)")
    ax.set_ylabel(_UNITS[metric])
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _recall_panel(fig: Any, ax: Any, recall: dict[str, Any]) -> None:
    """The depth x length grid as a heatmap with each score written in its cell (grey: the request failed)."""
    import matplotlib

    g = recall["grid"]
    grid = [[float("nan") if v is None else v for v in row] for row in g["scores"]]
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgrey")
    im = ax.imshow(grid, vmin=0, vmax=1, cmap=cmap, aspect="auto")
    for i, row in enumerate(g["scores"]):
        for j, v in enumerate(row):  # white on the map's dark ends (red and green), black between
            dark = v is not None and not 0.2 < v < 0.8
            ax.text(j, i, "failed" if v is None else f"{v:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")
    ax.set_xticks(range(len(g["contexts"])), [tokens_label(c) for c in g["contexts"]])
    ax.set_yticks(range(len(g["depths"])), [f"{d:.0%}" for d in g["depths"]])
    ax.set_xlabel("context length, tokens")
    ax.set_ylabel("needle depth (0% = start of the prompt)")
    score = recall["score"]
    ax.set_title("recall" + ("" if score is None else f" ({score:.0%} found)"))
    fig.colorbar(im, ax=ax, label="score")


def figure(report: dict[str, Any]) -> Any:
    """The report's speed curves (one panel per speed metric measured) and recall grid, as a matplotlib
    Figure titled with the model, endpoint and format."""
    figure_class = require_matplotlib()
    s = report["summary"]
    cells = (s.get("speed") or {}).get("cells") or []
    panels = [m for m in SPEED_METRICS if any(c[m[0]] is not None for c in cells)]
    n = len(panels) + ("recall" in s)
    if n == 0:
        raise UserError("--plot draws the speed and recall suites; run at least one of them")
    cols = 2 if n == 4 else n  # four panels as a square, fewer in a row
    rows = -(-n // cols)
    fig = figure_class(figsize=(5.5 * cols, 4.2 * rows + 0.4), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax, (metric, title) in zip(axes, panels, strict=False):
        _speed_panel(ax, cells, metric, title)
    if "recall" in s:
        _recall_panel(fig, axes[n - 1], s["recall"])
    e = report["endpoint"]
    fig.suptitle(f"v4 bench: {e['model']} at {e['url']} ({e['format']} format, {report['created']})")
    return fig


def plot(report: dict[str, Any], path: Path) -> None:
    """`figure(report)` written as a PNG."""
    figure(report).savefig(path, dpi=120)
