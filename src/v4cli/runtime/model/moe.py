"""Mixture of experts: sqrt-softplus router (hash routing on the first layers), SwiGLU experts (§2.6)."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..args import ModelArgs
from . import pointwise
from .linear import Linear


class Gate(nn.Module):
    """Scores in FP32; the bias only steers selection; hash layers select by `tid2eid[token]`."""

    def __init__(self, args: ModelArgs, hashed: bool) -> None:
        super().__init__()
        self.topk, self.score_func, self.scale = args.num_experts_per_tok, args.scoring_func, args.routed_scaling_factor
        self.hashed = hashed
        self.register_buffer("weight", torch.zeros(args.n_routed_experts, args.hidden_size, dtype=torch.float32))
        if hashed:
            self.register_buffer("tid2eid", torch.zeros(args.vocab_size, self.topk, dtype=torch.long))
            self.bias = None
        else:
            self.register_buffer("bias", torch.zeros(args.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = ops.dense_linear(x.float(), self.weight.float())
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
    """SwiGLU with the V4 clamp: up in [-limit, limit], gate <= limit; routing weight applied before w2."""

    def __init__(self, dim: int, inter: int, fmt: str, dtype: torch.dtype, limit: float, act_quant: bool) -> None:
        super().__init__()
        self.limit = limit
        self.w1 = Linear(dim, inter, fmt, dtype, act_quant)
        self.w2 = Linear(inter, dim, fmt, dtype, act_quant)
        self.w3 = Linear(dim, inter, fmt, dtype, act_quant)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        gate, up = self.w1(x).float(), self.w3(x).float()
        if self.limit > 0:
            up = up.clamp(-self.limit, self.limit)
            gate = gate.clamp(max=self.limit)
        h = pointwise.silu(gate) * up
        if weight is not None:
            h = weight * h
        return self.w2(h.to(x.dtype))


class MoE(nn.Module):
    def __init__(self, args: ModelArgs, hashed: bool, simulate_quant: bool, dtype: torch.dtype,
                 expert_fmt: str | None = None) -> None:
        super().__init__()
        self.n_experts = args.n_routed_experts
        self.gate = Gate(args, hashed)
        dense_fmt = "fp8" if args.fp8_weights else "float"
        expert_fmt = expert_fmt or ("fp4" if args.fp4_experts else dense_fmt)
        D, inter, lim = args.hidden_size, args.moe_intermediate_size, args.swiglu_limit
        self.experts = nn.ModuleList(
            Expert(D, inter, expert_fmt, dtype, lim, simulate_quant) for _ in range(self.n_experts))
        self.shared_experts = Expert(D, inter, dense_fmt, dtype, lim, simulate_quant)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        weights, picks = self.gate(x, tokens)
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        counts = torch.bincount(picks.flatten(), minlength=self.n_experts).tolist()
        for e, count in enumerate(counts):
            if count == 0:
                continue
            rows, slot = torch.where(picks == e)  # a token picks an expert at most once: rows are unique
            y[rows] += self.experts[e](x[rows], weights[rows, slot, None]).float()
        y += self.shared_experts(x).float()
        return y.to(x.dtype)
