"""Everything v4 prints, and the only module that imports rich.

Two streams: the answer goes to stdout (`v4 ask ... > answer.md` keeps just the answer); everything
else (reasoning, progress, notices, stats, errors) goes to stderr. Reasoning is dimmed while it
streams and folded into one line ("thought for ~N tokens") once the answer starts, unless
`show_thinking` keeps it on screen.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

from rich.cells import cell_len
from rich.console import Console as RichConsole
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from .events import BackendEvent, Content, Notice, Reasoning, Stats, ToolCall
from .events import Progress as PrefillProgress

_TAIL_LINES = 4  # reasoning lines kept visible while it streams (collapsed mode)


def _pipe_width(f: IO[str]) -> int | None:
    """Into a pipe or a file, tables are not cut to 80 columns: scripts read whole paths."""
    try:
        return None if f.isatty() else 1000
    except (AttributeError, ValueError):
        return 1000


def _tail_cells(line: str, width: int) -> str:
    """The end of `line` that fits in `width` terminal cells."""
    n = len(line)
    while n > 0 and cell_len(line[n - 1:]) <= width:
        n -= 1
    return line[n:] if cell_len(line[n:]) <= width else line[n + 1:]


class _TokensPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} tok/s" if speed else "- tok/s", style="progress.data.speed")


def out_while_thinking(stats: Stats, answered: bool, reasoned: bool, hint: str) -> str | None:
    """The warning for an answer whose max_tokens all went to reasoning (nothing was answered), else None."""
    if stats.finish_reason != "length" or answered or not reasoned:
        return None
    return (f"the max_tokens budget ({stats.completion_tokens:,} tokens) ran out while thinking, before any answer; "
            f"give it more with {hint}")


def stats_line(s: Stats) -> str:
    parts = [f"{s.completion_tokens:,} tokens in {s.decode_s:.1f}s ({s.tokens_per_s:.1f} tok/s)"]
    if s.prompt_tokens:
        cached = f", {s.cached_tokens:,} cached" if s.cached_tokens else ", no cache hit"
        parts.append(f"prompt {s.prompt_tokens:,} tokens{cached}, read in {s.prefill_s:.1f}s")
    reason = {"length": "hit the max_tokens limit", "abort": "stopped", "stop": "done"}.get(s.finish_reason,
                                                                                           s.finish_reason)
    parts.append(reason)
    return " · ".join(parts)


class Console:
    """`out` receives answers (stdout), `err` everything else (stderr)."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None, *, show_thinking: bool = False,
                 color: bool | None = None, width: int | None = None) -> None:
        plain = color is False
        out, err = out or sys.stdout, err or sys.stderr
        self.out = RichConsole(file=out, highlight=False, soft_wrap=True, no_color=plain,
                               force_terminal=color if color else None, width=width or _pipe_width(out))
        self.err = RichConsole(file=err, highlight=False, soft_wrap=True, no_color=plain,
                               force_terminal=color if color else None, width=width or _pipe_width(err))
        self.show_thinking = show_thinking
        # how the user changes things where they are (the REPL puts its /set commands here)
        self.hints = {"show_thinking": "--show-thinking", "budget": "--max-tokens N, or --no-think"}

    # ---- one-liners ------------------------------------------------------------------------------------
    def error(self, message: str) -> None:
        self.err.print(f"[bold red]error:[/] {escape(message)}")

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/] {escape(message)}")

    def note(self, message: str) -> None:
        self.err.print(Text(message, style="dim"))

    def info(self, message: str) -> None:
        self.err.print(escape(message))

    def print(self, text: str = "", *, style: str | None = None) -> None:
        """Plain output on stdout (no markup interpretation)."""
        self.out.print(Text(text, style=style or ""))

    def json(self, obj: Any) -> None:
        self.out.file.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
        self.out.file.flush()

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[str]], *, right: Sequence[int] = ()) -> None:
        t = Table(box=None, pad_edge=False, header_style="bold")
        for i, c in enumerate(columns):
            t.add_column(c, justify="right" if i in right else "left", no_wrap=True)
        for r in rows:
            t.add_row(*(escape(x) for x in r))
        self.out.print(t)

    def fields(self, pairs: Mapping[str, Any]) -> None:
        t = Table(box=None, show_header=False, pad_edge=False)
        t.add_column(style="bold", no_wrap=True)
        t.add_column()
        for k, v in pairs.items():
            t.add_row(escape(k), escape(str(v)))
        self.out.print(t)

    # ---- progress bars -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def download(self, label: str) -> Iterator[Callable[[int, int], None]]:
        """A bytes bar for `v4 pull`; yields the (done, total) callback hub.pull calls (from its threads)."""
        if not self.err.is_terminal:  # a bar in a log file is noise
            yield lambda done, total: None
            return
        bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn(), console=self.err, transient=True)
        task = bar.add_task(escape(label), total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        with bar:
            yield update

    @contextlib.contextmanager
    def steps(self, label: str, total: int | None) -> Iterator[Callable[[str], None]]:
        """A count bar (`v4 bench`: requests done of those planned; no total: a pulse with the time spent);
        yields step(note): one more done, `note` shown beside the bar. Nothing on a non-terminal."""
        if not self.err.is_terminal:
            yield lambda note: None
            return
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("{task.fields[note]}", style="dim"), console=self.err, transient=True)
        task = bar.add_task(escape(label), total=total, note="")

        def step(note: str) -> None:
            bar.update(task, advance=1 if total else 0, note=escape(note))

        with bar:
            yield step

    # ---- an answer -------------------------------------------------------------------------------------
    def render(self, events: Iterable[BackendEvent]) -> Stats | None:
        """Draw an answer as its events arrive; returns its Stats (None when it was cut short)."""
        view = _AnswerView(self)
        try:
            for ev in events:
                view.event(ev)
        finally:
            view.close()
        return view.stats


