"""Decode-state snapshots keyed by the hash of a token prefix, in RAM and on disk.

A V4 decode state is small (the window ring, the compressed entries, the indexer keys and a few rows
of compressor tails), so a whole prefix fits in one file: `v4 ask` reuses everything before the
question, and the server reports the reused tokens as `prompt_cache_hit_tokens`.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .args import ModelArgs
from .cache import SeqState


class PrefixCache:
    """Longest-prefix lookup over stored snapshots. RAM is an LRU of `ram_bytes`; disk (optional) keeps
    `disk_bytes` of the most recently used snapshots under `disk_dir/<model key>/`."""

    def __init__(self, args: ModelArgs, model_key: str, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", ram_bytes: int = 1 << 30, disk_dir: Path | None = None,
                 disk_bytes: int = 16 << 30, min_tokens: int = 32) -> None:
        self.args, self.key, self.dtype, self.device = args, model_key, dtype, device
        self.ram_bytes, self.disk_bytes, self.min_tokens = ram_bytes, disk_bytes, min_tokens
        self.ram: OrderedDict[str, tuple[int, SeqState]] = OrderedDict()
        self.disk = Path(disk_dir) / model_key[:16] if disk_dir else None
        self.on_disk: dict[str, int] = {}  # hash -> prefix length
        self.disk_error: str | None = None  # why writing to disk stopped, if it did
        if self.disk is not None and self.disk.is_dir():
            for f in self.disk.glob("*.safetensors"):
                try:
                    with safe_open(str(f), "pt") as fh:
                        meta = fh.metadata() or {}
                except Exception:  # a damaged file is just not a cache entry
                    f.unlink(missing_ok=True)
                    continue
                if meta.get("model") == model_key:
                    self.on_disk[f.stem] = int(meta["length"])

    def _hashes(self, tokens: Sequence[int], lengths: list[int], salt: str = "") -> dict[int, str]:
        """Hash of tokens[:L] for each L, in one pass over the tokens. `salt` isolates one user's entries
        from another's (the server's `user` field): the same tokens under another salt never match."""
        h = hashlib.sha256(f"{self.key}\0{salt}".encode() if salt else self.key.encode())
        out, done = {}, 0
        for L in sorted(set(lengths)):
            h.update(array("i", tokens[done:L]).tobytes())
            done = L
            out[L] = h.copy().hexdigest()
        return out

    def lookup(self, tokens: Sequence[int], salt: str = "") -> tuple[int, SeqState | None]:
        """(n, state) for the longest stored prefix of `tokens` (state is a private copy), or (0, None)."""
        lengths = {L for L, _ in self.ram.values()} | set(self.on_disk.values())
        candidates = [L for L in lengths if len(tokens) >= L]
        if not candidates:
            return 0, None
        hashes = self._hashes(tokens, candidates, salt)
        for L in sorted(candidates, reverse=True):
            h = hashes[L]
            if h in self.ram:
                self.ram.move_to_end(h)
                return L, self._to_device(self.ram[h][1])
            if h in self.on_disk and self.disk is not None:
                state = self._read(self.disk / f"{h}.safetensors")
                if state is not None and state.pos == L:
                    self._remember(h, L, state)
                    return L, self._to_device(state)
        return 0, None

    def store(self, tokens: Sequence[int], state: SeqState, salt: str = "") -> None:
        """Keep a copy of `state`, which must have processed exactly `tokens`."""
        if state.pos != len(tokens):
            raise ValueError(f"the state has processed {state.pos} tokens, not the {len(tokens)} given")
        if len(tokens) < self.min_tokens:
            return
        h = self._hashes(tokens, [len(tokens)], salt)[len(tokens)]
        if h in self.ram:
            return
        snap = self._in_ram(state)
        self._remember(h, len(tokens), snap)
        if self.disk is not None and h not in self.on_disk:
            try:
                self._write(h, len(tokens), snap)
            except (OSError, SafetensorError) as e:  # optional: an unwritable folder, a full disk: RAM only now
                self.disk, self.disk_error = None, str(getattr(e, "strerror", None) or e)

    def _in_ram(self, state: SeqState) -> SeqState:
        """A private copy in host memory: on a GPU, snapshots would take the device memory the plan gave to
        weights and running sequences."""
        if torch.device(self.device).type == "cpu":
            return state.snapshot()
        return SeqState.from_tensors(self.args, {k: v.to("cpu") for k, v in state.tensors().items()}, self.dtype)

    def _to_device(self, state: SeqState) -> SeqState:
        """A private copy of a stored snapshot where the model runs."""
        if torch.device(self.device).type == "cpu":
            return state.snapshot()
        return SeqState.from_tensors(self.args, state.tensors(), self.dtype, self.device)

    def _remember(self, h: str, length: int, state: SeqState) -> None:
        self.ram[h] = (length, state)
        while len(self.ram) > 1 and sum(s.nbytes() for _, s in self.ram.values()) > self.ram_bytes:
            self.ram.popitem(last=False)

    def _write(self, h: str, length: int, state: SeqState) -> None:
        self.disk.mkdir(parents=True, exist_ok=True)
        tmp = self.disk / f".{h}.{os.getpid()}.tmp"
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.tensors().items()}
        save_file(tensors, str(tmp), metadata={"model": self.key, "length": str(length)})
        tmp.replace(self.disk / f"{h}.safetensors")  # atomic: readers never see half a file
        self.on_disk[h] = length
        self._trim_disk()

    def _read(self, path: Path) -> SeqState | None:
        try:
            with safe_open(str(path), "pt") as fh:
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no iterator
            os.utime(path)  # most recently used
            return SeqState.from_tensors(self.args, tensors, self.dtype)  # in host memory, as the RAM entries
        except Exception:  # unreadable or from another layout: drop it and recompute
            path.unlink(missing_ok=True)
            self.on_disk.pop(path.stem, None)
            return None

    def _trim_disk(self) -> None:
        files = sorted(self.disk.glob("*.safetensors"), key=lambda f: f.stat().st_mtime)
        total = sum(f.stat().st_size for f in files)
        while files and total > self.disk_bytes:
            f = files.pop(0)
            total -= f.stat().st_size
            f.unlink(missing_ok=True)
            self.on_disk.pop(f.stem, None)


def model_key(path: Path, simulate_quant: bool, dtype: torch.dtype) -> str:
    """Identity of a loaded model for cache keys: its config, its shard sizes and how it is run."""
    h = hashlib.sha256()
    h.update((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}".encode())
    h.update(f"{simulate_quant}:{dtype}".encode())
    return h.hexdigest()
