"""Manifold-constrained hyper-connections (mHC): the n-stream residual around every sublayer."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops, pointwise


class HyperConnection(nn.Module):
    """Collapse n streams into one sublayer input (pre) and mix them back with its output (post)."""

    def __init__(self, n: int, dim: int, iters: int, eps: float, norm_eps: float) -> None:
        super().__init__()
        self.n, self.iters, self.eps, self.norm_eps = n, iters, eps, norm_eps
        mix = (2 + n) * n
        self.register_buffer("fn", torch.zeros(mix, n * dim, dtype=torch.float32))
        self.register_buffer("base", torch.zeros(mix, dtype=torch.float32))
        self.register_buffer("scale", torch.ones(3, dtype=torch.float32))

    def pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, n, D] -> (u [T, D], post [T, n], comb [T, n, n])."""
        return ops.hc_pre(x, self.fn, self.scale, self.base, self.n, self.iters, self.eps, self.norm_eps)

    @staticmethod
    def post(o: torch.Tensor, x: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
        """X'[k] = post_k * o + sum_j comb[j, k] X[j]  (comb^T X), in FP32."""
        return ops.hc_post(o, x, post, comb)


class HyperHead(nn.Module):
    """Final sigmoid-only collapse of the n streams (no Sinkhorn, no post)."""

    def __init__(self, n: int, dim: int, eps: float, norm_eps: float) -> None:
        super().__init__()
        self.eps, self.norm_eps = eps, norm_eps
        self.register_buffer("fn", torch.zeros(n, n * dim, dtype=torch.float32))
        self.register_buffer("base", torch.zeros(n, dtype=torch.float32))
        self.register_buffer("scale", torch.ones(1, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).float()
        rsqrt = torch.rsqrt(flat.square().mean(-1, keepdim=True) + self.norm_eps)
        pre = pointwise.sigmoid(ops.dense_linear(flat, self.fn) * rsqrt * self.scale + self.base) + self.eps
        return (pre.unsqueeze(-1) * x.float()).sum(dim=1).to(x.dtype)
