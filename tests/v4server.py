"""A real `v4 serve` in a subprocess on a loopback port, for the server tests (clients talk to it over
HTTP exactly as they would to DeepSeek's API)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from v4cli.bench.local import stop

WORDS = ("alpha", "beta", "gamma", "delta", "kernel", "tensor", "shard", "prompt", "cache", "window", "expert",
         "router", "token", "stream")


def words(n: int, seed: int = 0) -> str:
    """`n` random words (about n tokens), the same for the same seed."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class V4Server:
    """`with V4Server(home, "--max-batch", "4") as srv:` -> srv.url (http://127.0.0.1:PORT), srv.log()."""

    def __init__(self, home: Path, *args: str, model: str = "tiny", env: dict[str, str] | None = None,
                 timeout: float = 180) -> None:
        self.home, self.args, self.model, self.timeout = home, list(args), model, timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / f"serve-{self.port}.log"
        # The server's own defaults: the C++ kernels on (the suite itself runs on the twins).
        self.env = {k: v for k, v in os.environ.items() if k != "V4_KERNELS"} | {"V4_HOME": str(home)} | (env or {})

    def __enter__(self) -> V4Server:
        self.log_file = open(self.log_path, "w")  # noqa: SIM115 - closed in __exit__
        cmd = [sys.executable, "-m", "v4cli.cli", "serve", "--model", self.model, "--port", str(self.port),
               *self.args]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"v4 serve exited with {self.proc.returncode}:\n{self.log()}")
            if self.health() == 200:
                return self
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"v4 serve did not become healthy in {self.timeout} s:\n{self.log()}")

    def health(self) -> int | None:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)
        self.log_file.close()
