"""The CUDA kernels behind `ops` (csrc/cuda): built on first use for the GPU torch sees, cached, registered for
the "cuda" device type.

The kernels are plain CUDA C++ on raw pointers (csrc/cuda/*.cu, no torch headers: they compile in seconds); one
small .cpp binds them under torch's CUDA dispatch key, next to the schemas of the CPU build (which loads first:
`kernels.install(device)` calls `install()` here). An op without a CUDA kernel runs its PyTorch twin on the GPU.
Without a CUDA device, or a torch built without CUDA, nothing is built and `install()` says so in one line.
"""

from __future__ import annotations

import functools

import torch

from . import kernel_build, ops, ops_ref, quant

SOURCES = ("cuda/registration.cpp", "cuda/norm.cu", "cuda/moe.cu", "cuda/moe_gemm.cu", "cuda/moe_gemv.cu",
           "cuda/moe_simt.cu", "cuda/linear.cu", "cuda/linear_tc.cu", "cuda/pointwise.cu", "cuda/rounding.cu",
           "cuda/attention.cu", "cuda/attention_simt.cu", "cuda/indexer.cu")
HEADERS = ("cuda/launch.h", "cuda/quant.cuh", "cuda/moe.cuh", "cuda/linear.cuh", "cuda/pointwise.cuh",
           "cuda/attention.cuh")
_built = False


def arch_flags(capability: tuple[int, int]) -> tuple[str, ...]:
    """Machine code for the device's own architecture (no PTX left for the driver to compile at start). Hopper
    (9.0) gets sm_90a, the target with wgmma and setmaxnreg; the -gencode form, since `-arch=sm_90a` also runs
    a plain sm_90 pass that rejects those instructions."""
    major, minor = capability
    arch = f"{major}{minor}" + ("a" if (major, minor) == (9, 0) else "")
    return (f"-gencode=arch=compute_{arch},code=sm_{arch}",)


CUDA_CFLAGS = ("-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo")


def _gpu_inputs() -> dict[str, str]:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return {"nvcc": kernel_build.tool_id("nvcc"), "gpu": name, "torch_cuda": str(torch.version.cuda)}


@functools.cache
def build() -> kernel_build.Build:
    cap = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0)
    return kernel_build.Build(name="v4cli_cuda", what="the CUDA kernels", sources=SOURCES, headers=HEADERS,
                              cflags=("-O3",), cuda_cflags=CUDA_CFLAGS + arch_flags(cap), extra=_gpu_inputs)


def unavailable() -> str | None:
    """Why the CUDA kernels cannot run here, or None."""
    if torch.version.cuda is None:
        return "this torch is built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def install() -> str:
    """Build or load the CUDA kernels and route `ops` on CUDA tensors to them; one line says what runs. The
    CPU build (the op schemas) must be loaded already."""
    global _built
    why = unavailable()
    if why is None and not _built:
        try:
            kernel_build.load(build())
            _built = True
        except Exception as e:  # a failed build: the twins run on the GPU
            why = f"CUDA kernels unavailable: {kernel_build.first_line(e)}"
    if why is not None:
        ops.reset("cuda")
        return f"{kernel_build.REFERENCE} on the GPU ({why})"
    names = [name for name in ops.OP_NAMES if name in globals()]
    for name in names:
        ops.register(name, globals()[name], device="cuda")
    rest = [name for name in ops.OP_NAMES if name not in names]
    return f"CUDA kernels: {', '.join(names) or 'none'}" + (f" (twins: {', '.join(rest)})" if rest else "")


def _same_device(*tensors: torch.Tensor | None) -> bool:
    devs = {t.device for t in tensors if t is not None}
    return len(devs) == 1


_FLOATS = (torch.float32, torch.bfloat16)

# ---- linear: fp8_linear, fp4_linear, dense_linear --------------------------------------------------------------


def _rows2d(x: torch.Tensor, k: int) -> torch.Tensor:
    """x as [M, k] rows: a view where it can be (the kernels take a row stride), a copy where not."""
    return x if x.dim() == 2 else x.reshape(-1, k)


