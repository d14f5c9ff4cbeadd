"""man/ holds the man pages generated from the Typer app; this fails when they are out of date."""

from __future__ import annotations

from pathlib import Path

from v4cli import manpages

MAN = Path(__file__).resolve().parents[1] / "man"
FIX = "run `python -m v4cli.manpages man/` and commit the result"


def test_man_pages_are_up_to_date(tmp_path: Path) -> None:
    written = {p.name for p in manpages.write(tmp_path)}
    stored = {p.name for p in MAN.glob("*.1")}
    assert written == stored, f"man/ has {sorted(stored)}, the app makes {sorted(written)}: {FIX}"
    for name in sorted(written):
        assert (tmp_path / name).read_bytes() == (MAN / name).read_bytes(), f"man/{name} is out of date: {FIX}"


def test_pages_are_deterministic_and_complete() -> None:
    pages = manpages.pages()
    assert pages == manpages.pages()
    verbs = ("pull", "list", "show", "rm", "chat", "ask", "serve", "bench", "bench-compare", "logs", "logs-path")
    assert set(pages) == {"v4.1", *(f"v4-{c}.1" for c in verbs)}
    ask = pages["v4-ask.1"]
    assert ask.startswith('.TH "V4-ASK" "1"') and ".SH EXAMPLES" in ask and "\\-\\-dry\\-run" in ask
    assert "\\fBv4\\-chat\\fR(1)" in pages["v4.1"]
    assert "See \\fBv4\\-bench\\-compare\\fR(1)." in pages["v4-bench.1"]  # a group's command has its own page
