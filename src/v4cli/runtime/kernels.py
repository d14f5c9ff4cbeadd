"""The compiled kernels behind `ops` on the CPU: C++ (csrc/cpu), built on first use and cached.

`install()` builds (once per set of build inputs: sources, flags, compiler, torch and Python as installed, the
CPU; see `kernel_build.inputs`), saying so on stderr, and registers them; without a compiler, the sources or a
working build, the PyTorch twins keep running and `install()` says why in one line. Where torch sees a CUDA
device it installs the CUDA kernels too (cuda_kernels.py). `V4_KERNELS=0` keeps the twins. `make setup` builds
the CPU kernels ahead of time.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from . import kernel_build, ops, ops_ref, quant
from .kernel_build import CSRC, REFERENCE, key_of  # noqa: F401 - part of this module's interface (tests, bench)

# Tuned for the CPU that builds it (the cache key includes its features). Clang on arm64 wants -mcpu.
CPU = kernel_build.Build(
    name="v4cli_cpu", what="the C++ kernels",
    sources=("registration.cpp", "cpu/linear.cpp", "cpu/dense.cpp", "cpu/hc.cpp", "cpu/moe.cpp", "cpu/attention.cpp",
             "cpu/indexer.cpp", "cpu/rotate.cpp", "cpu/rounding.cpp", "cpu/norm.cpp"),
    headers=("ops.h", "cpu/simd.h", "cpu/attention_simd.h", "cpu/parallel.h"),
    cflags=("-O3", "-mcpu=native" if platform.machine().lower() in ("arm64", "aarch64") else "-march=native"))
SOURCES, HEADERS, CFLAGS = CPU.sources, CPU.headers, CPU.cflags

# Up to this many input rows the FP8/FP4 linear runs its row kernel (csrc/cpu/linear.cpp, kRowKernelMax), whose
# result for a row does not depend on the other rows; past it, one GEMM over all rows (faster, not row-invariant).
ROW_KERNEL_MAX = 32
_built = False
_ATTN_DTYPES = (torch.float32, torch.bfloat16)  # what the kernels take as they are


def enabled() -> bool:
    return os.environ.get("V4_KERNELS", "1").strip().lower() not in ("0", "false", "off", "no")


def build_inputs() -> dict[str, str]:
    return kernel_build.inputs(CPU)


def build_key() -> str:
    return kernel_build.key(CPU)


def build_dir() -> Path:
    return kernel_build.folder(CPU)


def will_build() -> bool:
    """True when install() would compile: worth a notice first."""
    return enabled() and kernel_build.will_build(CPU)


def install(device: str | torch.device = "cpu") -> str:
    """Build or load the CPU kernels and route `ops` to them (and the CUDA kernels, for a CUDA `device`);
    returns a line saying what runs."""
    global _built
    why = None
    if not enabled():
        why = "V4_KERNELS=0"
    elif not all((CSRC / s).exists() for s in SOURCES):
        why = f"kernel sources not found at {CSRC}"
    elif not _built:
        try:
            kernel_build.load(CPU)
            _built = True
        except Exception as e:  # no compiler, no ninja, a failed build: the twins compute the same ops
            why = f"C++ kernels unavailable: {kernel_build.first_line(e)}"
    if why is not None:
        ops.reset()  # what the line says is what runs, even after an earlier install in this process
        return f"{REFERENCE} ({why})"
    for name in ops.OP_NAMES:  # every op has its wrapper below, under the op's own name
        ops.register(name, globals()[name])
    line = f"C++ CPU kernels: {', '.join(ops.OP_NAMES)}"
    if torch.device(device).type == "cuda":
        from . import cuda_kernels

        line += "; " + cuda_kernels.install()
    return line

# The wrappers skip what would be a no-op (a reshape of a 2-D input, a cast to the same dtype): at decode each
# Python-level call costs microseconds, and a layer makes dozens of these calls a step.
def _rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """x as contiguous [M, k] float32 or bfloat16 rows (the kernels widen bfloat16 exactly)."""
    xin = x if x.dim() == 2 else x.reshape(-1, k)
    if xin.dtype not in _ATTN_DTYPES:
        xin = xin.float()
    return xin if xin.is_contiguous() else xin.contiguous()


def _shaped(y: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    y = y if x.dim() == 2 else y.view(*x.shape[:-1], y.shape[-1])
    return y if y.dtype == dtype else y.to(dtype)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, act_quant: bool) -> torch.Tensor:
    if weight.device.type != "cpu":
        return ops_ref.fp8_linear(x, weight, scale, act_quant)
    # the kernel reads any one-byte scale (float8_e8m0fnu or uint8) as UE8M0 bytes
    return _shaped(torch.ops.v4cli.fp8_linear(_rows(x, weight.shape[1]), weight, scale, act_quant), x, x.dtype)


def fp4_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, act_quant: bool) -> torch.Tensor:
    if packed.device.type != "cpu":
        return ops_ref.fp4_linear(x, packed, scale, act_quant)
    return _shaped(torch.ops.v4cli.fp4_linear(_rows(x, packed.shape[1] * 2), packed, scale, act_quant), x, x.dtype)


def dense_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if weight.device.type != "cpu" or weight.dtype not in _ATTN_DTYPES or x.dtype not in _ATTN_DTYPES:
        return ops_ref.dense_linear(x, weight)
    # float32 x with a bfloat16 weight: the weight is read as it is (the promoted product, exactly)
    dtype = torch.float32 if torch.float32 in (x.dtype, weight.dtype) else torch.bfloat16
    xin = x if x.dim() == 2 else x.reshape(-1, weight.shape[1])
    xin = xin if xin.dtype == dtype else xin.to(dtype)
    xin = xin if xin.is_contiguous() else xin.contiguous()
    w = weight if weight.is_contiguous() else weight.contiguous()
    return _shaped(torch.ops.v4cli.dense_linear(xin, w), x, dtype)


def moe_experts(x: torch.Tensor, weights: torch.Tensor, picks: torch.Tensor, w1: list[torch.Tensor],
                s1: list[torch.Tensor], w3: list[torch.Tensor], s3: list[torch.Tensor], w2: list[torch.Tensor],
                s2: list[torch.Tensor], limit: float, act_quant: bool) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return ops_ref.moe_experts(x, weights, picks, w1, s1, w3, s3, w2, s2, limit, act_quant)
    # float32 or bfloat16 rows holding the model's values (`bf16`: rounded between steps; widened in the kernel)
    weights = weights if weights.dtype == torch.float32 else weights.float()
    picks = picks if picks.dtype == torch.int64 else picks.long()
    return torch.ops.v4cli.moe_experts(x.contiguous(), weights, picks, w1, s1, w3, s3, w2, s2, limit, act_quant,
                                       x.dtype == torch.bfloat16)

def sparse_attention(q: torch.Tensor, kv: torch.Tensor, sink: torch.Tensor, idx: torch.Tensor, softmax_scale: float,
                     dense: torch.Tensor | None = None, limit: torch.Tensor | None = None) -> torch.Tensor:
    if (q.device.type != "cpu" or kv.device.type != "cpu" or q.dtype not in _ATTN_DTYPES
            or kv.dtype not in _ATTN_DTYPES or (dense is not None and dense.dtype not in _ATTN_DTYPES)):
        return ops_ref.sparse_attention(q, kv, sink, idx, softmax_scale, dense, limit)
    sink = sink if sink.dtype == torch.float32 else sink.float()  # (a no-op .float() still dispatches an op)
    idx = idx if idx.dtype == torch.int64 else idx.long()
    limit = limit if limit is None or limit.dtype == torch.int64 else limit.long()
    return torch.ops.v4cli.sparse_attention(q.contiguous(), kv.contiguous(), sink.contiguous(),
                                            idx.contiguous(), float(softmax_scale),
                                            None if dense is None else dense.contiguous(),
                                            None if limit is None else limit.contiguous())

def indexer_scores(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    if q.device.type != "cpu" or keys.device.type != "cpu" or q.dtype not in _ATTN_DTYPES:
        return ops_ref.indexer_scores(q, weights, keys)
    if keys.dtype not in _ATTN_DTYPES:
        keys = keys.to(q.dtype)
    # The twin multiplies by the weights in q's dtype: bfloat16 values, exact in float32.
    return torch.ops.v4cli.indexer_scores(q.contiguous(), weights.to(q.dtype).float().contiguous(), keys.contiguous())

def hc_sinkhorn(mixes: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, n: int, iters: int,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if mixes.device.type != "cpu":
        return ops_ref.hc_sinkhorn(mixes, scale, base, n, iters, eps)
    return torch.ops.v4cli.hc_sinkhorn(mixes, scale, base, n, iters, eps)

def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype not in _ATTN_DTYPES or cos.dtype != torch.float32:
        return ops_ref.rope(x, cos, sin, inverse)
    return torch.ops.v4cli.rope(x.contiguous(), cos.contiguous(), sin.contiguous(), inverse)

def hadamard(x: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype not in _ATTN_DTYPES:
        return ops_ref.hadamard(x)
    return torch.ops.v4cli.hadamard(x.contiguous())

def fp8_round(x: torch.Tensor, block: int, width: int | None = None) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype not in _ATTN_DTYPES:
        return ops_ref.fp8_round(x, block, width)
    return torch.ops.v4cli.fp8_round(x.contiguous(), block, x.shape[-1] if width is None else width)

def fp4_round(x: torch.Tensor, block: int = quant.FP4_BLOCK) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype not in _ATTN_DTYPES:
        return ops_ref.fp4_round(x, block)
    return torch.ops.v4cli.fp4_round(x.contiguous(), block)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    if x.dtype not in _ATTN_DTYPES or (weight is not None and (weight.device.type != "cpu"
                                                                or weight.dtype != torch.float32)):
        return ops_ref.rms_norm(x, weight, eps)
    return torch.ops.v4cli.rms_norm(x, weight, eps)


def hc_pre(x: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, n: int, iters: int, eps: float,
           norm_eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if fn.device.type != "cpu" or x.dtype not in _ATTN_DTYPES:
        return ops_ref.hc_pre(x, fn, scale, base, n, iters, eps, norm_eps)
    return torch.ops.v4cli.hc_pre(x, fn, scale, base, n, iters, eps, norm_eps)


def hc_post(o: torch.Tensor, x: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype not in _ATTN_DTYPES or comb.dtype != torch.float32:
        return ops_ref.hc_post(o, x, post, comb)
    return torch.ops.v4cli.hc_post(o, x, post, comb)
