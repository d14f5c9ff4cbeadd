"""The DeepSeek-V4 network: embedding -> n-stream blocks -> hc_head -> norm -> FP32 head, plus MTP.

Module and buffer names follow the official checkpoint (`layers.N.attn.wq_a.weight`, ...), except
that the mHC triples live in small modules (`hc_attn.fn` for the checkpoint's `hc_attn_fn`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..args import ModelArgs
from ..cache import LayerState, SeqState
from .attention import Attention
from .hc import HyperConnection, HyperHead
from .linear import Linear, RMSNorm
from .moe import MoE

# One slice of a flat token batch: (start position, that sequence's state for this layer, length).
Segment = tuple[int, LayerState, int]


class Embedding(nn.Module):
    def __init__(self, vocab: int, dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(vocab, dim, dtype=dtype))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.weight[tokens]


class Block(nn.Module):
    """mHC(attention) then mHC(MoE) over the [T, n, D] residual streams."""

    def __init__(self, args: ModelArgs, layer: int, simulate_quant: bool, dtype: torch.dtype,
                 expert_fmt: str | None = None) -> None:
        super().__init__()
        n, D, eps = args.hc_mult, args.hidden_size, args.rms_norm_eps
        self.hc_attn = HyperConnection(n, D, args.hc_sinkhorn_iters, args.hc_eps, eps)
        self.hc_ffn = HyperConnection(n, D, args.hc_sinkhorn_iters, args.hc_eps, eps)
        self.attn_norm = RMSNorm(D, eps)
        self.ffn_norm = RMSNorm(D, eps)
        self.attn = Attention(args, args.compress_ratios[layer], simulate_quant, dtype)
        hashed = layer < args.num_hash_layers
        self.ffn = MoE(args, hashed, simulate_quant, dtype, expert_fmt)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, segments: Sequence[Segment]) -> torch.Tensor:
        u, post, comb = self.hc_attn.pre(x)
        x = HyperConnection.post(self.attn(self.attn_norm(u), segments), x, post, comb)
        u, post, comb = self.hc_ffn.pre(x)
        return HyperConnection.post(self.ffn(self.ffn_norm(u), tokens), x, post, comb)


class MTPBlock(Block):
    """The multi-token-prediction block: a window-only Block fed e_proj(embed(t+1)) + h_proj(h_t)."""

    def __init__(self, args: ModelArgs, layer: int, simulate_quant: bool, dtype: torch.dtype,
                 expert_fmt: str | None = None) -> None:
        super().__init__(args, layer, simulate_quant, dtype, expert_fmt)
        D, eps = args.hidden_size, args.rms_norm_eps
        fmt = "fp8" if args.fp8_weights else "float"
        self.e_proj = Linear(D, D, fmt, dtype, simulate_quant)
        self.h_proj = Linear(D, D, fmt, dtype, simulate_quant)
        self.enorm, self.hnorm, self.norm = RMSNorm(D, eps), RMSNorm(D, eps), RMSNorm(D, eps)
        self.hc_head = HyperHead(args.hc_mult, D, args.hc_eps, eps)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, simulate_quant: bool = True, dtype: torch.dtype = torch.float32,
                 expert_fmt: str | None = None) -> None:
        """`expert_fmt` overrides the routed experts' storage format implied by the config."""
        super().__init__()
        self.args, self.simulate_quant, self.dtype = args, simulate_quant, dtype
        D, eps = args.hidden_size, args.rms_norm_eps
        # The embedding and the head stay in their stored precision (BF16 in every released checkpoint; the
        # loader keeps an FP32 re-export's FP32): rows are widened per token, the head sums in FP32.
        self.embed = Embedding(args.vocab_size, D, torch.bfloat16)
        self.layers = nn.ModuleList(
            Block(args, i, simulate_quant, dtype, expert_fmt) for i in range(args.num_hidden_layers))
        self.norm = RMSNorm(D, eps)
        self.head = Linear(D, args.vocab_size, "float", torch.bfloat16)  # FP32 inputs and logits, as the reference
        self.hc_head = HyperHead(args.hc_mult, D, args.hc_eps, eps)
        self.mtp = nn.ModuleList(
            MTPBlock(args, args.num_hidden_layers + i, simulate_quant, dtype, expert_fmt)
            for i in range(args.num_nextn_predict_layers))

    # ---- main model ------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, states: Sequence[SeqState], lengths: Sequence[int]) -> torch.Tensor:
        """Run a flat batch: `lengths[i]` tokens of sequence i continue from `states[i].pos`.

        Returns the final n-stream residual [T, n, D] (before hc_head) and advances every state.
        """
        x = self.embed(tokens).to(self.dtype)
        x = x.unsqueeze(1).repeat(1, self.args.hc_mult, 1)
        for i, layer in enumerate(self.layers):
            x = layer(x, tokens, [(st.pos, st.layers[i], n) for st, n in zip(states, lengths, strict=True)])
        for st, n in zip(states, lengths, strict=True):
            st.pos += n
        return x

    def head_logits(self, h: torch.Tensor, block: nn.Module | None = None) -> torch.Tensor:
        """Streams [T, n, D] -> FP32 logits [T, vocab] through hc_head, norm and head (`block`: MTP's own)."""
        owner = block if block is not None else self
        return self.head(owner.norm(owner.hc_head(h)).float())

    @torch.inference_mode()
    def logits(self, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Logits [len, vocab] at every position of one sequence from position 0 (no cache kept)."""
        tokens = torch.as_tensor(token_ids, dtype=torch.long, device=self.embed.weight.device).flatten()
        state = SeqState.new(self.args, self.dtype, tokens.device)
        return self.head_logits(self.forward(tokens, [state], [tokens.numel()]))

    # ---- multi-token prediction ---------------------------------------------------------------
    def mtp_forward(self, h: torch.Tensor, next_tokens: torch.Tensor, states: Sequence[SeqState],
                    lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """MTP over main streams h [T, n, D] of positions states[i].mtp_pos.., each paired with the token
        that follows it. Returns (logits [T, vocab] for the token after that one, the MTP block's streams)
        and advances every state's `mtp_pos`.
        """
        blk = self.mtp[0]
        e = blk.enorm(self.embed(next_tokens).to(self.dtype))
        x = blk.e_proj(e).unsqueeze(1) + blk.h_proj(blk.hnorm(h))
        segs = [(st.mtp_pos, st.mtp[0], n) for st, n in zip(states, lengths, strict=True)]
        x = blk(x, next_tokens, segs)
        for st, n in zip(states, lengths, strict=True):
            st.mtp_pos += n
        return self.head_logits(x, blk), x
