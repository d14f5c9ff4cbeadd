"""The exchange log and conversations that continue: `v4 logs`, `ask -c`, `chat -c`, `--cid`, `--no-log`,
through the real CLI with the built-in tiny model (and a loopback OpenAI-style server for --url)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_repl import FakeOpenAI, sse_chunks
from v4cli import logs
from v4cli.cli import app
from v4cli.events import Reply, Stats

runner = CliRunner()
# long enough that the prompt passes the prefix cache's 32-token minimum
QUESTION = ("please explain in detail how a mixture of experts layer routes each token to its experts, and why "
            "the router uses a sigmoid gate instead of a softmax")
FAST = ["--max-tokens", "3", "-t", "0", "--context", "1024"]


@pytest.fixture
def home(serve_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh V4_HOME per test (its own log and prefix cache) sharing the session's tiny model."""
    h = tmp_path / "v4home"
    h.mkdir()
    (h / "models").symlink_to(serve_home / "models", target_is_directory=True)
    monkeypatch.setenv("V4_HOME", str(h))
    for var in ("V4_MODEL", "V4_API_KEY", "V4_DEBUG", "V4_NO_LOG"):
        monkeypatch.delenv(var, raising=False)
    return h


def run(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def ask_json(*args: str) -> dict:
    r = run("ask", *FAST, "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def logged(*args: str) -> list[dict]:
    r = run("logs", "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


# ---- the log itself --------------------------------------------------------------------------------------------
def _reply(content: str = "ok", reason: str = "stop") -> Reply:
    r = Reply(content=content, reasoning="hmm")
    r.stats = Stats(40, 10, 2, 0.5, 0.25, reason, 1)
    return r


def test_the_log_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("V4_HOME", str(tmp_path / "new" / "home"))  # created on the first write
    warnings: list[str] = []
    rec = logs.Recorder("chat", "local", warnings.append)
    opts = {"thinking": True, "system": "be brief"}
    rec.record(model="tiny", options=opts, history=[], sent="q1", prompt="q1", reply=_reply("a1"))
    first = rec.cid
    rec.record(model="tiny", options=opts, history=rec.history, sent="q2", prompt="q2", reply=_reply("a2"))
    assert rec.cid == first  # the history it logged goes on: the same conversation
    rec.record(model="tiny", options=opts, history=[], sent="q3", prompt="q3", reply=_reply("a3"))  # /clear
    rec.record(model="tiny", options=opts, history=[], sent="q4", prompt="q4", reply=_reply("", "abort"))
    assert rec.cid != first and not warnings

    log = logs.Log()
    try:
        assert sqlite3.connect(log.path).execute("PRAGMA user_version").fetchone()[0] == logs.SCHEMA_VERSION
        rows = log.recent(10)
        assert [r.prompt for r in rows] == ["q1", "q2", "q3"]  # oldest first; the aborted turn is not logged
        assert [r.turn for r in rows] == [1, 2, 1] and rows[0].sent == ""  # the listing does not load `sent`
        turns = log.conversation(first[:4])  # a unique start of the id is enough
        assert [t.sent for t in turns] == ["q1", "q2"] and turns[1].total_s == pytest.approx(0.75)
        with pytest.raises(logs.LogError, match="no conversation 'zz'"):
            log.conversation("zz")
    finally:
        log.close()
    conv = logs.resume(first)
    assert conv.system == "be brief" and conv.head()[0] == {"role": "system", "content": "be brief"}
    assert conv.messages == [{"role": "user", "content": "q1"},
                             {"role": "assistant", "content": "a1", "reasoning_content": "hmm"},
                             {"role": "user", "content": "q2"},
                             {"role": "assistant", "content": "a2", "reasoning_content": "hmm"}]
    assert logs.resume().cid == rec.cid  # no id: the last conversation


def test_logs_that_are_not_ours(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    sqlite3.connect(newer).execute("PRAGMA user_version = 99")
    with pytest.raises(logs.LogError, match="newer v4"):
        logs.Log(newer)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (x)")
    with pytest.raises(logs.LogError, match="not a v4 log"):
        logs.Log(other, create=True)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all\n" * 100)
    with pytest.raises(logs.LogError, match="is not a v4 log .*move it aside"):
        logs.Log(garbage)
    assert logs.Log(tmp_path / "missing.db").recent(5) == []  # nothing logged yet reads as empty
    assert not (tmp_path / "missing.db").exists()


# ---- through the CLI -------------------------------------------------------------------------------------------
def test_ask_is_logged_and_listed(home: Path) -> None:
    out = ask_json(QUESTION)
    [ex] = logged()
    assert ex["cid"] == out["conversation"] and ex["turn"] == 1 and ex["verb"] == "ask"
    assert ex["model"] == "tiny" and ex["endpoint"] == "local" and ex["prompt"] == QUESTION
    assert ex["options"] == {"thinking": True, "effort": None, "temperature": 0.0, "max_tokens": 3, "system": None,
                             "context": 1024}
    assert ex["messages"] == [{"role": "user", "content": QUESTION}]
    assert ex["reasoning"] == out["reasoning"] and ex["content"] == out["answer"] and ex["tool_calls"] == []
    assert ex["usage"]["prompt_tokens"] == out["usage"]["prompt_tokens"] > 32
    assert ex["usage"]["completion_tokens"] == 3 and ex["finish_reason"] == "length"
    assert ex["timings"]["total_s"] >= ex["timings"]["prefill_s"] > 0 and ex["time"].endswith("Z")
    r = run("logs")
    assert r.exit_code == 0 and ex["cid"] in r.stdout and "please explain in detail" in r.stdout
    r = run("logs", "path")
    assert r.exit_code == 0 and r.stdout.strip() == str(home / "logs.db")
    r = run("logs", "--cid", ex["cid"])
    assert r.exit_code == 0 and f"> {QUESTION}" in r.stdout and "turn 1" in r.stdout


def test_ask_continue_with_files_reuses_the_prefix_cache(home: Path, tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "core.py").write_text("def add(a, b):\n    return a + b\n" * 20)
    first = ask_json("-f", str(tmp_path / "proj"), "what does this do?")
    r = run("ask", *FAST, "-c", "and how would you test it?")
    assert r.exit_code == 0, r.output
    assert f"continuing conversation {first['conversation']} (1 earlier turn(s))" in r.stderr
    second = logged()[-1]
    # the follow-up's prompt is the first one (files included) up to its last token, `<think>`, which the
    # official format replaces by `</think>`: all of that comes from the prefix cache (keyed by the tokens)
    assert second["cid"] == first["conversation"] and second["turn"] == 2
    assert second["usage"]["cached_tokens"] == first["usage"]["prompt_tokens"] - 1
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"] + 5
    assert f"{second['usage']['cached_tokens']:,} cached" in r.stderr  # the stats line
    assert second["prompt"] == "and how would you test it?"
    inputs = logged()[0]["inputs"]
    assert inputs["files"] == ["proj/core.py"] and inputs["paths"] == [str(tmp_path / "proj")]
    third = ask_json("-c", "--no-think", "one more thing?")  # --json says so too
    assert third["conversation"] == first["conversation"]
    assert third["usage"]["cached_tokens"] == second["usage"]["prompt_tokens"] - 1


def test_cid_picks_an_older_conversation(home: Path) -> None:
    a = ask_json("--no-think", QUESTION)
    b = ask_json("--no-think", "a different question, with enough words to be cached: what is multi-token prediction?")
    assert a["conversation"] != b["conversation"]
    c = ask_json("--no-think", "--cid", a["conversation"][:6], "and the shared expert?")
    assert c["conversation"] == a["conversation"]
    # chat mode: the first prompt ends with `</think>` and comes back whole, the answer after it
    assert c["usage"]["cached_tokens"] >= a["usage"]["prompt_tokens"]
    assert [ex["turn"] for ex in logged("--cid", a["conversation"])] == [1, 2]
    r = run("ask", *FAST, "--cid", "nosuchid", "q")
    assert r.exit_code == 1 and "no conversation 'nosuchid'" in r.stderr and "Traceback" not in r.output


def test_no_log_and_v4_no_log(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("ask", *FAST, "--no-log", "q").exit_code == 0
    monkeypatch.setenv("V4_NO_LOG", "1")
    assert run("ask", *FAST, "q").exit_code == 0
    assert run("chat", *FAST, input="hi\n").exit_code == 0
    assert not (home / "logs.db").exists()
    r = run("ask", *FAST, "-c", "q")
    assert r.exit_code == 1 and "no conversation to continue" in r.stderr
    monkeypatch.setenv("V4_NO_LOG", "0")
    assert run("ask", *FAST, "q").exit_code == 0 and len(logged()) == 1


def test_chat_continues_and_clear_starts_anew(home: Path) -> None:
    first = ask_json("--no-think", QUESTION)
    r = run("chat", *FAST, "--no-think", "-c", input="and what about the shared expert, then?\n")
    assert r.exit_code == 0, r.output
    assert f"continuing conversation {first['conversation']}" in r.stderr
    ex = logged()[-1]
    assert ex["verb"] == "chat" and ex["cid"] == first["conversation"] and ex["turn"] == 2
    assert ex["usage"]["cached_tokens"] >= first["usage"]["prompt_tokens"]
    r = run("chat", *FAST, "-s", "be brief", input="one\n/clear\ntwo\n")
    assert r.exit_code == 0, r.output
    one, two = logged()[-2:]
    assert one["cid"] != two["cid"] != first["conversation"] and one["turn"] == two["turn"] == 1
    assert one["options"]["system"] == "be brief" and one["messages"][0] == {"role": "system", "content": "be brief"}


def test_a_log_that_cannot_be_written_is_a_warning(home: Path) -> None:
    (home / "logs.db").mkdir()  # something in the way: the log cannot be opened
    r = run("ask", *FAST, "--json", QUESTION)
    assert r.exit_code == 0 and json.loads(r.stdout)["usage"]["completion_tokens"] == 3
    assert "warning: not logging (cannot use the log" in r.stderr and "Traceback" not in r.output
    r = run("chat", *FAST, input="one\ntwo\n")
    assert r.exit_code == 0 and r.stderr.count("not logging") == 1  # once per session, not per message
    if os.geteuid() != 0:  # root writes anyway
        (home / "logs.db").rmdir()
        assert run("ask", *FAST, "q").exit_code == 0
        (home / "logs.db").chmod(0o444)
        r = run("ask", *FAST, "q")
        assert r.exit_code == 0 and "readonly" in r.stderr


def test_a_corrupt_log_is_named_and_does_not_block_asking(home: Path) -> None:
    (home / "logs.db").write_bytes(b"\x00garbage" * 512)
    r = run("ask", *FAST, "--no-think", QUESTION)
    assert r.exit_code == 0 and r.stdout.strip()  # the answer
    assert f"{home / 'logs.db'} is not a v4 log" in r.stderr and "move it aside" in r.stderr
    for args in (["logs"], ["ask", *FAST, "-c", "q"]):
        r = run(*args)
        assert r.exit_code == 1 and "is not a v4 log" in r.stderr and "Traceback" not in r.output


def test_continuing_against_a_server_sends_the_earlier_turns(home: Path) -> None:
    chunks = [c for c in sse_chunks("The answer| is 42.") if "tool_calls" not in json.dumps(c)]
    with FakeOpenAI(chunks=chunks) as srv:
        assert run("ask", "--url", srv.url, "what is it?").exit_code == 0
        r = run("ask", "--url", srv.url, "-c", "why?")
        assert r.exit_code == 0, r.output
        assert srv.requests[-1]["messages"] == [{"role": "user", "content": "what is it?"},
                                                {"role": "assistant", "content": "The answer is 42."},
                                                {"role": "user", "content": "why?"}]
        assert srv.requests[-1]["model"] == "deepseek-v4-flash"  # the conversation's model
        rows = logged()
        assert [r["endpoint"] for r in rows] == [srv.url] * 2 and rows[1]["usage"]["cached_tokens"] == 96
        assert rows[0]["reasoning"] == "Let me think."
        r = run("chat", "--url", srv.url, "-c", input="and then?\n")
        assert r.exit_code == 0, r.output
        assert [m["content"] for m in srv.requests[-1]["messages"]] == [
            "what is it?", "The answer is 42.", "why?", "The answer is 42.", "and then?"]