def _shaped(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return y if x.dim() == 2 else y.view(*x.shape[:-1], y.shape[-1])


def _quantized_ok(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, k_per_col: int) -> bool:
    """What the kernels take; anything else (a shape mismatch included: the twin raises) runs the twin."""
    return (x.dtype in _FLOATS and x.dim() >= 1 and weight.dim() == 2 and x.shape[-1] == weight.shape[1] * k_per_col
            and scale.dim() == 2 and scale.element_size() == 1 and weight.is_cuda and _same_device(x, weight, scale))


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, act_quant: bool) -> torch.Tensor:
    # any one-byte scale (float8_e8m0fnu or uint8) is read as UE8M0 bytes
    if weight.dtype != torch.float8_e4m3fn or not _quantized_ok(x, weight, scale, 1):
        return ops_ref.fp8_linear(x, weight, scale, act_quant)
    y = torch.ops.v4cli.fp8_linear(_rows2d(x, weight.shape[1]), weight.contiguous(), scale.contiguous(),
                                   bool(act_quant))
    return _shaped(y, x)


def fp4_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, act_quant: bool) -> torch.Tensor:
    if not _quantized_ok(x, packed, scale, 2) or packed.element_size() != 1 or packed.shape[1] % 16:
        return ops_ref.fp4_linear(x, packed, scale, act_quant)
    y = torch.ops.v4cli.fp4_linear(_rows2d(x, packed.shape[1] * 2), packed.contiguous(), scale.contiguous(),
                                   bool(act_quant))
    return _shaped(y, x)


def dense_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # float32 x with a bfloat16 weight (the head) reads the weight as it is: the promoted product, exactly
    if (x.dtype not in _FLOATS or weight.dtype not in _FLOATS or weight.dim() != 2 or x.dim() < 1
            or x.shape[-1] != weight.shape[1] or not weight.is_cuda or not _same_device(x, weight)):
        return ops_ref.dense_linear(x, weight)
    return _shaped(torch.ops.v4cli.dense_linear(_rows2d(x, weight.shape[1]), weight.contiguous()), x)


# ---- moe: moe_experts -------------------------------------------------------------------------------------------

def moe_experts(x: torch.Tensor, weights: torch.Tensor, picks: torch.Tensor, w1: list[torch.Tensor],
                s1: list[torch.Tensor], w3: list[torch.Tensor], s3: list[torch.Tensor], w2: list[torch.Tensor],
                s2: list[torch.Tensor], limit: float, act_quant: bool) -> torch.Tensor:
    # The lists are checked in C++ (every expert's device, dtype and shape: cheap there, not here); the kernel's
    # table of their pointers is cached there by content, so a step copies nothing to the device.
    if x.dtype not in _FLOATS or not w1 or not w2 or not _same_device(x, weights, picks, w1[0], w2[-1]):
        return ops_ref.moe_experts(x, weights, picks, w1, s1, w3, s3, w2, s2, limit, act_quant)
    return torch.ops.v4cli.moe_experts(x.contiguous(), weights.float().contiguous(), picks.long().contiguous(), w1, s1,
                                       w3, s3, w2, s2, float(limit), bool(act_quant), x.dtype == torch.bfloat16)


# ---- attention: sparse_attention, indexer_scores --------------------------------------------------------------

_ATTN_MAX_D = 1024  # the kernels' widest head (launch.h: kAttnMaxD, kIndexMaxD); kIndexMaxHD below
_INDEX_MAX_HD = 16384


def sparse_attention(q: torch.Tensor, kv: torch.Tensor, sink: torch.Tensor, idx: torch.Tensor, softmax_scale: float,
                     dense: torch.Tensor | None = None, limit: torch.Tensor | None = None) -> torch.Tensor:
    has_dense = dense is not None and dense.shape[0] > 0
    if (q.dim() != 3 or q.dtype not in _FLOATS or kv.dtype != q.dtype or q.shape[-1] > _ATTN_MAX_D
            or (has_dense and (dense.dtype != q.dtype or limit is None))
            or not _same_device(q, kv, sink, idx, *((dense, limit) if has_dense else ()))):
        return ops_ref.sparse_attention(q, kv, sink, idx, softmax_scale, dense, limit)
    return torch.ops.v4cli.sparse_attention(q, kv, sink.float(), idx.long(), float(softmax_scale),
                                            dense if has_dense else None, limit.long() if has_dense else None)