class _AnswerView:
    """The state of one answer on screen: prefill bar, reasoning (live tail or streamed), content."""

    def __init__(self, c: Console) -> None:
        self.c, self.stats = c, None
        self.bar: Progress | None = None
        self.bar_task: Any = None
        self.live: Live | None = None
        self.reasoning: list[str] = []
        self.thinking_since: float | None = None
        self.content_open = False  # content printed without its final newline yet
        self.reasoned = self.answered = False

    def event(self, ev: BackendEvent) -> None:
        if isinstance(ev, PrefillProgress):
            return self._prefill(ev)
        self._end_prefill()
        if isinstance(ev, Notice):
            (self.c.warn if ev.warn else self.c.note)(ev.text)
        elif isinstance(ev, Reasoning):
            self.reasoned = self.reasoned or bool(ev.text)
            self._reason(ev.text)
        elif isinstance(ev, Content):
            self.answered = self.answered or bool(ev.text.strip())
            self._end_reasoning()
            self.c.out.print(Text(ev.text), end="")
            self.content_open = not ev.text.endswith("\n")
        elif isinstance(ev, ToolCall):
            self.answered = True
            self._end_reasoning()
            self._newline()
            self.c.out.print(Text.assemble(("tool call ", "bold cyan"), (ev.name, "cyan"), f"({ev.arguments})"))
        elif isinstance(ev, Stats):
            self._end_reasoning()
            self._newline()
            self.stats = ev
            self.c.note(stats_line(ev))
            if (why := out_while_thinking(ev, self.answered, self.reasoned, self.c.hints["budget"])) is not None:
                self.c.warn(why)

    def _prefill(self, ev: PrefillProgress) -> None:
        if self.bar is None:
            if ev.done >= ev.total:
                return  # read in one go: no bar to show
            self.bar = Progress(TextColumn("reading the prompt"), BarColumn(),
                                TextColumn("{task.completed:,}/{task.total:,} tokens"), _TokensPerSecond(),
                                TimeRemainingColumn(), console=self.c.err, transient=True)
            self.bar_task = self.bar.add_task("prefill", total=ev.total)
            self.bar.start()
        self.bar.update(self.bar_task, completed=ev.done, total=ev.total)

    def _end_prefill(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def _reason(self, text: str) -> None:
        if self.thinking_since is None:
            self.thinking_since = time.perf_counter()
            if self.c.show_thinking:
                self.c.err.print(Text("thinking…", style="dim italic"))
            elif self.c.err.is_terminal:
                self.live = Live(console=self.c.err, transient=True, refresh_per_second=8)
                self.live.start()
        self.reasoning.append(text)
        if self.c.show_thinking:
            self.c.err.print(Text(text, style="dim"), end="")
        elif self.live is not None:
            # the last few lines, each cut to its end and kept to one row: a live region that wraps redraws badly
            width = max(self.c.err.width - 12, 10)  # slack: terminals disagree on some characters' widths
            tail = [_tail_cells(ln, width) for ln in "".join(self.reasoning)[-4000:].splitlines()[-_TAIL_LINES:]]
            self.live.update(Text("\n".join(tail), style="dim italic", no_wrap=True, overflow="crop"))

    def _end_reasoning(self) -> None:
        if self.thinking_since is None:
            return
        if self.live is not None:
            self.live.stop()
            self.live = None
        secs = time.perf_counter() - self.thinking_since
        if self.c.show_thinking:
            self.c.err.print()
        self.c.note(f"thought for ~{len(self.reasoning):,} tokens ({secs:.1f}s)"
                    + ("" if self.c.show_thinking else f"; {self.c.hints['show_thinking']} shows it"))
        self.thinking_since = None
        self.reasoning = []

    def _newline(self) -> None:
        if self.content_open:
            self.c.out.print()
            self.content_open = False

    def close(self) -> None:
        self._end_prefill()
        if self.live is not None:
            self.live.stop()
            self.live = None
        self._newline()
