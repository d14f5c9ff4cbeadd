"""Man pages for `v4` and each subcommand, generated from the Typer app (its click command tree).

`python -m v4cli.manpages man/` writes `v4.1` and `v4-<command>.1`. The output depends only on the app
and the package version (no dates), so tests/test_manpages.py can compare it byte for byte with man/.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from . import __version__

MANUAL = "v4 Manual"


def _esc(text: str) -> str:
    """Escape roff specials: backslashes, hyphens (so they copy as '-') and leading control characters."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + ln if ln.startswith((".", "'")) else ln for ln in text.splitlines())


def _split(help_text: str) -> tuple[list[str], list[str]]:
    """(description paragraphs, example lines): everything after an 'Examples:' line is examples."""
    body, _, examples = help_text.partition("Examples:")
    paras = [" ".join(p.split()) for p in body.strip().split("\n\n") if p.strip()]
    lines = [ln.strip() for ln in examples.splitlines() if ln.strip()]
    return paras, lines


def _page(cmd: Any, ctx: Any, title: str, see_also: list[str]) -> str:
    name = title.replace(" ", "-")
    paras, examples = _split(cmd.help or "")
    short = (cmd.short_help or (paras[0] if paras else "")).split(". ")[0].rstrip(".")
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    out = [
        f'.TH "{name.upper()}" "1" "v4 {__version__}" "v4 {__version__}" "{MANUAL}"',
        ".SH NAME",
        f"{_esc(name)} \\- {_esc(short)}",
        ".SH SYNOPSIS",
        f".B {_esc(title)}",
        _esc(usage),
        ".SH DESCRIPTION",
    ]
    for p in paras:
        out += [".PP", _esc(p)]
    records = [(p, p.get_help_record(ctx)) for p in cmd.get_params(ctx)]
    args = [(p, r) for p, r in records if p.param_type_name == "argument"]
    opts = [(p, r) for p, r in records if p.param_type_name == "option" and r is not None]
    if args:
        out.append(".SH ARGUMENTS")
        for p, rec in args:
            help_text = " ".join(rec[1].split()) if rec else (p.help or "")
            out += [".TP", f"\\fB{_esc(p.metavar or p.name.upper())}\\fR", _esc(help_text)]
    if opts:
        out.append(".SH OPTIONS")
        for _, rec in opts:
            assert rec is not None
            out += [".TP", f"\\fB{_esc(rec[0])}\\fR", _esc(" ".join(rec[1].split()))]
    if hasattr(cmd, "commands"):
        out.append(".SH COMMANDS")
        for sub_name, sub in sorted(cmd.commands.items()):
            if not sub.hidden:
                out += [".TP", f"\\fB{_esc(sub_name)}\\fR", _esc(sub.get_short_help_str(limit=200)),
                        f"See \\fB{_esc(name)}\\-{_esc(sub_name)}\\fR(1)."]
    if examples:
        out += [".SH EXAMPLES", ".PP", ".nf", ".RS"] + [_esc(e) for e in examples] + [".RE", ".fi"]
    out += [".SH ENVIRONMENT", ".TP", "\\fBV4_HOME\\fR",
            "Where models, caches and the chat history live (default ~/.cache/v4).",
            ".TP", "\\fBHF_HOME\\fR, \\fBHF_HUB_CACHE\\fR, \\fBHF_ENDPOINT\\fR, \\fBHF_TOKEN\\fR, "
            "\\fBHF_HUB_OFFLINE\\fR",
            "Where Hub downloads go, which Hub to use, its token, and offline mode.",
            ".TP", "\\fBV4_API_KEY\\fR", "API key sent with \\-\\-url.",
            ".TP", "\\fBV4_NO_LOG\\fR", "Set to 1: log no exchange in V4_HOME/logs.db (as \\-\\-no\\-log).",
            ".SH EXIT STATUS", "0 done; 1 a problem with the input or the environment (the message says what to do); "
            "2 a usage error; 130 interrupted."]
    if see_also:
        out += [".SH SEE ALSO", ", ".join(f"\\fB{_esc(s)}\\fR(1)" for s in see_also)]
    return "\n".join(out) + "\n"


def pages() -> dict[str, str]:
    """File name -> roff text, for the top command and every visible subcommand (a group's own
    subcommands too: `v4 bench compare` is v4-bench-compare.1)."""
    from .cli import app

    root = typer.main.get_command(app)
    # typer may vendor its own click: take its classes from the command itself, not from `import click`
    ctx = root.context_class(root, info_name="v4")
    names = [n for n, c in sorted(root.commands.items()) if not c.hidden]  # type: ignore[attr-defined]
    out = {"v4.1": _page(root, ctx, "v4", [f"v4-{n}" for n in names])}

    def visit(cmd: Any, parent: Any, title: str) -> None:
        for n, sub in sorted(cmd.commands.items()):
            if sub.hidden:
                continue
            sub_ctx = sub.context_class(sub, info_name=n, parent=parent)
            see = ["v4"] if title == "v4" else ["v4", title.replace(" ", "-")]
            out[f"{title} {n}".replace(" ", "-") + ".1"] = _page(sub, sub_ctx, f"{title} {n}", see)
            if hasattr(sub, "commands"):
                visit(sub, sub_ctx, f"{title} {n}")

    visit(root, ctx, "v4")
    return out


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, text in pages().items():
        (folder / fname).write_text(text, encoding="utf-8")
        written.append(folder / fname)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "man")
    for p in write(target):
        print(p)
