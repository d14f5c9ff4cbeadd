"""Every `v4` command through Typer's test runner: success paths and errors, exit codes and messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from huggingface_hub import constants, file_download
from typer.testing import CliRunner

from hubserver import FakeHub
from test_repl import FakeOpenAI, sse_chunks
from v4cli import __version__, hub
from v4cli.cli import app

REPO = "deepseek-ai/DeepSeek-V4-Flash"
SHARD = "model-00002-of-00003.safetensors"
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One V4_HOME with the built-in tiny model written, shared by the module (writing it takes seconds)."""
    home = tmp_path_factory.mktemp("v4home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("V4_HOME", str(home))
        hub.resolve("tiny")
    return home


@pytest.fixture
def env(tiny_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("V4_HOME", str(tiny_home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "V4_MODEL", "V4_API_KEY", "HF_HUB_OFFLINE", "HF_TOKEN", "V4_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    return tiny_home


@pytest.fixture
def fake(ckpt_dir, env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with FakeHub() as h:
        h.add(REPO, ckpt_dir("flash"))
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
        monkeypatch.setattr(file_download, "time", types.SimpleNamespace(sleep=lambda s: None))
        yield h


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A small generated repository: code, docs, an ignored folder, a binary and a secret."""
    r = tmp_path / "proj"
    (r / ".git").mkdir(parents=True)
    (r / "src" / "pkg").mkdir(parents=True)
    (r / "docs").mkdir()
    (r / "build").mkdir()
    (r / ".gitignore").write_text("*.log\n")
    (r / "README.md").write_text("# proj\nA tiny project for tests.\n")
    (r / "src" / "pkg" / "core.py").write_text("def add(a, b):\n    return a + b\n" * 20)
    (r / "src" / "main.py").write_text("from pkg.core import add\nprint(add(1, 2))\n")
    (r / "docs" / "guide.md").write_text("Use add() to add numbers.\n" * 10)
    (r / "build" / "out.txt").write_text("generated\n")
    (r / "debug.log").write_text("noise\n")
    (r / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (r / "key.pem").write_text("-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----\n")
    return r


def run(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


# ---- global -------------------------------------------------------------------------------------------------
def test_import_is_light_and_help_is_everywhere() -> None:
    code = ("import sys, v4cli.cli\nheavy = [m for m in ('torch', 'rich', 'huggingface_hub', 'v4cli.runtime') "
            "if m in sys.modules]\nassert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "v4cli.cli", "--help"], check=True, capture_output=True)
    assert time.perf_counter() - t0 < 3  # about 0.2 s idle; generous for a loaded CI box
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"v4 {__version__}"
    r = run()
    assert r.exit_code == 2 and "Usage" in r.output  # no command: help, as a usage error
    for cmd in ("pull", "list", "show", "rm", "chat", "ask", "bench"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Examples:" in r.stdout and f"v4 {cmd}" in r.stdout, cmd
    r = run("frobnicate")
    assert r.exit_code == 2 and "No such command" in r.output


# ---- list / show / rm -----------------------------------------------------------------------------------------
def test_list_show(env: Path) -> None:
    r = run("list")
    assert r.exit_code == 0 and "tiny" in r.stdout and "builtin" in r.stdout
    assert json.loads(run("list", "--json").stdout)[0]["name"] == "tiny"
    r = run("show", "tiny", "--context", "4096")
    assert r.exit_code == 0, r.output
    assert "DeepseekV4ForCausalLM" in r.stdout and "memory plan: 1 x 4,096 tokens" in r.stdout
    assert "random weights" in r.stderr
    info = json.loads(run("show", "tiny", "--json").stdout)
    assert info["vocab_size"] == 129280 and "memory_plan" not in info


def test_unknown_model_everywhere(env: Path) -> None:
    for args in (["show", "gpt-9"], ["rm", "gpt-9"], ["ask", "-m", "gpt-9", "hi"], ["pull", "not a model"]):
        r = run(*args)
        assert r.exit_code == 1, args
        assert "error:" in r.stderr and "gpt-9" in r.stderr or "not a model" in r.stderr, args
        assert "Traceback" not in r.output
    r = run("show", "flash")
    assert r.exit_code == 1 and "not pulled yet: run `v4 pull flash`" in r.stderr


def test_rm_local_model_and_nothing_to_remove(ckpt_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("V4_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    r = run("list")
    assert r.exit_code == 0 and "no models yet" in r.stderr
    r = run("rm", "tiny")
    assert r.exit_code == 1 and "not written yet" in r.stderr
    shutil.copytree(ckpt_dir("flash"), home / "models" / "mine")
    assert "mine" in run("list").stdout
    r = run("rm", "mine")
    assert r.exit_code == 0 and "removed mine" in r.stderr and not (home / "models" / "mine").exists()


# ---- pull -------------------------------------------------------------------------------------------------------
def test_pull_list_rm(fake: FakeHub) -> None:
    r = run("pull", "flash")
    assert r.exit_code == 0, r.output
    assert "flash is ready at" in r.stderr
    assert "flash" in run("list").stdout
    r = run("rm", "flash")
    assert r.exit_code == 0 and "removed flash" in r.stderr


def test_pull_errors(fake: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as mp:  # checked before any byte is fetched
        mp.setattr(hub.shutil, "disk_usage", lambda p: types.SimpleNamespace(total=10**6, used=0, free=1000))
        r = run("pull", "flash")
    assert r.exit_code == 1 and "not enough disk space" in r.stderr and "1,000 bytes" in r.stderr
    r = run("pull", "nobody/missing")
    assert r.exit_code == 1 and "no model nobody/missing" in r.stderr
    r = run("pull", "flash", "--revision", "v9")
    assert r.exit_code == 1 and "has no revision 'v9'" in r.stderr
    fake.cut_always.add(SHARD)  # the connection keeps dropping
    r = run("pull", "flash")
    assert r.exit_code == 1 and "stopped" in r.stderr and "Run `v4 pull flash` again to continue" in r.stderr
    fake.cut_always.clear()
    files = fake.repos[REPO].files
    good = files[SHARD]
    files[SHARD] = good[: len(good) // 2]  # the hub serves a corrupt (truncated) shard
    r = run("pull", "flash")
    assert r.exit_code == 1 and "not usable" in r.stderr and SHARD in r.stderr and "v4 rm flash" in r.stderr


def test_pull_interrupted_and_offline(fake: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    def cut(*a, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(hub, "snapshot_download", cut)
        r = run("pull", "flash")
    assert r.exit_code == 130 and "pull interrupted: run `v4 pull flash` again" in r.stderr
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run("pull", "flash")
    assert r.exit_code == 1 and "offline mode" in r.stderr


# ---- ask: ingestion --------------------------------------------------------------------------------------------------
def test_ask_dry_run_summary(env: Path, repo: Path) -> None:
    r = run("ask", "--file", str(repo), "--dry-run", "what does it do?")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "files in: 5" in out and "core.py" in out
    assert "ignored by .gitignore" in out and "binary" in out and "looks like a secret" in out
    assert "default ignore (build)" in out and "tokens per folder:" in out and "of 61,440 tokens budget" in out
    s = json.loads(run("ask", "-f", str(repo), "--dry-run", "--json", "q").stdout)
    assert {f["path"].split("/")[-1] for f in s["files"]} == {".gitignore", "README.md", "core.py", "main.py",
                                                                  "guide.md"}
    assert s["fits"] and s["total_tokens"] <= s["budget_tokens"] and s["folders"]
    assert any(x["path"] == "proj/logo.png" and "binary" in x["reason"] for x in s["skipped"])


def test_ask_input_errors(env: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = run("ask", "--file", str(tmp_path / "nope.py"), "q")
    assert r.exit_code == 1 and "no such file or folder" in r.stderr
    empty = tmp_path / "empty"
    (empty / ".git").mkdir(parents=True)
    (empty / "node_modules").mkdir()
    r = run("ask", "--file", str(empty), "q")
    assert r.exit_code == 1 and "nothing to read in" in r.stderr and "default ignore" in r.stderr
    real = os.scandir

    def locked(path):
        if Path(path) == repo / "src":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", locked)
    s = json.loads(run("ask", "-f", str(repo), "--dry-run", "--json", "q").stdout)
    assert any(x["path"].rstrip("/") == "proj/src" and "Permission denied" in x["reason"] for x in s["skipped"])
    r = run("ask", "-f", str(repo / "src"), "q")
    assert r.exit_code == 1 and "unreadable: Permission denied" in r.stderr
    monkeypatch.setattr(os, "scandir", real)
    r = run("ask", "-f", str(repo), "--context", "300", "--max-tokens", "10", "--dry-run", "why " * 400)
    assert r.exit_code == 1 and "over the budget of 290" in r.stderr
    r = run("ask", "-f", str(repo), "--context", "400", "--max-tokens", "10", "--dry-run", "q")
    assert r.exit_code == 0 and "dropped to fit the budget" in r.stdout
    r = run("ask", "--effort", "extreme", "q")
    assert r.exit_code == 2 and "--effort" in r.output
    r = run("ask", "--context", "1000", "--max-tokens", "1000", "q")
    assert r.exit_code == 2


# ---- ask: answers ----------------------------------------------------------------------------------------------
def test_ask_tiny_with_stdin_and_files(env: Path, repo: Path) -> None:
    r = run("ask", "--no-think", "--max-tokens", "3", "-t", "0", "--context", "4096", "why does this fail?",
            input="Traceback: ZeroDivisionError\n")
    assert r.exit_code == 0, r.output
    assert "random weights" in r.stderr and "3 tokens in" in r.stderr and "tok/s" in r.stderr
    assert r.stdout.strip()  # the answer (noise) is on stdout, the rest on stderr
    r = run("ask", "-f", str(repo), "--max-tokens", "3", "-t", "0", "--context", "4096", "--json", "what is this?")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["usage"]["completion_tokens"] == 3 and out["usage"]["prompt_tokens"] > 200
    assert out["reasoning"] and out["summary"]["files"]  # thinking mode: greedy, the tiny model never leaves <think>


def test_ask_second_question_reuses_the_prefix(env: Path, repo: Path) -> None:
    from v4cli.runtime import Engine

    if "cache_prefix" not in Engine.stream.__code__.co_varnames:
        pytest.skip("this Engine has no prefix cache yet")
    (repo / "unique.txt").write_text(f"{os.getpid()} {os.urandom(8).hex()}\n")  # nothing cached yet
    args = ["ask", "-f", str(repo), "--no-think", "--max-tokens", "2", "--context", "4096", "--json"]
    first = json.loads(run(*args, "what is this?").stdout)
    second = json.loads(run(*args, "and what does add() do?").stdout)
    prefix = second["summary"]["prefix_tokens"]
    assert first["usage"]["cached_tokens"] < prefix <= second["usage"]["cached_tokens"] + 1
    r = run(*args[:-1], "one more?")
    assert r.exit_code == 0 and "cached" in r.stderr and "no cache hit" not in r.stderr


def test_ask_says_when_the_kernels_cannot_be_built(env: Path, tmp_path: Path) -> None:
    # A compiler that does not exist: the build fails, the answer still comes (from the PyTorch twins),
    # the user is told why once, and the next run does not try to build again.
    cmd = [sys.executable, "-m", "v4cli.cli", "ask", "--no-think", "--max-tokens", "2", "-t", "0", "--context", "1024",
           "hi"]
    environ = {**os.environ, "V4_KERNELS": "1", "V4_KERNEL_CACHE": str(tmp_path / "kernels"),
               "CXX": str(tmp_path / "no-such-c++"), "COLUMNS": "400"}
    # the lock file a killed build leaves behind: torch's loader alone would wait on it forever
    from v4cli.runtime import kernels

    (tmp_path / "kernels" / kernels.build_key()).mkdir(parents=True)
    (tmp_path / "kernels" / kernels.build_key() / "lock").touch()
    first = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "building the C++ CPU kernels" in first.stderr
    assert "running on PyTorch reference ops (C++ kernels unavailable: the build failed, see " in first.stderr
    assert "WARNING" not in first.stderr and first.stdout.strip()
    assert "no-such-c++" in next((tmp_path / "kernels").glob("*/FAILED")).read_text()
    second = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "building" not in second.stderr
    assert "an earlier build failed" in second.stderr


def test_ask_over_the_context(env: Path) -> None:
    r = run("ask", "--no-think", "--context", "256", "--max-tokens", "8", "why " * 300)
    assert r.exit_code == 1 and "the context holds 256" in r.stderr and "Traceback" not in r.output


def test_ask_with_a_corrupt_local_model(ckpt_dir, env: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(ckpt_dir("flash"), folder)
    shard = folder / SHARD
    shard.write_bytes(shard.read_bytes()[:1000])
    r = run("ask", "-m", str(folder), "--max-tokens", "2", "--context", "1024", "q")
    assert r.exit_code == 1 and SHARD in r.stderr and "Traceback" not in r.output


# ---- --url ---------------------------------------------------------------------------------------------------------
def test_ask_and_chat_against_a_server(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("V4_API_KEY", "secret")
    with FakeOpenAI(chunks=sse_chunks("The answer| is 42."), api_key="secret") as srv:
        r = run("ask", "--url", srv.url, "--effort", "max", "what is it?", input="some log\n")
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith("The answer is 42.") and "get_weather" in r.stdout
        assert "96 cached" in r.stderr and "thought for" in r.stderr
        body = srv.requests[-1]
        assert body["reasoning_effort"] == "max" and body["thinking"] == {"type": "enabled"}
        assert "<stdin>\nsome log\n</stdin>" in body["messages"][0]["content"]
        assert body["messages"][0]["content"].endswith("what is it?")
        r = run("chat", "--url", srv.url, "--no-think", "-m", "deepseek-v4-pro", input="hi\n/exit\n")
        assert r.exit_code == 0, r.output
        assert "The answer is 42." in r.output and srv.requests[-1]["model"] == "deepseek-v4-pro"
        assert srv.requests[-1]["thinking"] == {"type": "disabled"}
        r = run("ask", "--url", srv.url, "--api-key", "wrong", "q")
        assert r.exit_code == 1 and "HTTP 401" in r.stderr and "--api-key" in r.stderr
    r = run("ask", "--url", srv.url, "q")
    assert r.exit_code == 1 and "cannot reach" in r.stderr and "Traceback" not in r.output
