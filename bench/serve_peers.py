"""The two servers `bench/serve_speed.py` compares and what they load: the bench checkpoint, the GGUF that
llama.cpp's own converter makes from it, each server's command line and thread environment, and stopping
every server started here, on signals too."""

from __future__ import annotations

import atexit
import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
THREADS = 2
LONG_TOKENS = 8192  # the long prompt; both servers' context is sized for it
CONTEXT = LONG_TOKENS + 1024  # the 8K prompt + template + question + completion, with room
LLAMA_CPP_PYTHON = "0.3.36"  # the version this script was written against (pyproject's bench extra)


# ---------------------------------------------------------------------------------------------------------
# the model: one official-layout checkpoint and the GGUF llama.cpp's converter makes from it


def bench_args() -> Any:
    """4 layers (window, CSA, HCA, CSA; 2 hash-routed) + MTP, hidden 256, 8 heads x 512, rope 64, indexer
    head 128 (4 indexer heads, as the built-in tiny model), 16 experts top-6 in FP4, FP8 linears, window 128,
    top-k 512, the real vocabulary (129,280) and tokenizer."""
    from v4cli.runtime.tiny import tiny_args

    return tiny_args("flash", vocab_size=129280, hidden_size=256, num_attention_heads=8, head_dim=512,
                     qk_rope_head_dim=64, index_head_dim=128, index_n_heads=4, n_routed_experts=16,
                     num_experts_per_tok=6, sliding_window=128, index_topk=512, num_hidden_layers=4,
                     compress_ratios=[0, 4, 128, 4, 0], num_hash_layers=2)


def ensure_checkpoint() -> Path:
    from v4cli.runtime.tiny import root_config, write_checkpoint

    args = bench_args()
    tag = hashlib.sha256(json.dumps(root_config(args), sort_keys=True).encode()).hexdigest()[:8]
    path = OUT / f"serve-official-{tag}"
    if not (path / "config.json").exists():
        print(f"writing the bench checkpoint to {path} ...", flush=True)
        tmp = path.with_name(path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        write_checkpoint(tmp, args, seed=0)
        tmp.rename(path)  # a half-written folder never carries the real name
    return path


def llama_cpp_version() -> str | None:
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure_converter(version: str, given: str | None) -> Path:
    """llama.cpp's convert_hf_to_gguf.py with its conversion/, gguf-py/ and chat templates, from the sdist of
    the installed llama-cpp-python (it vendors llama.cpp), so the converter matches the loader."""
    if given:
        return Path(given)
    root = OUT / f"llama.cpp-convert-{version}"
    if (root / "convert_hf_to_gguf.py").exists():
        return root
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        print(f"fetching the llama-cpp-python {version} sdist for llama.cpp's converter ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={version}", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/")
        dest = Path(tmp) / "tree"
        with tarfile.open(sdist) as tf:
            members = []
            for m in tf.getmembers():
                rel = m.name.split("/vendor/llama.cpp/", 1)
                if len(rel) == 2 and rel[1].startswith(keep) and (m.isfile() or m.isdir()):
                    m.name = rel[1]
                    members.append(m)
            tf.extractall(dest, members=members, filter="data")
        dest.rename(root)
    return root


def ensure_gguf(ckpt: Path, converter: Path, version: str) -> Path:
    gguf = OUT / f"{ckpt.name}-llama.cpp-{version}-q8_0.gguf"  # a new llama-cpp-python converts anew
    if gguf.exists():
        return gguf
    print(f"converting with llama.cpp's converter to {gguf.name} ...", flush=True)
    tmp = gguf.with_suffix(".partial")
    log = OUT / "convert_hf_to_gguf.log"
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, str(converter / "convert_hf_to_gguf.py"), str(ckpt), "--outtype", "q8_0",
                             "--outfile", str(tmp)], stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"llama.cpp's converter failed (rc {rc}); see {log}")
    tmp.rename(gguf)
    return gguf


# ---------------------------------------------------------------------------------------------------------
# servers: one at a time, in their own process group, always stopped


_LIVE: list[Server] = []


