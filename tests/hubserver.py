"""A loopback-only stand-in for the Hugging Face Hub, enough for `snapshot_download` (huggingface_hub 2.x).

Endpoints (what `HF_ENDPOINT` clients call):
  GET  /api/models/{repo}[/revision/{rev}]      repo info: {"id", "sha", "siblings"}; 404 + X-Error-Code
  GET  /api/models/{repo}/tree/{rev}?recursive  file list: type, path, size, oid (+ lfs {oid, size, pointerSize})
  HEAD /{repo}/resolve/{rev}/{path}             X-Repo-Commit, ETag, X-Linked-Etag/X-Linked-Size (LFS), Content-Length
  GET  /{repo}/resolve/{rev}/{path}             the bytes; `Range: bytes=N-` answered with 206 + Content-Range
Faults: `cut_once` / `cut_always` hold file names whose GET sends half the bytes and then drops the connection;
`stall` holds names whose GET sends half the bytes and then waits (until `release()` or the server stops), so a
client can be stopped mid-file.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    commit: str
    files: dict[str, bytes]

    def etag(self, path: str) -> str:
        data = self.files[path]
        if path.endswith(".safetensors"):  # LFS files: the ETag is the content's sha256, as on the Hub
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()  # git blob id


class LoopbackServer:
    """Serves a handler class on 127.0.0.1 (an ephemeral port) from a daemon thread, for a `with` block."""

    url: str

    def _start(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only, ephemeral port
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@dataclass
class FakeHub(LoopbackServer):
    repos: dict[str, Repo] = field(default_factory=dict)
    cut_once: set[str] = field(default_factory=set)
    cut_always: set[str] = field(default_factory=set)
    stall: set[str] = field(default_factory=set)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)
    released: threading.Event = field(default_factory=threading.Event)
    auth: set[str | None] = field(default_factory=set)  # Authorization headers seen

    def add(self, repo_id: str, folder: Path, commit: str = "a" * 40) -> Repo:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        self.repos[repo_id] = Repo(commit, files)
        return self.repos[repo_id]

    def gets(self, name: str) -> list[str | None]:
        """The Range headers of every GET of file `name` (None: a whole-file request)."""
        return [r for m, p, r in self.log if m == "GET" and "/resolve/" in p and p.endswith("/" + name)]

    def release(self) -> None:
        """Let stalled transfers end (they hang up without sending the rest)."""
        self.released.set()

    def __exit__(self, *exc: object) -> None:
        self.release()
        super().__exit__(*exc)

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, head=True)

            def do_GET(self) -> None:
                hub._serve(self, head=False)

        self._start(Handler)
        return self

    # ---- request handling ------------------------------------------------------------------------------
    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.log.append((h.command, path, h.headers.get("Range")))
        self.auth.add(h.headers.get("Authorization"))
        if path.startswith("/api/models/"):
            return self._api(h, path[len("/api/models/"):])
        parts = path.lstrip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file(h, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
        self._error(h, 404, "EntryNotFound")

    def _repo(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(h, 404, "RepoNotFound")
        elif rev not in ("main", repo.commit):
            self._error(h, 404, "RevisionNotFound")
            return None
        return repo

    def _api(self, h: BaseHTTPRequestHandler, rest: str) -> None:
        parts = rest.split("/")
        repo_id, tail = "/".join(parts[:2]), parts[2:]
        rev = tail[1] if len(tail) >= 2 else "main"
        repo = self._repo(h, repo_id, rev)
        if repo is None:
            return
        if tail[:1] == ["tree"]:
            body = [self._entry(repo, p) for p in repo.files]
        else:
            body = {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                    "siblings": [{"rfilename": p, "size": len(d)} for p, d in repo.files.items()]}
        self._send(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    @staticmethod
    def _entry(repo: Repo, p: str) -> dict:
        e: dict = {"type": "file", "path": p, "size": len(repo.files[p]),
                   "oid": hashlib.sha1(f"blob {len(repo.files[p])}\0".encode() + repo.files[p]).hexdigest()}
        if p.endswith(".safetensors"):
            e["lfs"] = {"oid": repo.etag(p), "size": len(repo.files[p]), "pointerSize": 134}
        return e

    def _file(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, name: str, head: bool) -> None:
        repo = self._repo(h, repo_id, rev)
        if repo is None:
            return
        if name not in repo.files:
            return self._error(h, 404, "EntryNotFound", {"X-Repo-Commit": repo.commit})
        data, etag = repo.files[name], repo.etag(name)
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if name.endswith(".safetensors"):
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        if head:
            return self._send(h, 200, b"", headers, length=len(data))
        start, status = 0, 200
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start, status = int(rng[6:].split("-")[0]), 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        cut = name in self.cut_always or name in self.cut_once
        self.cut_once.discard(name)
        stall = name in self.stall
        if not cut and not stall:
            return self._send(h, status, body, headers)
        h.send_response(status)  # promise the whole body, deliver half, hang up: a dropped connection
        for k, v in {**headers, "Content-Length": str(len(body)), "Connection": "close"}.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body[: len(body) // 2])
        h.wfile.flush()
        if stall:  # the client stops while waiting for the rest
            self.released.wait(60)
        h.close_connection = True

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, extra: dict | None = None) -> None:
        self._send(h, status, json.dumps({"error": code}).encode(), {"X-Error-Code": code, **(extra or {})})

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str],
              length: int | None = None) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
