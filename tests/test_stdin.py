"""Piped input to `v4 ask`, through the real CLI: a long log is cut to the budget keeping its tail, an
endless stream stops after a bounded read, binary input gets a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_repl import FakeOpenAI, sse_chunks
from v4cli.cli import app
from v4cli.ingest import read_limit, read_piped

runner = CliRunner()
CMD = [sys.executable, "-m", "v4cli.cli", "ask"]


def log_lines(n: int) -> str:
    body = "".join(f"2026-12-02 05:{i // 60 % 60:02d}:{i % 60:02d} INFO worker[{i}] compiled unit_{i}.c (ok)\n"
                   for i in range(n))
    return body + "unit_9999.c:12: error: undefined reference to `frobnicate'\nmake: *** [all] Error 1\n"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("V4_HOME", str(tmp_path / "home"))
    return {**os.environ, "V4_HOME": str(tmp_path / "home"), "PYTHONPATH": os.pathsep.join(sys.path)}


def test_a_long_log_is_cut_to_fit_keeping_its_tail(env: dict[str, str]) -> None:
    log = log_lines(5000)
    assert 300_000 < len(log.encode()) < read_limit(61440)  # read whole, but far over 61,440 tokens
    r = runner.invoke(app, ["ask", "--dry-run", "--json", "why does this fail?"], input=log)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    cut = summary["stdin"]
    assert summary["fits"] and summary["total_tokens"] <= summary["budget_tokens"] == 65536 - 4096
    assert cut["complete"] and cut["bytes"] == len(log.encode()) and cut["lines"] == 5002
    assert cut["head_lines"] + cut["tail_lines"] + cut["cut_lines"] == 5002 and cut["cut_bytes"] > 100_000
    assert any(w.startswith(f"stdin cut to fit the token budget: kept its first {cut['head_lines']:,} and last "
                            f"{cut['tail_lines']:,} lines of 5,002") for w in summary["warnings"])
    r = runner.invoke(app, ["ask", "--dry-run", "why does this fail?"], input=log)
    assert r.exit_code == 0 and "warning: stdin cut to fit the token budget" in r.stdout

    with FakeOpenAI(chunks=sse_chunks("It fails to link.")) as srv:  # what a model is sent
        r = runner.invoke(app, ["ask", "--url", srv.url, "why does this fail?"], input=log)
    assert r.exit_code == 0, r.output
    assert "warning: stdin cut to fit the token budget" in r.stderr and r.stdout.startswith("It fails to link.")
    sent = srv.requests[-1]["messages"][0]["content"]
    tail = log.splitlines(keepends=True)[-cut["tail_lines"]:]
    assert sent.endswith("".join(tail) + "</stdin>\nwhy does this fail?")  # the error at the end is kept
    assert sent.startswith("<files>\n</files>\n<stdin>\n" + log[:200])  # so is the head
    assert f"[... {cut['cut_bytes']:,} bytes ({cut['cut_lines']:,} line(s)" in sent and "worker[2500]" not in sent


def test_an_endless_stream_stops_after_a_bounded_read(env: dict[str, str], tmp_path: Path) -> None:
    out_file, err_file = open(tmp_path / "out", "w+b"), open(tmp_path / "err", "w+b")  # noqa: SIM115
    proc = subprocess.Popen([*CMD, "--dry-run", "--json", "--context", "8192", "--max-tokens", "1024", "why?"],
                            stdin=subprocess.PIPE, stdout=out_file, stderr=err_file, env=env)
    written = 0
    line = b"x" * 99 + b"\n"

    def feed() -> None:  # 200 MB, or until v4 stops reading and leaves
        nonlocal written
        chunk = line * 655
        try:
            while written < 200_000_000:
                proc.stdin.write(chunk)
                written += len(chunk)
        except (BrokenPipeError, ValueError, OSError):
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    proc.wait(timeout=300)
    writer.join(timeout=60)
    out, err = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    out_file.close(), err_file.close()
    assert proc.returncode == 0, err
    limit = read_limit(8192 - 1024)
    assert limit == 1 << 20
    assert written < limit + (4 << 20)  # what was read, plus the pipe's buffer and one chunk in flight
    cut = json.loads(out)["stdin"]
    assert not cut["complete"] and cut["bytes"] == limit + 1 and cut["limit"] == limit
    assert "only its first 1,048,576 bytes were read" in " ".join(json.loads(out)["warnings"])


class Endless:
    """A stream of text that never ends; counts what is read from it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def read(self, n: int) -> bytes:
        self.read_bytes += n
        return (b"log line\n" * (n // 9 + 1))[:n]


def test_read_piped_reads_at_most_its_limit() -> None:
    stream = Endless()
    piped = read_piped(stream, 200_000)
    assert piped is not None and not piped.complete and stream.read_bytes == 200_001
    assert piped.text.endswith("log line\n") and len(piped.text) <= 200_000


@pytest.mark.parametrize("source", ["/dev/zero", "controls"])
def test_binary_input_gets_a_message(env: dict[str, str], tmp_path: Path, source: str) -> None:
    if source == "controls":
        source = str(tmp_path / "controls.bin")
        Path(source).write_bytes(bytes(range(1, 32)) * 1000)
    with open(source, "rb") as f:
        r = subprocess.run([*CMD, "--dry-run", "why?"], stdin=f, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    assert "stdin is not text" in r.stderr and "strings FILE | v4 ask" in r.stderr


def test_stdin_beside_files_keeps_half_the_room_and_the_rest_of_what_they_leave(tmp_path: Path) -> None:
    from v4cli.chat_format import load_tokenizer
    from v4cli.ingest import build_prompt, collect

    tok = load_tokenizer()
    (tmp_path / "small.py").write_text("def small():\n    return 1\n")
    (tmp_path / "big.md").write_text("A paragraph about the design of the thing.\n" * 400)
    files, _ = collect([tmp_path])
    log = log_lines(2000)
    ing = build_prompt(files, "why?", tokenizer=tok, budget_tokens=6000, stdin_text=log, verify=True)
    assert [Path(f.path).name for f in ing.files] == ["small.py"]
    assert [Path(d.path).name for d in ing.dropped] == ["big.md"]
    assert 5900 <= ing.total_tokens <= 6000 and ing.parts["stdin"] > 3000  # stdin took what big.md left
    assert ing.stdin is not None and ing.prompt_text.count("cut here to fit the token budget") == 1
    # a small log goes whole beside the files that fit
    ing = build_prompt(files, "why?", tokenizer=tok, budget_tokens=6000, stdin_text=log_lines(5), verify=True)
    assert ing.stdin is None and log_lines(5) in ing.prompt_text
    # one long line (no newline to cut at) is cut inside it, still under the budget
    ing = build_prompt([], "why?", tokenizer=tok, budget_tokens=500, stdin_text="word " * 5000, verify=True)
    assert ing.total_tokens <= 500 and ing.stdin is not None and ing.stdin.lines == 1