def _stop_all() -> None:
    for s in list(_LIVE):
        s.stop()


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # as Ctrl-C: unwinds through every `finally` (asyncio.run cancels cleanly)


def stop_servers_on_exit() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    atexit.register(_stop_all)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    cmd: list[str]
    port: int
    ready_path: str  # GET this until 200
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float) -> None:
        import httpx

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 (the child writes it until stop())
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **self.env}, start_new_session=True)
        log.close()
        _LIVE.append(self)
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with rc {self.proc.returncode} before it was ready:\n"
                                   f"{self.log_tail()}")
            try:
                if httpx.get(self.base + self.ready_path, timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)
        self.started_s = time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the group of the process we started, nothing else
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
            except ProcessLookupError:
                pass
        if self in _LIVE:
            _LIVE.remove(self)

    def rss_bytes(self) -> int:
        try:
            import psutil

            p = psutil.Process(self.proc.pid)  # type: ignore[union-attr]
            return p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
        except Exception:
            return 0

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n: int = 25) -> str:
        return "\n".join(self.log_since(0).splitlines()[-n:]) if self.log_path.exists() else ""


def llama_server(gguf: Path, omp_wait: str) -> Server:
    # llama-cpp-python's server holds one llama_context behind a lock: one request at a time, no parallel
    # slots (that is llama.cpp's C++ llama-server, which the package does not ship). Its defaults are changed
    # where they would cripple it: interrupt_requests (a new request would cut the running stream short),
    # logits_all (the vocabulary head on every prompt token, only needed for prompt logprobs). Prefix reuse:
    # it matches the live context by itself, which needs llama.cpp to drop the context's tail; its RAM cache
    # (`--cache True`) stays off, its default: it restores a saved state only when that matches further than
    # the live context, the state it saves holds the generated tokens too (dropping them is the same tail
    # removal), and each entry keeps an uncounted n_batch x vocab copy of the logits (265 MB here; the
    # server's RSS reached 10 GB in a full run with it on).
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", str(CONTEXT), "--n_threads", str(THREADS),
           "--n_threads_batch", str(THREADS), "--interrupt_requests", "False", "--logits_all", "False",
           "--verbose", "True"]
    return Server("llama.cpp", cmd, port, "/v1/models", OUT / "serve-llama.log", env=thread_env(omp_wait))


def ours_server(exe: Path, ckpt: Path, home: Path, extra: list[str], omp_wait: str) -> Server:
    port = free_port()
    cmd = [str(exe), "serve", "--model", str(ckpt), "--host", "127.0.0.1", "--port", str(port),
           "--max-batch", "16", "--context", str(CONTEXT), *extra]
    # A fresh V4_HOME: the prefix cache on disk starts empty, so "cold" is cold (kernel builds live outside it).
    return Server("v4 serve", cmd, port, "/health", OUT / "serve-ours.log",
                  env={**thread_env(omp_wait), "V4_HOME": str(home)})


def thread_env(omp_wait: str) -> dict[str, str]:
    # Both servers run OpenMP thread pools (llama.cpp's ggml and torch's intra-op pool). With the default
    # spin-waiting and another process on one of the 2 cores, both lose 5-15x (measured: llama.cpp decode
    # 2.9 tok/s spinning against 49 passive); passive waiting keeps a shared machine's numbers meaningful.
    env = {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS), "PYTHONUNBUFFERED": "1"}
    if omp_wait != "default":
        env["OMP_WAIT_POLICY"] = omp_wait.upper()
    return env


def v4_executable(given: str | None) -> Path:
    if given:
        return Path(given)
    exe = Path(sys.executable).with_name("v4")
    return exe if exe.exists() else Path(shutil.which("v4") or "v4")


def v4_serve_available(exe: Path) -> str | None:
    """None when `v4 serve` exists, else why not."""
    try:
        proc = subprocess.run([str(exe), "serve", "--help"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`v4 serve --help` failed: {e}"
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        return f"`v4 serve` is not available yet ({' / '.join(s.strip(' │╭╰─') for s in last)})"
    return None
