"""`v4 bench --plot`: the PNG drawn from a report built from recorded requests (no server): the figure's
panels, scales, labels, the recall heatmap with its scores written in, and a real PNG on disk."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from v4cli.bench import chart, haystack, recall, report, speed
from v4cli.bench.client import Call, Client, Failure, Usage
from v4cli.bench.runner import Record, Run, Settings
from v4cli.chat_format import load_tokenizer
from v4cli.errors import UserError

pytest.importorskip("matplotlib")

CONTEXTS, DEPTHS = [256, 1024, 4096], [0.0, 0.5, 1.0]


def _speed_call(ctx: int, conc: int, phase: str, slot: int) -> Call:
    warm = phase == "warm"
    ttft = conc * ctx / (40_000 if warm else 4_000)  # two at once share the machine
    return Call(started_s=slot * 0.01, ttft_s=ttft, total_s=ttft + 0.3 * conc, content="x" * 8,
                usage=Usage(ctx - 8, 31, (ctx - 72) if warm else 0, 0, True))


def recorded() -> dict[str, Any]:
    """A report as `v4 bench --json` writes it, from recorded speed and recall requests (one recall
    request failed: its cell of the grid is None)."""
    settings = Settings(["speed", "recall"], CONTEXTS, [1, 2], DEPTHS)
    run = Run(Client("http://gpu-box:30000"), haystack.Corpus.generated(load_tokenizer(), 0), settings)
    def batch(ctx: int, conc: int, phase: str) -> list[Record]:
        recs = [Record("speed", phase, {"context": ctx, "concurrency": conc, "phase": phase, "slot": i},
                       _speed_call(ctx, conc, phase, i)) for i in range(conc)]
        run.records.extend(recs)
        return recs

    cells = []
    for ctx in CONTEXTS:
        for conc in (1, 2):
            cold = speed.cell(batch(ctx, conc, "cold"))
            cells += [cold, speed.cell(batch(ctx, conc, "warm"), cold)]
    for i, depth in enumerate(DEPTHS):
        for j, ctx in enumerate(CONTEXTS):
            call = Call(started_s=1.0, ttft_s=0.1, total_s=0.2, content="The code is 4821.",
                        usage=Usage(ctx, 5, 0, 0, True))
            if (i, j) == (2, 2):
                call = Call(started_s=1.0, total_s=0.5, error=Failure("http", "HTTP 500", 500))
            found = float((i + j) % 2 == 0)
            run.records.append(Record("recall", f"{ctx}@{depth:g}", {"context": ctx, "depth": depth}, call,
                                      {"recall": found} if call.ok else {}))
    graded = [r for r in run.records if r.suite == "recall"]
    summaries = {"speed": {"cells": cells},
                 "recall": {"grid": recall.grid(graded, settings), "score": 4 / 8}}
    rep = report.build(run, summaries, {"url": "http://gpu-box:30000", "model": "deepseek-v4-flash", "local": False,
                                        "served": None, "format": "openai"})
    assert report.problems(rep) == []
    return rep


def test_the_figure_has_its_panels() -> None:
    rep = recorded()
    fig = chart.figure(rep)
    titles = [ax.get_title() for ax in fig.axes]
    # decode, TTFT, prefill, the recall grid, and the grid's colour bar
    assert titles == ["decode tokens/s per request", "time to first token, s", "prefill tokens/s",
                      "recall (50% found)", ""]
    suptitle = fig.get_suptitle()
    assert "deepseek-v4-flash" in suptitle and "http://gpu-box:30000" in suptitle and "openai format" in suptitle
    for ax in fig.axes[:3]:
        assert ax.get_xscale() == "log" and ax.get_xlabel() == "context length, tokens (log scale)"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["256", "1k", "4k"]
        assert ax.get_ylabel() and ax.get_ylim()[0] == 0
        labels = ax.get_legend_handles_labels()[1]
        assert labels == ["concurrency 1, cold", "concurrency 1, warm", "concurrency 2, cold", "concurrency 2, warm"]
    ttft = fig.axes[1].get_lines()  # concurrency 1 then 2, cold: the recorded TTFTs, context by context
    assert list(ttft[0].get_xdata()) == CONTEXTS and list(ttft[0].get_ydata()) == pytest.approx([c / 4000 for c in
                                                                                                   CONTEXTS])
    assert list(ttft[2].get_ydata()) == pytest.approx([2 * c / 4000 for c in CONTEXTS])
    grid = fig.axes[3]
    assert grid.get_xlabel() == "context length, tokens" and grid.get_ylabel().startswith("needle depth")
    assert [t.get_text() for t in grid.get_xticklabels()] == ["256", "1k", "4k"]
    assert [t.get_text() for t in grid.get_yticklabels()] == ["0%", "50%", "100%"]
    image = grid.get_images()[0].get_array()
    assert image.shape == (3, 3) and image[0][0] == 1 and image[0][1] == 0 and image.mask[2][2]
    written = [t.get_text() for t in grid.texts]
    assert len(written) == 9 and written[0] == "1.00" and written[1] == "0.00" and written[-1] == "failed"
    assert [grid.texts[k].get_color() for k in (0, 1, 8)] == ["white", "white", "black"]  # legible on its cell
    assert [ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes[:4]] == [(2, 2)] * 4  # a square of four
    assert fig.axes[4].get_ylabel() == "score"


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rep = recorded()
    path = tmp_path / "bench.png"
    chart.plot(rep, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (round(5.5 * 2 * 120), round((4.2 * 2 + 0.4) * 120)) and len(data) > 20_000
    only_recall = rep | {"summary": {"recall": rep["summary"]["recall"]}}
    assert [ax.get_title() for ax in chart.figure(only_recall).axes] == ["recall (50% found)", ""]
    with pytest.raises(UserError, match="speed and recall"):
        chart.figure(rep | {"summary": {}})
