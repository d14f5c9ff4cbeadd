"""Linear layers in the checkpoint's storage formats, and the weighted RMSNorm."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops, quant


class Linear(nn.Module):
    """y = x W^T with W stored as `fmt`: "fp8" (e4m3 + 128x128 UE8M0 `scale`), "fp4" (packed e2m1 +
    per-32 UE8M0 `scale`) or "float". Quantized weights stay packed; the op dequantizes them.

    `act_quant` reproduces the reference's FP8 rounding of the GEMM input (only for fp8/fp4 weights).
    """

    def __init__(self, in_features: int, out_features: int, fmt: str = "float",
                 dtype: torch.dtype = torch.float32, act_quant: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.fmt = in_features, out_features, fmt
        self.act_quant = act_quant and fmt != "float"
        if fmt == "fp8":
            self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.float8_e4m3fn))
            scale_shape = (-(-out_features // 128), -(-in_features // 128))
            self.register_buffer("scale", torch.empty(scale_shape, dtype=torch.float8_e8m0fnu))
        elif fmt == "fp4":
            self.register_buffer("weight", torch.empty(out_features, in_features // 2, dtype=torch.int8))
            self.register_buffer("scale", torch.empty(out_features, in_features // 32, dtype=torch.float8_e8m0fnu))
        elif fmt == "float":
            self.register_buffer("weight", torch.empty(out_features, in_features, dtype=dtype))
            self.scale = None
        else:
            raise ValueError(f"unknown weight format {fmt!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fmt == "fp8":
            return ops.fp8_linear(x, self.weight, self.scale, self.act_quant)
        if self.fmt == "fp4":
            return ops.fp4_linear(x, self.weight, self.scale, self.act_quant)
        y = ops.dense_linear(x, self.weight)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def dense(self) -> torch.Tensor:
        """The weight as a float tensor (dequantized when stored as FP8/FP4)."""
        if self.fmt == "fp8":
            return quant.dequant_fp8(self.weight, self.scale)
        if self.fmt == "fp4":
            return quant.dequant_fp4(self.weight, self.scale)
        return self.weight

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, fmt={self.fmt}, act_quant={self.act_quant}"


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), computed in FP32 (weight held in FP32), cast to x's dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


def rms_unweighted(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-vector RMS normalisation without weight (the query heads), in x's dtype as the reference."""
    return ops.rms_norm(x, None, eps)
