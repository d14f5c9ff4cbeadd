"""Zero-copy, memory-mapped reading of safetensors shards, with the file checked against its header.

The `safetensors` library copies each tensor into fresh memory; mapping the file and viewing slices of
it keeps FP8/FP4 weights file-backed, so loading costs about the checkpoint's size, not twice that.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import torch

from ..errors import UserError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class ShardError(UserError, ValueError):
    """A shard whose header cannot be read as safetensors: the message says which file and why."""


class Shard:
    """One .safetensors file: its header (validated) and lazily mapped tensors.

    An unreadable header raises ShardError; damaged entries (a cut-off file, bad offsets) are listed in
    `problems`, and `tensor` must not be called while there are any."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ShardError(f"{self.path.name}: truncated (only {size} bytes)")
                (n,) = struct.unpack("<Q", head)
                if n > _MAX_HEADER or 8 + n > size:
                    raise ShardError(f"{self.path.name}: header length {n} does not fit in a {size}-byte file "
                                     "(truncated or not a safetensors file)")
                header = json.loads(f.read(n))
        except OSError as e:
            raise ShardError(f"{self.path.name}: cannot read ({e.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ShardError(f"{self.path.name}: header is not valid JSON (corrupt file)") from None
        if not isinstance(header, dict):
            raise ShardError(f"{self.path.name}: header is not a JSON object (corrupt file)")
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self.entries: dict[str, tuple[str, list[int], int, int]] = {}
        # Problems of single entries, kept (not raised) so a caller can still describe the rest of the file.
        # A cut-off file is one problem however many tensors lie past its end.
        self.problems: list[str] = []
        cut, need = 0, 0
        for name, info in header.items():
            try:
                dtype, shape, (lo, hi) = info["dtype"], list(info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                self.problems.append(f"{name}: malformed header entry")
                continue
            if dtype not in DTYPES:
                self.problems.append(f"{name}: unsupported dtype {dtype}")
                continue
            numel = 1
            for s in shape:
                numel *= s
            itemsize = torch.empty(0, dtype=DTYPES[dtype]).element_size()
            if hi - lo != numel * itemsize or lo < 0:
                self.problems.append(f"{name}: data_offsets {lo}..{hi} do not match shape {shape} x {dtype}")
                continue
            if self.data_start + hi > size:
                cut, need = cut + 1, max(need, self.data_start + hi)
            self.entries[name] = (dtype, shape, lo, hi)
        if cut:
            self.problems.insert(0, f"truncated: {size:,} of {need:,} bytes present ({cut} of {len(self.entries)} "
                                 "tensors cut off)")
        self._map: mmap.mmap | None = None

    def names(self) -> list[str]:
        return list(self.entries)

    def dtype_name(self, name: str) -> str:
        return self.entries[name][0]

    def shape(self, name: str) -> list[int]:
        return self.entries[name][1]

    def tensor(self, name: str) -> torch.Tensor:
        """A CPU tensor viewing the mapped file (private copy-on-write mapping: the file is never written)."""
        dtype, shape, lo, hi = self.entries[name]
        tdtype = DTYPES[dtype]
        if hi == lo:
            return torch.empty(shape, dtype=tdtype)
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        count = (hi - lo) // torch.empty(0, dtype=tdtype).element_size()
        flat = torch.frombuffer(self._map, dtype=tdtype, count=count, offset=self.data_start + lo)
        return flat.view(shape)
