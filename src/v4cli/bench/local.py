"""`v4 bench --model M`: the local engine measured as any client would see it, through `v4 serve` started
in a child process on a free loopback port (one code path for local and remote endpoints)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[Any], grace: float = 15) -> None:
    """Ask a server to stop (SIGTERM: uvicorn shuts down cleanly), then make it."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class LocalServer:
    """`with LocalServer("flash", context=...) as url:` -> http://127.0.0.1:PORT, ready to answer."""

    def __init__(self, model: str, *, context: int, max_batch: int,
                 wait: Callable[[float], None] | None = None) -> None:
        self.model, self.context, self.max_batch = model, context, max_batch
        self.wait = wait or (lambda elapsed: None)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _health(self) -> tuple[int | None, str | None]:
        """The status of GET /health and, while it is not ready, the load error it reports (if any)."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return int(r.status), None
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read()).get("error")
            except (ValueError, AttributeError):
                return e.code, None
        except OSError:
            return None, None

    def log_tail(self, lines: int = 15) -> str:
        text = Path(self.log.name).read_text(errors="replace") if hasattr(self, "log") else ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def __enter__(self) -> str:
        self.log = tempfile.NamedTemporaryFile("w", prefix="v4-bench-serve-", suffix=".log", delete=False)  # noqa: SIM115
        cmd = [sys.executable, "-m", "v4cli.cli", "serve", "--model", self.model, "--port", str(self.port),
               "--context", str(self.context), "--max-batch", str(self.max_batch)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ))
        t0 = time.monotonic()
        try:
            while True:  # a big model takes minutes to load; the caller shows how long it has been
                if self.proc.poll() is not None:
                    raise UserError(f"v4 serve --model {self.model} exited with {self.proc.returncode}:\n"
                                    f"{self.log_tail()}")
                code, error = self._health()
                if code == 200:
                    return self.url
                if error:  # the server stays up to say why the model did not load
                    raise UserError(f"v4 serve --model {self.model}: {error}")
                self.wait(time.monotonic() - t0)
                time.sleep(0.25)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)
        self.log.close()
        os.unlink(self.log.name)
