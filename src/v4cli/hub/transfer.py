"""Moving a model's files from the Hub into the HF cache so that a stopped pull continues where it stopped.

huggingface_hub (2.4) downloads each file into a temporary file unique to its process and deletes it when
the transfer fails: a pull stopped by Ctrl-C, a lost connection or a reboot started every unfinished file
from zero (only the retries inside one call resumed), and a V4 shard is 3.5 GB. So v4 moves the bytes
itself: each file goes to `blobs/<etag>.incomplete` in the cache (the name huggingface_hub 0.x resumed
from), appended to with a `Range: bytes=<size on disk>-` request, under huggingface_hub's own lock for that
blob, and is renamed to `blobs/<etag>` once complete. `snapshot_download` then finds every blob present
and only links the snapshot and writes the refs, as for any cached file.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.file_download import http_get, repo_folder_name
from huggingface_hub.utils import WeakFileLock, build_hf_headers, tqdm

from .env import cache_dir, endpoint
from .errors import PullError

Progress = Callable[[int, int], None]  # (bytes on disk, bytes of the whole pull)
WORKERS = 8  # files in flight at once, as huggingface_hub's snapshot_download


@dataclass
class Blob:
    """One file of a pull: where it comes from and where its bytes go in the cache."""

    filename: str
    url: str
    etag: str
    size: int
    path: Path  # blobs/<etag>
    lock: Path

    @property
    def partial(self) -> Path:
        return self.path.with_name(self.etag + ".incomplete")

    @property
    def have(self) -> int:
        """Bytes already on disk: the whole file, what a stopped pull left, or none."""
        if self.path.exists():
            return self.size
        try:
            got = self.partial.stat().st_size
        except FileNotFoundError:
            return 0
        return got if got <= self.size else 0  # longer than the file: not ours to continue, start over


def blobs(repo: str, files: Iterable[tuple[str, str]], token: str | None) -> list[Blob]:
    """The cache blob of each (filename, commit) to download, from one HEAD request each (etag and size)."""
    storage = cache_dir() / repo_folder_name(repo_id=repo, repo_type="model")
    locks = cache_dir() / ".locks" / repo_folder_name(repo_id=repo, repo_type="model")
    out = []
    for filename, commit in files:
        url = hf_hub_url(repo, filename, revision=commit, endpoint=endpoint())
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint())
        if meta.etag is None or meta.size is None:
            raise PullError(f"{endpoint()} gave no ETag or size for {filename}: it does not look like a Hub")
        etag = meta.etag
        out.append(Blob(filename, url, etag, meta.size, storage / "blobs" / etag, locks / f"{etag}.lock"))
    return out


class _Counter:
    """Bytes on disk across every file of a pull, reported to the CLI's progress callback."""

    def __init__(self, callback: Progress | None, done: int, total: int) -> None:
        self.callback, self.done, self.total, self.lock = callback, done, total, threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:  # download threads share the counter; the callback runs on them, one at a time
            self.done += n
            if self.callback is not None:
                self.callback(min(self.done, self.total), self.total)


def silent_bar(counter: _Counter | None = None) -> type[tqdm]:
    """A tqdm class that draws nothing (the CLI draws its own) and feeds `counter` the bytes it is told of."""

    class Bar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if counter is not None:
                counter.add(int(n or 0))
            return None

        def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:  # rate text: nothing to show
            return None

        @property
        def format_dict(self) -> dict[str, Any]:  # a disabled bar has no timing state
            return {"rate": None}

    return Bar


def _fetch(blob: Blob, headers: dict[str, str], bar: type[tqdm]) -> None:
    blob.path.parent.mkdir(parents=True, exist_ok=True)
    blob.lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(str(blob.lock)):  # huggingface_hub's lock for this blob: one writer per blob
        if blob.path.exists():
            return
        have = blob.have
        # r+b, not append: when a server ignores the Range, http_get rewinds and truncates the file
        with open(blob.partial, "r+b" if have else "wb") as f:
            f.truncate(have)
            f.seek(have)
            http_get(blob.url, f, resume_size=have, headers=headers, expected_size=blob.size,
                     displayed_filename=blob.filename, tqdm_class=bar)
        os.replace(blob.partial, blob.path)


def fetch(todo: list[Blob], token: str | None, progress: Progress | None) -> None:
    """Download every blob not yet complete, WORKERS at a time, continuing partial files; the first
    failure is raised once every other file has finished (what finished stays)."""
    counter = _Counter(progress, sum(b.have for b in todo), sum(b.size for b in todo))
    headers, bar = build_hf_headers(token=token), silent_bar(counter)
    queue, lock, errors = list(todo), threading.Lock(), []

    def work() -> None:
        while True:
            with lock:
                if not queue:
                    return
                blob = queue.pop(0)
            try:
                _fetch(blob, headers, bar)
            except Exception as e:  # reported by the main thread after the others finish
                errors.append(e)

    # daemon threads: Ctrl-C ends the process at once; what reached the partial files stays for the next pull
    threads = [threading.Thread(target=work, daemon=True) for _ in range(min(WORKERS, len(todo)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
