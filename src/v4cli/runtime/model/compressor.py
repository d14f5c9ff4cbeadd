"""KV compressors (CSA: ratio 4, overlapped; HCA: ratio 128) and the lightning indexer (§2.5).

Both work on chunks that start at any position: the rows of the window still filling and, for CSA,
the rows of the last closed window live in a `CompressorState` between calls.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..cache import CompressorState
from .linear import Linear, RMSNorm
from .rope import Rope


class Compressor(nn.Module):
    """Gated pooling of every `ratio` tokens into one entry of width `d`.

    `rotate` marks the indexer's compressor: its entries are Hadamard-rotated and FP4-rounded
    instead of FP8-rounded on their non-rope dims.
    """

    def __init__(self, dim: int, d: int, ratio: int, rope: Rope, norm_eps: float, simulate_quant: bool,
                 rotate: bool = False) -> None:
        super().__init__()
        self.d, self.ratio, self.rope, self.rotate = d, ratio, rope, rotate
        self.overlap = ratio == 4
        self.simulate_quant = simulate_quant
        width = (2 if self.overlap else 1) * d
        # The reference runs the compressor in FP32 whatever the model dtype: FP32 inputs here, and the weights as
        # stored (BF16; widening is exact, so the products are the FP32 copies' at half the bytes read).
        self.wkv = Linear(dim, width, "float", torch.bfloat16)
        self.wgate = Linear(dim, width, "float", torch.bfloat16)
        self.register_buffer("ape", torch.zeros(ratio, width, dtype=torch.float32))
        self.norm = RMSNorm(d, norm_eps)

    def forward(self, x: torch.Tensor, start: int, st: CompressorState) -> None:
        """Feed tokens at positions start..start+S-1; append every entry they close to `st.entries`."""
        m, d, S = self.ratio, self.d, x.shape[0]
        xf = x if x.dtype == torch.float32 else x.float()
        a = start % m  # the rows' slots in the window: a slice of ape unless the chunk wraps past a window's end
        ape = self.ape[a : a + S] if a + S <= m else self.ape[torch.arange(start, start + S, device=x.device) % m]
        kv = torch.cat([st.tail_kv, self.wkv(xf)])
        score = torch.cat([st.tail_score, self.wgate(xf) + ape])
        first = start - st.tail_kv.shape[0]  # a multiple of m: rows always start at a window boundary
        n_win = kv.shape[0] // m
        if n_win == 0:  # the window is still open (most decode steps): the new tensors are the tails
            st.tail_kv, st.tail_score = kv, score
            return
        cut = n_win * m
        st.tail_kv, st.tail_score = kv[cut:].clone(), score[cut:].clone()
        kv_w = kv[:cut].view(n_win, m, -1)
        sc_w = score[:cut].view(n_win, m, -1)
        if self.overlap:
            # Entry w pools the A-halves of window w-1 and the B-halves of window w: 2m candidates.
            prev_kv = torch.zeros(n_win, m, d, device=x.device)
            prev_sc = torch.full((n_win, m, d), float("-inf"), device=x.device)
            prev_kv[1:], prev_sc[1:] = kv_w[:-1, :, :d], sc_w[:-1, :, :d]
            if st.prev_kv is not None:
                prev_kv[0], prev_sc[0] = st.prev_kv[:, :d], st.prev_score[:, :d]
            st.prev_kv, st.prev_score = kv_w[-1].clone(), sc_w[-1].clone()
            kv_w = torch.cat([prev_kv, kv_w[:, :, d:]], dim=1)
            sc_w = torch.cat([prev_sc, sc_w[:, :, d:]], dim=1)
        pooled = (kv_w * sc_w.softmax(dim=1)).sum(dim=1)
        entries = self.norm(pooled.to(x.dtype))
        win_pos = first + m * torch.arange(n_win, device=x.device)
        entries = self.rope.apply(entries, self.rope.angles(win_pos))
        if self.simulate_quant:
            if self.rotate:
                entries = ops.fp4_round(ops.hadamard(entries))
            else:
                nope = self.d - self.rope.dim
                entries = ops.fp8_round(entries, 64, nope)
        st.entries.append(entries)


class Indexer(nn.Module):
    """Lightning indexer: scores closed CSA entries for each query and keeps the top `index_topk`."""

    def __init__(self, dim: int, q_lora_rank: int, n_heads: int, head_dim: int, topk: int, ratio: int,
                 rope: Rope, norm_eps: float, fp8: bool, simulate_quant: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.topk, self.ratio = n_heads, head_dim, topk, ratio
        self.rope, self.simulate_quant = rope, simulate_quant
        self.wq_b = Linear(q_lora_rank, n_heads * head_dim, "fp8" if fp8 else "float", dtype, simulate_quant)
        self.weights_proj = Linear(dim, n_heads, "float", dtype)  # BF16 in the reference, like the model
        self.compressor = Compressor(dim, head_dim, ratio, rope, norm_eps, simulate_quant, rotate=True)
        self.weight_scale = head_dim**-0.5 * n_heads**-0.5

    def forward(self, x: torch.Tensor, qr: torch.Tensor, start: int, cs: tuple[torch.Tensor, torch.Tensor],
                st: CompressorState) -> torch.Tensor:
        """Indices [S, k] of the picked entries (-1 where fewer than k are closed), after closing new ones."""
        S = x.shape[0]
        q = self.wq_b(qr).view(S, self.n_heads, self.head_dim)
        q = self.rope.apply(q, cs)
        if self.simulate_quant:
            # The rotation is orthonormal (scores unchanged in exact arithmetic); it exists for FP4 fidelity.
            q = ops.fp4_round(ops.hadamard(q))
        self.compressor(x, start, st)
        keys = st.entries.view()
        n = keys.shape[0]
        if n == 0:
            return torch.empty(S, 0, dtype=torch.long, device=x.device)
        weights = self.weights_proj(x).float() * self.weight_scale
        limit = (torch.arange(start, start + S, device=x.device) + 1) // self.ratio  # closed entries per query
        k = min(self.topk, n)
        picks = torch.empty(S, k, dtype=torch.long, device=x.device)
        step = max(1, (1 << 24) // n)  # query blocks keep the [s, n] score matrix near 64 MiB at any context
        for s0 in range(0, S, step):
            scores = ops.indexer_scores(q[s0 : s0 + step], weights[s0 : s0 + step], keys)
            lim = limit[s0 : s0 + step]
            lo = (start + s0 + 1) // self.ratio  # closed for every query of the block (lim[0], without a sync)
            tail = torch.arange(lo, n, device=x.device).unsqueeze(0) >= lim.unsqueeze(1)
            scores[:, lo:].masked_fill_(tail, float("-inf"))
            picks[s0 : s0 + step] = scores.topk(k, dim=-1).indices
        return torch.where(picks < limit.unsqueeze(1), picks, -1)
