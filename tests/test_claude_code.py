"""Real agent clients against `v4 serve`: Claude Code's recorded requests replayed, and (slow) Claude
Code itself, from the npm registry, run with `claude -p`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "claude_code"


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def check_stream(events: list[tuple[str, dict[str, Any]]]) -> None:
    """The order the Anthropic SDKs expect: message_start, then blocks opened, filled and closed in turn,
    message_delta, message_stop; pings anywhere."""
    names = [n for n, _ in events if n != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"], names
    open_index = None
    for name, data in events:
        assert data["type"] == name
        if name == "content_block_start":
            assert open_index is None
            open_index = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None
    final = next(d for n, d in events if n == "message_delta")
    assert final["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use", "stop_sequence")


@pytest.mark.parametrize("fixture", ["first_request.json", "tool_result_request.json"])
def test_recorded_claude_code_request_is_served(v4_server: Any, fixture: str) -> None:
    rec = json.loads((FIXTURES / fixture).read_text())
    body = {**rec["body"], "max_tokens": 12}  # as recorded, but short: the random model would use all 32000
    assert rec["body"]["stream"] and any(m["role"] == "system" for m in body["messages"])
    with httpx.stream(rec["method"], v4_server.url + rec["path"], json=body, headers=rec["headers"],
                      timeout=300) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r.read().decode())
    check_stream(events)
    start = next(d for n, d in events if n == "message_start")["message"]
    read = start["usage"]["input_tokens"] + start["usage"]["cache_read_input_tokens"]
    assert read > 3000  # 12 tools and several KB of system prompt
    if fixture == "tool_result_request.json":  # the follow-up: system prompt and tools come from the cache
        assert start["usage"]["cache_read_input_tokens"] > 3000
    # display "omitted": thinking blocks carry no text, only their signature
    assert not any(d["delta"].get("thinking") for n, d in events if n == "content_block_delta")


def _claude() -> str | None:
    found = shutil.which("claude")
    if found:
        return found
    cache = Path(os.environ.get("V4_TEST_NPM_DIR", Path.home() / ".cache" / "v4-test-npm"))
    binary = cache / "node_modules" / ".bin" / "claude"
    if not binary.exists() and shutil.which("npm"):
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(cache), "@anthropic-ai/claude-code@latest"],
                       capture_output=True, timeout=600)
    return str(binary) if binary.exists() else None


@pytest.mark.slow
def test_claude_code_print_mode_completes(v4_server: Any, tmp_path: Path) -> None:
    claude = _claude()
    if claude is None:
        pytest.skip("Claude Code is not installed and npm is absent")
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TERM": "dumb",
           "ANTHROPIC_BASE_URL": v4_server.url, "ANTHROPIC_AUTH_TOKEN": "x",
           "ANTHROPIC_MODEL": "deepseek-v4-flash", "ANTHROPIC_SMALL_FAST_MODEL": "deepseek-v4-flash",
           "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "1024", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "DISABLE_AUTOUPDATER": "1", "API_TIMEOUT_MS": "600000"}
    for i in range(3):  # the built-in model samples an end of turn; every run must end cleanly
        r = subprocess.run([claude, "-p", f"say hi ({i})", "--output-format", "json"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"stdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
        out = json.loads(r.stdout)
        assert out["type"] == "result" and out["subtype"] == "success" and out["is_error"] is False, out
        usage = out["usage"]  # as our server reported it: the system prompt and tools, read or cached
        assert usage["input_tokens"] + usage["cache_read_input_tokens"] > 3000 and usage["output_tokens"] > 0, out
