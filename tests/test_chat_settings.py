"""What a user sets in chat (/set, checked when typed) and what they are told when the budget runs out while
the model is still thinking (chat and ask)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from test_repl import ENTER, Scripted, drive
from v4cli.cli import app
from v4cli.events import Content, Reasoning, Stats


class Thinker(Scripted):
    """Reasons and runs out of tokens before answering, unless given more than 8."""

    def chat(self, messages: Any, **kw: Any) -> Iterator[Any]:
        self.calls.append({"messages": list(messages), **kw})
        yield Reasoning("let me think about this")
        if kw["options"].max_tokens > 8:
            yield Content("the answer")
            yield Stats(10, 0, 9, 0.01, 0.01, "stop")
        else:
            yield Stats(10, 0, 8, 0.01, 0.01, "length")


def test_set_refuses_out_of_range_values_at_once() -> None:
    b = Scripted()
    b.context = 4096  # type: ignore[attr-defined]  # a local backend's context bounds max_tokens
    keys = ["/set temperature -1", "/set top_p 5", "/set top_p 0", "/set max_tokens -5", "/set max_tokens 4096",
            "/set temperature nan", "/set seed x", "/set temperature 0.7", "/set top_p 1", "/set max_tokens 4095",
            "q", "/exit"]
    repl, out = drive(b, ENTER.join(keys) + ENTER)
    assert "error: temperature must be a number >= 0 (got -1)" in out
    assert "error: top_p must be a number in (0, 1] (got 5)" in out and "(got 0)" in out
    assert "error: max_tokens must be a whole number >= 1 (got -5)" in out
    assert "error: max_tokens must be below the context (4,096 tokens)" in out
    assert "temperature must be a number >= 0 (got nan)" in out and "seed must be a whole number, not 'x'" in out
    o = b.calls[0]["options"]
    assert (o.temperature, o.top_p, o.max_tokens) == (0.7, 1.0, 4095)  # only the valid values were taken


def test_show_thinking_is_settable_in_chat_and_the_hints_say_how() -> None:
    b = Thinker()
    keys = ["/set max_tokens 9", "first", "/set show_thinking on", "second", "/set show_thinking maybe",
            "/set max_tokens 8", "/set show_thinking off", "third", "/exit"]
    _, out = drive(b, ENTER.join(keys) + ENTER)
    segments = out.split("thought for")  # each answer's "thought for" line starts a segment
    assert len(segments) == 4 and "let me think about this" not in segments[0]
    first, second, third = (seg.splitlines()[0] for seg in segments[1:])
    assert first.endswith("; /set show_thinking on shows it") and "--show-thinking" not in out
    assert "let me think about this" in segments[1] and "shows it" not in second  # on: the reasoning is shown
    assert third.endswith("shows it")  # off again
    assert "use /set show_thinking on or /set show_thinking off" in out
    # the third answer ran out while thinking: said, with what to type here
    assert ("warning: the max_tokens budget (8 tokens) ran out while thinking, before any answer; give it more "
            "with /set max_tokens N, or /think off") in segments[3]
    assert out.count("ran out while thinking") == 1


def test_ask_says_the_budget_ran_out_while_thinking(serve_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("V4_HOME", str(serve_home))
    monkeypatch.delenv("V4_MODEL", raising=False)
    runner = CliRunner()
    for extra in ([], ["--json"]):  # greedy, the tiny model never leaves <think>
        r = runner.invoke(app, ["ask", "--max-tokens", "8", "-t", "0", "--context", "1024", *extra, "hi"])
        assert r.exit_code == 0, r.output
        assert ("the max_tokens budget (8 tokens) ran out while thinking, before any answer; give it more with "
                "--max-tokens N, or --no-think") in r.stderr
    r = runner.invoke(app, ["ask", "--no-think", "--max-tokens", "8", "-t", "0", "--context", "1024", "hi"])
    assert r.exit_code == 0 and "ran out while thinking" not in r.stderr
