"""Shared-KV attention with a sliding window, plus CSA or HCA compressed entries (§2.3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import ops, quant
from ..args import ModelArgs
from ..cache import LayerState
from .compressor import Compressor, Indexer
from .linear import Linear, RMSNorm, rms_unweighted
from .rope import Rope

_ROPES: dict[tuple, Rope] = {}
_RING_IDX: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def make_rope(args: ModelArgs, ratio: int) -> Rope:
    """Window-only layers (and MTP) use base rope_theta without YaRN; compressed layers the YaRN table. One Rope
    per table, shared by the layers that use it, so a step computes its angles once per table, not per layer."""
    base, yarn = (args.compress_rope_theta, args.yarn) if ratio else (args.rope_theta, None)
    key = (args.qk_rope_head_dim, base, tuple(sorted(yarn.items())) if yarn else None)
    rope = _ROPES.get(key)
    if rope is None:
        rope = _ROPES[key] = Rope(args.qk_rope_head_dim, base, yarn)
    return rope


def _ring_idx(window: int, start: int, dev: torch.device) -> torch.Tensor:
    """[1, W]: the ring slots of positions start-W+1 .. start in that order (a full ring, one query)."""
    key = (window, start % window, dev)
    idx = _RING_IDX.get(key)
    if idx is None:
        idx = _RING_IDX[key] = (torch.arange(start - window + 1, start + 1, device=dev) % window).unsqueeze(0)
    return idx


class Attention(nn.Module):
    GATHER_EACH = 8  # up to this many query rows gather their picked entries without deduplicating them
    def __init__(self, args: ModelArgs, ratio: int, simulate_quant: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.args, self.ratio, self.simulate_quant = args, ratio, simulate_quant
        self.n_heads, self.head_dim, self.window = args.num_attention_heads, args.head_dim, args.sliding_window
        self.groups, self.o_rank = args.o_groups, args.o_lora_rank
        self.eps = args.rms_norm_eps
        self.rope = make_rope(args, ratio)
        fmt = "fp8" if args.fp8_weights else "float"
        D, H = args.hidden_size, self.n_heads

        def lin(i: int, o: int) -> Linear:
            return Linear(i, o, fmt, dtype, act_quant=simulate_quant)

        self.wq_a = lin(D, args.q_lora_rank)
        self.q_norm = RMSNorm(args.q_lora_rank, self.eps)
        self.wq_b = lin(args.q_lora_rank, H * self.head_dim)
        self.wkv = lin(D, self.head_dim)
        self.kv_norm = RMSNorm(self.head_dim, self.eps)
        self.wo_a = lin(H * self.head_dim // self.groups, self.groups * self.o_rank)
        self.wo_b = lin(self.groups * self.o_rank, D)
        self.register_buffer("attn_sink", torch.zeros(H, dtype=torch.float32))
        self._wo_a_groups: tuple[int, list[tuple[torch.Tensor, torch.Tensor | None]]] | None = None
        self._win_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        self.compressor = self.indexer = None
        if ratio:
            self.compressor = Compressor(D, self.head_dim, ratio, self.rope, self.eps, simulate_quant)
            if ratio == 4:
                self.indexer = Indexer(D, args.q_lora_rank, args.index_n_heads, args.index_head_dim,
                                       args.index_topk, ratio, self.rope, self.eps, args.fp8_weights, simulate_quant,
                                       dtype)

    def forward(self, x: torch.Tensor, segments: Sequence[tuple[int, LayerState, int]]) -> torch.Tensor:
        """x [T, D] (normalised): the rows of several sequences, each (start, state, length) continuing its
        sequence at `start`; updates every state. The projections and the attention run once for all rows;
        only the per-sequence state updates (ring, compressor, indexer) loop over the sequences."""
        T, dev = x.shape[0], x.device
        if len(segments) == 1:
            cs = self.rope.angles_at(segments[0][0], T, dev)
        else:
            cs = self.rope.angles(torch.cat([torch.arange(start, start + n, device=dev) for start, _, n in segments]))
        qr = self.q_norm(self.wq_a(x))
        q = rms_unweighted(self.wq_b(qr).view(T, self.n_heads, self.head_dim), self.eps)
        q = self.rope.apply(q, cs)
        kv = self.rope.apply(self.kv_norm(self.wkv(x)), cs)
        if self.simulate_quant:
            nope = self.head_dim - self.rope.dim
            kv = ops.fp8_round(kv, 64, nope)

        scale, hca = self.head_dim**-0.5, self.ratio and self.indexer is None
        keys, idxs, outs, off, row = [], [], [], 0, 0
        for start, st, n in segments:
            rows = slice(row, row + n)
            if n == T:  # one sequence (the common decode step): no slicing
                k, idx, dense, limit = self._candidates(x, qr, kv, cs, start, st)
            else:
                k, idx, dense, limit = self._candidates(x[rows], qr[rows], kv[rows], (cs[0][rows], cs[1][rows]),
                                                        start, st)
            row += n
            if hca:  # each sequence's compressed entries are read in place: a call per sequence
                outs.append(ops.sparse_attention(q[rows], k, self.attn_sink, idx, scale, dense, limit))
                continue
            keys.append(k)
            idxs.append(torch.where(idx >= 0, idx + off, -1))  # rows of this sequence's keys in the joint list
            off += k.shape[0]
        if hca:
            o = outs[0] if len(outs) == 1 else torch.cat(outs)
        else:  # window and CSA layers: one call for every sequence, over the joint candidate list
            width = max(i.shape[1] for i in idxs)
            idx = torch.cat([torch.nn.functional.pad(i, (0, width - i.shape[1]), value=-1) for i in idxs])
            o = ops.sparse_attention(q, keys[0] if len(keys) == 1 else torch.cat(keys), self.attn_sink, idx, scale)
        o = self.rope.apply(o, cs, inverse=True)
        return self._project_out(o)

    def _candidates(self, x: torch.Tensor, qr: torch.Tensor, kv: torch.Tensor, cs: tuple[torch.Tensor, torch.Tensor],
                    start: int, st: LayerState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                         torch.Tensor | None]:
        """One sequence's S rows: (keys, idx [S, K] into them, HCA dense entries, their limits); advances `st`."""
        S, W, dev = x.shape[0], self.window, x.device
        # Window candidates: the up-to W-1 earlier tokens still in the ring, then this chunk.
        if S == 1 and start >= W - 1 and st.ring.dtype == kv.dtype:
            # A decode step: the ring itself once the token is written (over the one leaving the window), the
            # same candidates in the same order as the copy below, without the copy.
            self._write_ring(st, kv, start)
            keys, idx = st.ring, _ring_idx(W, start, dev)
        else:
            n_prev = min(start, W - 1)
            prev = [st.ring[a:b] for a, b in _ring_spans(start - n_prev, n_prev, W)]
            keys = torch.cat([p if p.dtype == kv.dtype else p.to(kv.dtype) for p in prev] + [kv])
            idx = self._window_idx(S, n_prev, dev)
            self._write_ring(st, kv, start)

        dense = limit = None
        if self.ratio:
            self.compressor(x, start, st.comp)
            entries = st.comp.entries.view()
            if self.indexer is not None:
                picks = self.indexer(x, qr, start, cs, st.index)
                # Gather only the entries some query picked, not all ctx/4 of them: at decode each query's picks
                # as they are (no host sync, which a GPU would wait on), in a prefill chunk each entry once.
                if S <= self.GATHER_EACH:
                    used, remap = picks.clamp_min(0).flatten(), self._pick_slots(S, picks.shape[1], dev)
                else:
                    used, remap = torch.unique(picks.clamp_min(0), return_inverse=True)
                idx = torch.cat([idx, torch.where(picks >= 0, remap + keys.shape[0], -1)], dim=1)
                keys = torch.cat([keys, entries[used].to(keys.dtype)])
            else:  # HCA: every closed entry, read in place
                dense = entries.to(keys.dtype)
                limit = (torch.arange(start, start + S, device=dev) + 1) // self.ratio
        return keys, idx, dense, limit

    def _pick_slots(self, S: int, k: int, dev: torch.device) -> torch.Tensor:
        """[S, k]: where each query's picks land in the gathered list (s * k + j); kept once k is the full
        top-k (before that, k grows with the context)."""
        key = (-S, k, dev)  # beside the window's shapes in one cache (negative S: another kind of entry)
        slots = self._win_cache.get(key)
        if slots is None:
            slots = torch.arange(S * k, device=dev).view(S, k)
            if self.indexer is not None and k == self.indexer.topk:
                self._win_cache[key] = slots
        return slots

    def _window_idx(self, S: int, n_prev: int, dev: torch.device) -> torch.Tensor:
        """Row s sees keys s + n_prev - W + 1 .. s + n_prev of [ring tokens, chunk] (-1 before the first). Once
        the ring is full the same few shapes recur at every decode step, so those are made once."""
        key = (S, n_prev, dev)
        idx = self._win_cache.get(key)
        if idx is None:
            W = self.window
            win = torch.arange(S, device=dev).unsqueeze(1) + n_prev - W + 1 + torch.arange(W, device=dev)
            idx = win.masked_fill(win < 0, -1)
            if S <= 64 and n_prev == W - 1:  # decode and verify steps once the ring is full: a few shapes
                self._win_cache[key] = idx
        return idx

    def _write_ring(self, st: LayerState, kv: torch.Tensor, start: int) -> None:
        keep = min(kv.shape[0], self.window)
        src = kv.shape[0] - keep
        for a, b in _ring_spans(start + src, keep, self.window):  # copy_ casts to the ring's dtype
            st.ring[a:b] = kv[src : src + b - a]
            src += b - a

    def _project_out(self, o: torch.Tensor) -> torch.Tensor:
        """Grouped low-rank output: per group wo_a[g] . concat(heads of g), then wo_b over all groups."""
        S = o.shape[0]
        grouped = o.reshape(S, self.groups, -1)
        groups = self._groups()
        if groups[0][1] is not None:  # FP8 groups of whole scale tiles: no input rounding, as the reference
            z = torch.stack([ops.fp8_linear(grouped[:, g], w, sc, False) for g, (w, sc) in enumerate(groups)], 1)
        else:
            # dense_linear, not a batched matmul: a row's product must not depend on the other rows (float32 x:
            # the product is float32 whatever the weight's dtype)
            xf = grouped.float()
            z = torch.stack([ops.dense_linear(xf[:, g], w) for g, (w, _) in enumerate(groups)], 1).to(o.dtype)
        return self.wo_b(z.flatten(1))

    def _groups(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """wo_a per output group, made once per load. Where each group's rows are whole scale tiles (the real
        models: 1024 rows): (FP8 rows, their scale rows), one FP8 linear each through the seam, so a decode step
        never dequantizes the whole of wo_a. Ragged tiles (small test models only): (the dequantized rows, None);
        the reference keeps wo_a dequantized, and e4m3 times a power of two is exact in BF16 (half float32's bytes)."""
        wo_a, r = self.wo_a, self.o_rank
        key = wo_a.weight.data_ptr()
        if self._wo_a_groups is None or self._wo_a_groups[0] != key:
            if wo_a.fmt == "fp8" and r % quant.WEIGHT_BLOCK == 0:
                t = r // quant.WEIGHT_BLOCK
                groups = [(wo_a.weight[g * r:(g + 1) * r], wo_a.scale[g * t:(g + 1) * t]) for g in range(self.groups)]
            else:
                dense = wo_a.dense()
                dense = dense.bfloat16() if wo_a.fmt == "fp8" else dense
                groups = [(dense[g * r:(g + 1) * r], None) for g in range(self.groups)]
            self._wo_a_groups = (key, groups)
        return self._wo_a_groups[1]


def _ring_spans(first: int, count: int, window: int) -> list[tuple[int, int]]:
    """The ring slots of positions first..first+count-1 (count <= window) as at most two [a, b) spans, in order."""
    if count <= 0:
        return []
    a = first % window
    if a + count <= window:
        return [(a, a + count)]
    return [(a, window), (0, a + count - window)]
