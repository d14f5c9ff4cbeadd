"""V4_HOME as users have it: read-only (the optional prefix cache and history go, answers stay), or not a
folder at all (one message naming V4_HOME)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from typer.testing import CliRunner

from test_repl import ENTER, Scripted
from v4cli.cli import app
from v4cli.console import Console
from v4cli.repl import Repl

runner = CliRunner()
ASK = ["ask", "--no-think", "--max-tokens", "2", "-t", "0", "--context", "2048", "--json"]


@pytest.fixture
def home(serve_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A V4_HOME of its own whose models are the session's built-in tiny (nothing to write there)."""
    h = tmp_path / "home"
    h.mkdir()
    (h / "models").symlink_to(serve_home / "models", target_is_directory=True)
    monkeypatch.setenv("V4_HOME", str(h))
    monkeypatch.delenv("V4_MODEL", raising=False)
    return h


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    f = tmp_path / "notes.md"
    f.write_text("The build fails because the linker cannot find libfoo.\n" * 8)  # over the cache's 32 tokens
    return f


def chat(history: Path, keys: list[str]) -> str:
    """The REPL over prompt-toolkit's pipe input, with its history in `history`; returns what it printed."""
    buf = io.StringIO()
    with create_pipe_input() as inp:
        inp.send_text(ENTER.join(keys) + ENTER)
        repl = Repl(Scripted(), Console(buf, buf, width=300), history=history, input=inp, output=DummyOutput())
        assert repl.run() == 0
    return buf.getvalue()


def test_a_cache_folder_that_cannot_be_written_is_warned_about_once(home: Path, notes: Path) -> None:
    (home / "cache").write_text("not a folder\n")  # mkdir cache/prefix fails, for root too
    r = runner.invoke(app, [*ASK, "-f", str(notes), "why does it fail?"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["usage"]["completion_tokens"] == 2
    assert r.stderr.count("warning: the prefix cache on disk is off for this session") == 1
    assert str(home / "cache" / "prefix") in r.stderr and "Errno" not in r.stderr


def test_a_history_that_cannot_be_written_is_kept_in_memory(tmp_path: Path) -> None:
    (tmp_path / "history").mkdir()  # open(history, "a") fails, for root too
    out = chat(tmp_path / "history", ["first", "second", "/exit"])
    assert "answer 1" in out and "answer 2" in out and "Traceback" not in out
    assert out.count("warning: input history is off for this session") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod")
def test_a_read_only_home(home: Path, notes: Path) -> None:
    home.chmod(0o555)
    try:
        r = runner.invoke(app, [*ASK, "-f", str(notes), "why does it fail?"])
        assert r.exit_code == 0, r.output
        assert "prefix cache on disk is off" in r.stderr and "Read-only" not in r.stderr
        out = chat(home / "history", ["first", "second", "/exit"])
        assert "answer 2" in out and out.count("input history is off") == 1 and "Traceback" not in out
    finally:
        home.chmod(0o755)


def test_the_built_in_model_where_it_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models").write_text("")  # the built-in model cannot be written under it, for root too
    monkeypatch.setenv("V4_HOME", str(tmp_path))
    monkeypatch.delenv("V4_MODEL", raising=False)
    r = runner.invoke(app, [*ASK, "hi"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"cannot write the built-in model to {tmp_path / 'models' / 'tiny'}" in r.stderr
    assert "point V4_HOME at a writable folder" in r.stderr


@pytest.mark.parametrize("under", [False, True])
def test_a_home_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, under: bool) -> None:
    f = tmp_path / "v4home"
    f.write_text("")
    home = f / "sub" if under else f
    monkeypatch.setenv("V4_HOME", str(home))
    monkeypatch.delenv("V4_MODEL", raising=False)
    for args in ([*ASK, "hi"], ["list"], ["chat"]):
        r = runner.invoke(app, args, input="hi\n/exit\n")
        assert r.exit_code == 1, (args, r.output)
        assert f"V4_HOME is {home}, which " in r.stderr and "not a folder: point V4_HOME at a folder" in r.stderr
        assert ("lies under" in r.stderr) == under and "Errno" not in r.stderr and "Traceback" not in r.output
