"""Mixture of experts: sqrt-softplus router (hash routing on the first layers), SwiGLU experts (§2.6)."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops, pointwise
from ..args import ModelArgs
from .linear import Linear


class Gate(nn.Module):
    """Scores in FP32; the bias only steers selection; hash layers select by `tid2eid[token]`."""

    def __init__(self, args: ModelArgs, hashed: bool) -> None:
        super().__init__()
        self.topk, self.score_func, self.scale = args.num_experts_per_tok, args.scoring_func, args.routed_scaling_factor
        self.hashed = hashed
        self.register_buffer("weight", torch.zeros(args.n_routed_experts, args.hidden_size, dtype=torch.bfloat16))
        if hashed:
            self.register_buffer("tid2eid", torch.zeros(args.vocab_size, self.topk, dtype=torch.long))
            self.bias = None
        else:
            self.register_buffer("bias", torch.zeros(args.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # FP32 scores from FP32 inputs, whatever the weight is held in (BF16 as stored: widening it is exact)
        logits = ops.dense_linear(x if x.dtype == torch.float32 else x.float(), self.weight)
        if self.score_func == "softmax":
            scores = logits.softmax(dim=-1)
        elif self.score_func == "sigmoid":
            scores = pointwise.sigmoid(logits)
        else:
            scores = pointwise.softplus(logits).sqrt()
        if self.hashed:
            picks = self.tid2eid[tokens].long()
        else:
            picks = (scores + self.bias).topk(self.topk, dim=-1).indices
        weights = scores.gather(1, picks)
        if self.score_func != "softmax":
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.scale, picks


class Expert(nn.Module):
    """SwiGLU with the V4 clamp (up in [-limit, limit], gate <= limit), routing weight applied before w2: the
    weights only; `ops.moe_experts` runs every expert of a layer in one call."""

    def __init__(self, dim: int, inter: int, fmt: str, dtype: torch.dtype, act_quant: bool) -> None:
        super().__init__()
        self.w1 = Linear(dim, inter, fmt, dtype, act_quant)
        self.w2 = Linear(inter, dim, fmt, dtype, act_quant)
        self.w3 = Linear(dim, inter, fmt, dtype, act_quant)


class MoE(nn.Module):
    def __init__(self, args: ModelArgs, hashed: bool, simulate_quant: bool, dtype: torch.dtype,
                 expert_fmt: str | None = None) -> None:
        super().__init__()
        self.n_experts, self.limit, self.act_quant = args.n_routed_experts, args.swiglu_limit, simulate_quant
        self.gate = Gate(args, hashed)
        dense_fmt = "fp8" if args.fp8_weights else "float"
        expert_fmt = expert_fmt or ("fp4" if args.fp4_experts else dense_fmt)
        D, inter = args.hidden_size, args.moe_intermediate_size
        self.experts = nn.ModuleList(
            Expert(D, inter, expert_fmt, dtype, simulate_quant) for _ in range(self.n_experts))
        self.shared_experts = Expert(D, inter, dense_fmt, dtype, simulate_quant)
        self._lists: tuple[int, list[list[torch.Tensor]]] | None = None

    def _weights(self) -> list[list[torch.Tensor]]:
        """w1, s1, w3, s3, w2, s2 over the routed experts and then the shared one (built once per load)."""
        key = self.shared_experts.w2.weight.data_ptr()  # loading replaces the buffers: rebuild then
        if self._lists is None or self._lists[0] != key:
            every = [*self.experts, self.shared_experts]
            empty = torch.empty(0, device=self.shared_experts.w2.weight.device)
            lists = []
            for name in ("w1", "w3", "w2"):
                mods = [getattr(e, name) for e in every]
                lists += [[m.weight for m in mods], [empty if m.scale is None else m.scale for m in mods]]
            self._lists = (key, lists)
        return self._lists[1]

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        weights, picks = self.gate(x, tokens)
        # the shared expert is expert n_experts, picked by every token with weight 1 (an exact product)
        picks = torch.nn.functional.pad(picks, (0, 1), value=self.n_experts)
        weights = torch.nn.functional.pad(weights, (0, 1), value=1.0)
        w1, s1, w3, s3, w2, s2 = self._weights()
        return ops.moe_experts(x, weights, picks, w1, s1, w3, s3, w2, s2, self.limit, self.act_quant).to(x.dtype)
