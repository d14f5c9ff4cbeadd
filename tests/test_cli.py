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
    assert info["vocab_size"] == 129280 and info["layout"] == "official" and info["problems"] == []
    assert info["memory_plan"]["context"] == info["context_length"]  # without --context: the longest


def test_unknown_model_everywhere(env: Path) -> None:
    for args in (["show", "gpt-9"], ["rm", "gpt-9"], ["ask", "-m", "gpt-9", "hi"], ["pull", "not a model"]):
        r = run(*args)
        assert r.exit_code == 1, args
        assert "error:" in r.stderr and "gpt-9" in r.stderr or "not a model" in r.stderr, args
        assert "Traceback" not in r.output
    r = run("show", "nobody/else")  # a repo v4 knows nothing about: nothing to show before the pull
    assert r.exit_code == 1 and "not pulled yet: run `v4 pull nobody/else`" in r.stderr


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
        mp.setattr(hub.env.shutil, "disk_usage", lambda p: types.SimpleNamespace(total=10**6, used=0, free=1000))
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
        mp.setattr(hub.download, "snapshot_download", cut)
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


def test_ask_says_when_the_kernels_cannot_be_built(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A compiler that does not exist: the build fails, the answer still comes (from the PyTorch twins),
    # the user is told why once, and the next run does not try to build again.
    cmd = [sys.executable, "-m", "v4cli.cli", "ask", "--no-think", "--max-tokens", "2", "-t", "0", "--context", "1024",
           "hi"]
    environ = {**os.environ, "V4_KERNELS": "1", "V4_KERNEL_CACHE": str(tmp_path / "kernels"),
               "CXX": str(tmp_path / "no-such-c++"), "COLUMNS": "400"}
    # the lock file a killed build leaves behind: torch's loader alone would wait on it forever
    from v4cli.runtime import kernels

    monkeypatch.setenv("CXX", environ["CXX"])  # the compiler is a build input: the key the command computes
    key = kernels.key_of(kernels.build_inputs())
    (tmp_path / "kernels" / key).mkdir(parents=True)
    (tmp_path / "kernels" / key / "lock").touch()
    first = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "building the C++ kernels (once, about " in first.stderr and key in first.stderr
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


# ---- errors in the user's terms -----------------------------------------------------------------------------------
BUG = ("import sys, rich.table\n"
       "def boom(*a, **k):\n    raise {exc}('boom from a library')\n"
       "rich.table.Table.add_row = boom\n"
       "from v4cli.cli import app\nsys.argv[0] = 'v4'\napp()")


@pytest.mark.parametrize("exc", ["ValueError", "PermissionError"])
def test_a_bug_shows_its_traceback(env: Path, exc: str) -> None:
    # a third-party function failing is a bug, not the user's doing: the traceback stays (ValueError and
    # OSError were once printed as one line, hiding real bugs)
    r = subprocess.run([sys.executable, "-c", BUG.format(exc=exc), "show", "flash"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and f"{exc}: boom from a library" in r.stderr
    assert "error: boom" not in r.stderr


def test_user_errors_are_one_message(env: Path, tmp_path: Path) -> None:
    cases = [
        (["ask", "--file", str(tmp_path / "missing.py"), "q"], "--file: no such file or folder: "),
        (["show", str(tmp_path / "missing")], "no such folder"),
    ]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes(b"\xff\xfe{}")  # not text: once a UnicodeDecodeError traceback
    cases.append((["show", str(bad)], f"{bad / 'config.json'} is not UTF-8 text"))
    for args, message in cases:
        r = run(*args)
        assert r.exit_code == 1 and message in r.stderr, (args, r.output)
        assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1, args


def test_handled_keeps_bugs_and_stops_user_errors() -> None:
    import typer

    from v4cli.cli.app import handled
    from v4cli.console import Console
    from v4cli.errors import UserError

    c = Console()
    for bug in (ValueError("x"), OSError(2, "No such file or directory"), KeyError("k")):
        with pytest.raises(type(bug)), handled(c):
            raise bug
    with pytest.raises(typer.Exit) as stopped, handled(c):
        raise UserError("your fault")
    assert stopped.value.exit_code == 1


# ---- advice that leads somewhere ------------------------------------------------------------------------------------
def test_a_name_that_is_no_model_says_what_a_model_is(env: Path) -> None:
    for args in (["ask", "--model", "./nonsense", "q"], ["ask", "--model", "./nonsense", "--dry-run", "q"],
                 ["pull", "./nonsense"], ["chat", "--model", "../nowhere"], ["serve", "--model", "./nonsense"]):
        r = run(*args, input="/exit\n")
        assert r.exit_code == 1, (args, r.output)
        assert "no such folder" in r.stderr and "flash, pro, tiny, a Hub repo id (owner/name)" in r.stderr, args
        assert "v4 pull ./" not in r.stderr and "v4 pull ../" not in r.stderr, args
    r = run("ask", "--model", "gpt-9", "--dry-run", "q")  # a dry run refuses what the real run refuses
    assert r.exit_code == 1 and "unknown model 'gpt-9'" in r.stderr


def test_url_without_a_scheme_is_http(env: Path) -> None:
    with FakeOpenAI(chunks=sse_chunks("The answer| is 42.")) as srv:
        bare = srv.url.removeprefix("http://")
        r = run("ask", "--url", bare, "--no-think", "q")
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith("The answer is 42.") and "read as http://" not in r.stderr
    r = run("ask", "--url", bare, "q")  # the server is gone: now say how the URL was read
    assert r.exit_code == 1 and f"--url {bare} was read as http://{bare}" in r.stderr and "Traceback" not in r.output


def test_context_beyond_the_model_is_refused(ckpt_dir, env: Path) -> None:
    short = ckpt_dir("flash", max_position_embeddings=4096)
    for args in (["ask", "-m", str(short), "--context", "8192", "q"],
                 ["ask", "-m", str(short), "--context", "8192", "--dry-run", "q"],
                 ["chat", "-m", str(short), "--context", "8192"],
                 ["serve", "-m", str(short), "--context", "8192", "--port", "0"],
                 ["show", str(short), "--context", "8192"]):
        r = run(*args, input="hi\n/exit\n")
        assert r.exit_code == 1, (args, r.output)
        assert "its limit is 4,096 (max_position_embeddings in its config.json)" in r.stderr, args
        assert "use --context 4096 or less" in r.stderr and "Traceback" not in r.output, args
    for dry in ([], ["--dry-run"]):  # the built-in tiny, not written yet in this home: its own 1,048,576
        r = run("ask", "--context", "2000000", "--max-tokens", "8", *dry, "q")
        assert r.exit_code == 1 and "its limit is 1,048,576" in r.stderr, (dry, r.output)
    r = run("ask", "-m", str(short), "--context", "4096", "--max-tokens", "8", "--dry-run", "q")
    assert r.exit_code == 0, r.output  # at the limit is fine


# ---- before a 160 GB download ---------------------------------------------------------------------------------------
def test_show_a_model_not_pulled_yet(env: Path) -> None:
    from v4cli.runtime.args import ModelArgs
    from v4cli.runtime.plan import state_bytes, weight_bytes

    r = run("show", "flash", "--context", "131072")
    assert r.exit_code == 0, r.output
    assert "not pulled yet (`v4 pull flash`, 160 GB)" in r.stderr
    assert "memory plan: 1 x 131,072 tokens" in r.stdout and "hidden size" in r.stdout and "4096" in r.stdout
    info = json.loads(run("show", "pro", "--json").stdout)
    args = ModelArgs.from_dict(hub.known_config("pro"))
    assert (info["pulled"], info["hidden_size"], info["layers"], info["routed_experts"]) == (False, 7168, 61, 384)
    assert info["memory_plan"]["context"] == 32768  # v4 chat's default without --context
    assert info["memory_plan"]["weights_bytes"] == weight_bytes(args) == info["download_bytes"]
    assert info["memory_plan"]["state_bytes"] == state_bytes(args, 32768)
    assert "v4 pull pro" in info["status"]


def _memory(monkeypatch: pytest.MonkeyPatch, available: int) -> None:
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=available))


def test_pull_shows_the_plan_first_and_warns(fake: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    _memory(monkeypatch, 16 << 30)  # a 16 GiB machine: V4-Flash cannot fit
    r = run("pull", "flash", "--context", "65536")
    assert r.exit_code == 0, r.output
    err = r.stderr
    assert err.index("memory plan: 1 x 65,536 tokens") < err.index("flash is ready at")
    assert "warning: flash at 65,536 tokens cannot run on this machine" in err and "Pulling anyway" in err
    hub.remove("flash")
    _memory(monkeypatch, 1 << 50)  # plenty: the plan, no warning
    r = run("pull", "flash")
    assert r.exit_code == 0 and "memory plan: 1 x 32,768 tokens" in r.stderr and "warning" not in r.stderr


def test_chat_shows_a_bug_with_its_traceback_and_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import http.client

    from test_repl import drive
    from v4cli.remote import RemoteBackend

    def boom(self):
        raise ValueError("boom from a library")

    with FakeOpenAI(chunks=sse_chunks("The answer| is 42.")) as srv:
        with monkeypatch.context() as mp:
            mp.setattr(http.client.HTTPResponse, "__iter__", boom)  # the client's reading of the stream breaks
            _, out = drive(RemoteBackend(srv.url), "hi\n/exit\n")
        assert "Traceback (most recent call last)" in out and "ValueError: boom from a library" in out
        _, out = drive(RemoteBackend(srv.url), "hi\n/exit\n")  # fixed: the next session answers
        assert "The answer is 42." in out and "Traceback" not in out
    with FakeOpenAI(status=401, body=b'{"error": {"message": "bad key"}}') as srv:
        _, out = drive(RemoteBackend(srv.url), "hi\n/exit\n")  # the user's to fix: one line, no traceback
    assert "HTTP 401: bad key" in out and "Traceback" not in out
