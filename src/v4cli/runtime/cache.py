"""Per-sequence decode state (architecture.md §3): not a KV cache but a small, mostly constant state.

For every layer: the window ring of the last W kv vectors; for CSA/HCA layers the append-only
compressed entries and the raw (a, z) rows of the window still filling; for CSA also the rows of the
last closed window (their A-halves feed the next entry) and the same again for the indexer keys.
A state can be snapshotted at any token and restored (that is what the prefix cache stores).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .args import ModelArgs


class Rows:
    """An append-only [N, d] tensor with amortised O(1) appends (capacity grows by a quarter).

    `limit`: the rows this sequence is expected to reach (prompt + max_tokens); growth stops there, so
    the allocation stays within the memory plan's figure instead of up to a quarter above it."""

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        self._buf = torch.empty(0, dim, dtype=dtype, device=device)
        self.n = 0
        self.limit: int | None = None

    @property
    def capacity(self) -> int:
        return self._buf.shape[0]

    def append(self, rows: torch.Tensor) -> None:
        need = self.n + rows.shape[0]
        if need > self._buf.shape[0]:
            grow = max(self._buf.shape[0] * 5 // 4, 64)  # 1.25x: at most a quarter unused at 1M tokens
            cap = max(need, min(grow, self.limit) if self.limit else grow)
            grown = torch.empty(cap, self._buf.shape[1], dtype=self._buf.dtype, device=self._buf.device)
            grown[: self.n] = self._buf[: self.n]
            self._buf = grown
        self._buf[self.n : need] = rows.to(self._buf.dtype)
        self.n = need

    def view(self) -> torch.Tensor:
        return self._buf[: self.n]

    def truncate(self, n: int) -> None:
        self.n = min(self.n, n)

    def nbytes(self) -> int:
        return self.n * self._buf.shape[1] * self._buf.element_size()

    def __deepcopy__(self, memo: dict) -> Rows:
        out = Rows.__new__(Rows)
        out._buf, out.n, out.limit = self._buf[: self.n].clone(), self.n, self.limit
        return out


@dataclass
class CompressorState:
    """Pooling state of one compressor (main: d = head_dim; indexer: d = index_head_dim)."""

    tail_kv: torch.Tensor  # [r < m, c*d] raw a_t of the open window, FP32
    tail_score: torch.Tensor  # [r < m, c*d] z_t + ape, FP32
    prev_kv: torch.Tensor | None  # CSA: [m, 2d] rows of the last closed window (None before the first)
    prev_score: torch.Tensor | None
    entries: Rows  # [N, d] closed compressed entries, already rounded as the reference stores them


@dataclass
class LayerState:
    ring: torch.Tensor  # [W, head_dim]; the kv of position p lives in slot p % W
    comp: CompressorState | None = None
    index: CompressorState | None = None


@dataclass
class Mark:
    pos: int
    mtp_pos: int
    layers: list


@dataclass
class SeqState:
    """Everything one sequence needs to continue: `pos` tokens have been processed."""

    layers: list[LayerState]
    mtp: list[LayerState]
    pos: int = 0  # tokens the main layers have processed
    mtp_pos: int = 0  # positions the MTP block has processed (it trails the main model by one)

    @classmethod
    def new(cls, args: ModelArgs, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> SeqState:
        def layer(ratio: int) -> LayerState:
            st = LayerState(ring=torch.zeros(args.sliding_window, args.head_dim, dtype=dtype, device=device))
            if ratio:
                st.comp = _compressor_state(ratio, args.head_dim, dtype, device)
                if ratio == 4:
                    st.index = _compressor_state(ratio, args.index_head_dim, dtype, device)
            return st

        n = args.num_hidden_layers
        return cls(layers=[layer(args.compress_ratios[i]) for i in range(n)],
                   mtp=[layer(0) for _ in range(args.num_nextn_predict_layers)])

    def reserve(self, args: ModelArgs, tokens: int) -> None:
        """Cap each compressed-entry buffer's growth at what `tokens` positions produce."""
        for ratio, st in zip(args.compress_ratios, self.layers, strict=False):
            for comp in (st.comp, st.index):
                if comp is not None:
                    comp.entries.limit = tokens // ratio

    def snapshot(self) -> SeqState:
        return copy.deepcopy(self)

    def mark(self, ahead: int) -> Mark:
        """A cheap undo point before running up to `ahead` more tokens (speculative verification).

        Compressor tails are replaced, never mutated, by a forward call, so keeping references is
        enough; ring slots are overwritten in place, so the ones the next tokens will hit are copied.
        """
        layers = []
        for st, pos in [(st, self.pos) for st in self.layers] + [(st, self.mtp_pos) for st in self.mtp]:
            W = st.ring.shape[0]
            slots = torch.arange(pos, pos + min(ahead, W), device=st.ring.device) % W
            comps = tuple(None if c is None else (c.tail_kv, c.tail_score, c.prev_kv, c.prev_score, c.entries.n)
                          for c in (st.comp, st.index))
            layers.append((slots, st.ring[slots].clone(), comps))
        return Mark(self.pos, self.mtp_pos, layers)

    def rollback(self, mark: Mark) -> None:
        """Undo everything since `mark` (the main layers and the MTP block alike)."""
        for st, (slots, rows, comps) in zip(self.layers + self.mtp, mark.layers, strict=True):
            st.ring[slots] = rows
            for c, saved in zip((st.comp, st.index), comps, strict=True):
                if c is not None:
                    c.tail_kv, c.tail_score, c.prev_kv, c.prev_score, n = saved
                    c.entries.truncate(n)
        self.pos, self.mtp_pos = mark.pos, mark.mtp_pos

    def tensors(self) -> dict[str, torch.Tensor]:
        """A flat name -> tensor view of the whole state (for saving; `from_tensors` reverses it)."""
        out = {"pos": torch.tensor([self.pos, self.mtp_pos], dtype=torch.int64)}
        for prefix, st in _named_layers(self):
            out[f"{prefix}.ring"] = st.ring
            for kind, c in (("comp", st.comp), ("index", st.index)):
                if c is None:
                    continue
                out[f"{prefix}.{kind}.tail_kv"], out[f"{prefix}.{kind}.tail_score"] = c.tail_kv, c.tail_score
                out[f"{prefix}.{kind}.entries"] = c.entries.view()
                if c.prev_kv is not None:
                    out[f"{prefix}.{kind}.prev_kv"], out[f"{prefix}.{kind}.prev_score"] = c.prev_kv, c.prev_score
        return out

    @classmethod
    def from_tensors(cls, args: ModelArgs, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> SeqState:
        state = cls.new(args, dtype, device)
        state.pos, state.mtp_pos = (int(v) for v in tensors["pos"].tolist())
        for prefix, st in _named_layers(state):
            st.ring = tensors[f"{prefix}.ring"].to(device=device, dtype=dtype).clone()
            for kind, c in (("comp", st.comp), ("index", st.index)):
                if c is None:
                    continue
                c.tail_kv = tensors[f"{prefix}.{kind}.tail_kv"].to(device).clone()
                c.tail_score = tensors[f"{prefix}.{kind}.tail_score"].to(device).clone()
                c.entries.append(tensors[f"{prefix}.{kind}.entries"].to(device))
                if f"{prefix}.{kind}.prev_kv" in tensors:
                    c.prev_kv = tensors[f"{prefix}.{kind}.prev_kv"].to(device).clone()
                    c.prev_score = tensors[f"{prefix}.{kind}.prev_score"].to(device).clone()
        return state

    def nbytes(self) -> int:
        """Bytes of the state in use (compressed entries counted as filled, not as allocated)."""
        return sum(t.numel() * t.element_size() for name, t in self.tensors().items() if name != "pos")


def _named_layers(state: SeqState) -> list[tuple[str, LayerState]]:
    return [(f"layers.{i}", st) for i, st in enumerate(state.layers)] + [
        (f"mtp.{i}", st) for i, st in enumerate(state.mtp)]


def _compressor_state(ratio: int, d: int, dtype: torch.dtype, device: torch.device | str) -> CompressorState:
    width = (2 if ratio == 4 else 1) * d
    empty = torch.empty(0, width, dtype=torch.float32, device=device)
    return CompressorState(tail_kv=empty, tail_score=empty.clone(), prev_kv=None, prev_score=None,
                           entries=Rows(d, dtype, device))
