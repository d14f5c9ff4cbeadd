"""`v4 logs`: the exchanges `chat` and `ask` logged (list, one conversation in full, the file's path)."""

from __future__ import annotations

import calendar
import time
from typing import TYPE_CHECKING, Annotated

import typer

from .app import JsonOpt, app, console, handled, opt

if TYPE_CHECKING:
    from ..console import Console
    from ..logs import Exchange

logs_app = typer.Typer(rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(logs_app, name="logs")


@logs_app.callback(invoke_without_command=True)
def logs(
    ctx: typer.Context,
    count: Annotated[int, opt("-n", "--count", min=1, metavar="N", help="How many recent exchanges.")] = 20,
    cid: Annotated[str | None, opt("--cid", metavar="ID", help="Show this conversation in full (an id from the "
                                    "listing, or its first characters).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the recent `chat` and `ask` exchanges, or show one conversation in full.

    Every exchange is logged in V4_HOME/logs.db (SQLite) with its model, endpoint, options, token counts,
    cache hits and timings; --no-log or V4_NO_LOG=1 turns that off. `v4 ask -c` and `v4 chat -c` continue
    the last conversation, --cid ID another.

    Examples:

      v4 logs

      v4 logs -n 5 --json

      v4 logs --cid 3f2a

      v4 logs path
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..logs import Log

    c = console()
    with handled(c):
        log = Log()
        try:
            rows = log.conversation(cid) if cid else log.recent(count)
        finally:
            log.close()
        if as_json:
            c.json([ex.as_json() for ex in rows])
        elif cid:
            _show(c, rows)
        elif not rows:
            c.info(f"nothing logged yet ({log.path})")
        else:
            _table(c, rows)


@logs_app.command("path")
def path() -> None:
    """Print the log's path (V4_HOME/logs.db).

    Examples:

      sqlite3 "$(v4 logs path)" "select model, count(*) from exchanges group by model"
    """
    from .. import settings

    typer.echo(str(settings.logs_path()))


def _when(utc: str) -> str:
    """A logged UTC time in local time, to the minute."""
    try:
        t = calendar.timegm(time.strptime(utc, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return utc
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _table(c: Console, rows: list[Exchange]) -> None:
    from ..logs import first_words

    c.table(["id", "time", "model", "conversation", "prompt", "in", "cached", "out"],
            [[str(ex.id), _when(ex.time), ex.model, f"{ex.cid} #{ex.turn}", first_words(ex.prompt),
              f"{ex.prompt_tokens:,}", f"{ex.cached_tokens:,}", f"{ex.completion_tokens:,}"] for ex in rows],
            right=(0, 5, 6, 7))


def _show(c: Console, rows: list[Exchange]) -> None:
    """A conversation turn by turn: what was asked (and read), the reasoning, the answer, the numbers."""
    for ex in rows:
        opts = ex.options
        c.print(f"── #{ex.id} · turn {ex.turn} · {_when(ex.time)} · {ex.verb} · {ex.model} at {ex.endpoint} · "
                f"thinking {'on' if opts.get('thinking') else 'off'}", style="bold")
        if ex.turn == 1 and opts.get("system"):
            c.print(f"system: {opts['system']}")
        files = ex.inputs.get("files") or []
        if files or ex.inputs.get("stdin_chars"):
            read = [*files, *(["stdin"] if ex.inputs.get("stdin_chars") else [])]
            c.print(f"read: {', '.join(read)}", style="dim")
        c.print(f"> {ex.prompt}")
        if ex.reasoning:
            c.print(ex.reasoning, style="dim italic")
        if ex.content:
            c.print(ex.content)
        for call in ex.tool_calls:
            fn = call.get("function", {})
            c.print(f"tool call {fn.get('name')}({fn.get('arguments')})")
        c.print(f"prompt {ex.prompt_tokens:,} tokens ({ex.cached_tokens:,} cached), {ex.completion_tokens:,} out · "
                f"{ex.total_s:.1f}s · {ex.finish_reason}", style="dim")