def indexer_scores(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    if q.dim() != 3 or q.dtype not in _FLOATS or keys.dtype not in _FLOATS or not _same_device(q, weights, keys):
        return ops_ref.indexer_scores(q, weights, keys)
    keys = keys.to(q.dtype)  # as the twin: the products run in q's dtype
    _, H, D = q.shape
    mma = q.dtype == torch.bfloat16 and H % 16 == 0 and D in (64, 128)
    if not mma and (D > _ATTN_MAX_D or H * D > _INDEX_MAX_HD):
        return ops_ref.indexer_scores(q, weights, keys)
    q, keys = q.contiguous(), keys.contiguous()
    if mma and (q.data_ptr() % 16 or keys.data_ptr() % 16):  # cp.async rows: 16-byte aligned views only
        q, keys = q.clone(), keys.clone()
    return torch.ops.v4cli.indexer_scores(q, weights.float(), keys)

# ---- pointwise: hc_sinkhorn, rope, hadamard, fp8_round, fp4_round --------------------------------------------

_SINKHORN_MAX_STREAMS = 8  # launch.h kSinkhornMaxStreams
_HADAMARD_MAX_DIM = 1024  # launch.h kHadamardMaxDim


def hc_sinkhorn(mixes: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, n: int, iters: int,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if (not _same_device(mixes, scale, base) or any(t.dtype not in _FLOATS for t in (mixes, scale, base))
            or not 1 <= n <= _SINKHORN_MAX_STREAMS or iters < 1 or mixes.dim() != 2):
        return ops_ref.hc_sinkhorn(mixes, scale, base, n, iters, eps)
    return torch.ops.v4cli.hc_sinkhorn(mixes, scale, base, n, iters, eps)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    # the twin broadcasts cos/sin of other shapes: only the [T, dim/2] form the model passes runs here
    if (not _same_device(x, cos, sin) or x.dtype not in _FLOATS or cos.dtype != torch.float32
            or sin.dtype != torch.float32 or x.dim() < 2 or cos.dim() != 2 or cos.shape != sin.shape
            or cos.shape[0] != x.shape[0] or 2 * cos.shape[1] > x.shape[-1]):
        return ops_ref.rope(x, cos, sin, inverse)
    return torch.ops.v4cli.rope(x, cos, sin, bool(inverse))


def hadamard(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] if x.dim() else 0
    if x.dtype not in _FLOATS or d < 1 or d & (d - 1) or d > _HADAMARD_MAX_DIM:
        return ops_ref.hadamard(x)
    return torch.ops.v4cli.hadamard(x)


def fp8_round(x: torch.Tensor, block: int, width: int | None = None) -> torch.Tensor:
    d = x.shape[-1] if x.dim() else 0
    w = d if width is None else width
    if x.dtype not in _FLOATS or x.dim() < 1 or block < 1 or not 0 <= w <= d or w % block:
        return ops_ref.fp8_round(x, block, width)
    return torch.ops.v4cli.fp8_round(x, block, w)


def fp4_round(x: torch.Tensor, block: int = quant.FP4_BLOCK) -> torch.Tensor:
    if x.dtype not in _FLOATS or x.dim() < 1 or block < 1 or x.shape[-1] % block:
        return ops_ref.fp4_round(x, block)
    return torch.ops.v4cli.fp4_round(x, block)


# ---- norm: rms_norm, hc_post, hc_pre ---------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    if weight is None or weight.device != x.device or weight.dtype != torch.float32 or x.dtype not in _FLOATS:
        return ops_ref.rms_norm(x, weight, eps)
    return torch.ops.v4cli.rms_norm(x, weight, eps)


def hc_post(o: torch.Tensor, x: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    if not _same_device(o, x, post, comb) or x.dtype not in _FLOATS:
        return ops_ref.hc_post(o, x, post, comb)
    return torch.ops.v4cli.hc_post(o, x, post, comb)


def hc_pre(x: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, n: int, iters: int, eps: float,
           norm_eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # its Sinkhorn step is whatever implements hc_sinkhorn on CUDA: without that kernel, the twin throughout
    if not _same_device(x, fn, scale, base) or x.dtype not in _FLOATS or ops.backend("hc_sinkhorn", "cuda") == "torch":
        return ops_ref.hc_pre(x, fn, scale, base, n, iters, eps, norm_eps)
    return torch.ops.v4cli.hc_pre(x, fn, scale, base, n, iters, eps, norm_eps)
