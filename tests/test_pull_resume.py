"""A pull stopped mid-file (Ctrl-C, a kill) and run again continues that file: against the loopback hub, the
second pull asks only for the bytes after what is on disk, and the result verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from huggingface_hub import constants, file_download

from hubserver import FakeHub
from v4cli import hub

REPO = "deepseek-ai/DeepSeek-V4-Flash"
SHARD = "model-00002-of-00003.safetensors"
# small chunks so half a shard reaches the disk before the transfer stalls (the default is 10 MB)
PULL = ("import sys; from huggingface_hub import constants; constants.DOWNLOAD_CHUNK_SIZE = 64 * 1024; "
        "from v4cli.cli import app; sys.argv[0] = 'v4'; app()")


@pytest.fixture
def fake(ckpt_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with FakeHub() as h:
        h.add(REPO, ckpt_dir("flash"))
        env = {"HF_ENDPOINT": h.url, "HF_HUB_CACHE": str(tmp_path / "hf"), "V4_HOME": str(tmp_path / "v4")}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HOME"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(file_download, "time", types.SimpleNamespace(sleep=lambda s: None))
        yield h


def _partial(tmp_path: Path, fake: FakeHub) -> Path:
    etag = fake.repos[REPO].etag(SHARD)
    return tmp_path / "hf" / "models--deepseek-ai--DeepSeek-V4-Flash" / "blobs" / f"{etag}.incomplete"


def _stop_mid_file(fake: FakeHub, partial: Path, sig: int) -> subprocess.CompletedProcess:
    """Run `v4 pull flash` in a real process, wait until the stalled shard has bytes on disk, send `sig`."""
    fake.stall.add(SHARD)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # SIGINT as a terminal delivers it: a test run started in the background (`cmd &` in a script) ignores
    # SIGINT, and a Python started that way keeps ignoring it instead of raising KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-c", PULL, "pull", "flash"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline, last, steady = time.monotonic() + 120, -1, 0
    while time.monotonic() < deadline and steady < 5:  # the size on disk stops growing: the stall is reached
        time.sleep(0.1)
        size = partial.stat().st_size if partial.exists() else 0
        steady = steady + 1 if size == last and size > 0 else 0
        last = size
        assert proc.poll() is None, proc.communicate()
    assert steady >= 5, "the shard never reached the disk"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    fake.stall.clear()
    fake.release()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_a_stopped_pull_continues_the_file_it_was_writing(fake: FakeHub, tmp_path: Path, sig: int) -> None:
    partial = _partial(tmp_path, fake)
    first = _stop_mid_file(fake, partial, sig)
    if sig == signal.SIGINT:
        assert first.returncode == 130, first.stderr
        assert "pull interrupted: run `v4 pull flash` again to continue where it stopped" in first.stderr
    else:
        assert first.returncode == -signal.SIGKILL
    data = fake.repos[REPO].files[SHARD]
    kept = partial.stat().st_size
    assert 0 < kept < len(data) and partial.read_bytes() == data[:kept]  # a prefix of the file survived
    assert fake.gets(SHARD) == [None]

    path = hub.pull("flash")
    assert fake.gets(SHARD) == [None, f"bytes={kept}-"]  # the bytes on disk were not fetched again
    assert (path / SHARD).read_bytes() == data and not partial.exists()
    assert hub.verify(path, checksums=True) == []
    for name in fake.repos[REPO].files:  # every other file was finished by the first pull and kept
        assert len(fake.gets(name)) == (2 if name == SHARD else 1), name


def test_a_partial_file_longer_than_the_file_starts_over(fake: FakeHub, tmp_path: Path) -> None:
    partial = _partial(tmp_path, fake)
    partial.parent.mkdir(parents=True)
    data = fake.repos[REPO].files[SHARD]
    partial.write_bytes(b"x" * (len(data) + 10))  # not ours to continue (another revision's leftovers)
    path = hub.pull("flash")
    assert fake.gets(SHARD) == [None] and (path / SHARD).read_bytes() == data
