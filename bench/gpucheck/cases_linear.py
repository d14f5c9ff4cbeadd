"""Inputs of the linear ops and of the experts' step (fp8_linear, fp4_linear, dense_linear, moe_experts), from
their twins' docstrings: the model's own shapes at its widths, decode and prefill row counts, and ragged sizes
(K off the 128-tile, N tails, zero rows)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from v4cli.runtime import ops_ref, quant

from .common import Case, Dims, Rng, dtype_name, nbytes

BF16, F32 = torch.bfloat16, torch.float32
# (dtype, act_quant) pairs of the ragged shapes: the rounding on and off, in both activation dtypes
RAGGED_MODES = ((BF16, True), (BF16, False), (F32, True), (F32, False))


def _linear64(dequant: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """The twin's formula with a float64 product (the twin itself multiplies in float32)."""

    def ref(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, act_quant: bool) -> torch.Tensor:
        xin = quant.act_quant(x) if act_quant else x  # the rounded values are exact in any wider dtype
        return xin.double() @ dequant(weight, scale, torch.float64).t()

    return ref


def _quantized_linear(op: str, d: Dims, rng: Rng, make: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
                      specs: list[tuple[str, int, int, bool]], ragged: list[tuple[int, int]]) -> Iterator[Case]:
    """specs: (name, N, K, act_quant as the model calls it) at the model's widths; ragged: (N, K) odd sizes."""
    ref = _linear64(quant.dequant_fp8 if op == "fp8_linear" else quant.dequant_fp4)

    def case(label: str, w: torch.Tensor, s: torch.Tensor, n: int, k: int, rows: int, dtype: torch.dtype,
             act: bool, timed: bool) -> Case:
        if label == "wo_a group":  # the model passes one group of the heads' output: a strided view
            x = rng.randn(rows, d.o_groups, k, dtype=dtype)[:, -1]
        else:
            x = rng.randn(rows, k, dtype=dtype)
        return Case(op, f"{label} {n}x{k} rows={rows}{'' if act else ' no-round'}", dtype_name(dtype),
                    (x, w, s, act), nbytes(x, w, s) + rows * n * x.element_size(), 2 * rows * n * k, timed, ref)

    for name, n, k, act in specs:
        w, s = make(n, k)
        for rows in (*d.decode, d.prefill):
            yield case(name, w, s, n, k, rows, BF16, act, True)
        yield case(name, w, s, n, k, 1, F32, False, False)  # the float32 model without the rounding
    for n, k in ragged:
        w, s = make(n, k)
        for rows in (1, 5, d.ragged):
            for dtype, act in RAGGED_MODES:
                yield case("ragged", w, s, n, k, rows, dtype, act, False)
    w, s = make(64, 256)
    yield case("empty", w, s, 64, 256, 0, BF16, True, False)


def fp8_linear(d: Dims, rng: Rng) -> Iterator[Case]:
    hd = d.heads * d.head_dim
    specs = [("wq_a", d.q_lora, d.hidden, True), ("wq_b", hd, d.q_lora, True), ("wkv", d.head_dim, d.hidden, True),
             ("wo_a group", d.o_lora, hd // d.o_groups, False),  # the model runs wo_a's groups unrounded
             ("wo_b", d.hidden, d.o_groups * d.o_lora, True),
             ("index wq_b", d.index_heads * d.index_dim, d.q_lora, True),
             ("shared w1", d.inter, d.hidden, True), ("shared w2", d.hidden, d.inter, True)]
    yield from _quantized_linear("fp8_linear", d, rng, rng.fp8, specs, [(200, 320), (77, 96), (129, 130)])


def fp4_linear(d: Dims, rng: Rng) -> Iterator[Case]:
    specs = [("expert w1", d.inter, d.hidden, True), ("expert w2", d.hidden, d.inter, True)]
    yield from _quantized_linear("fp4_linear", d, rng, rng.fp4, specs, [(77, 96), (130, 288)])


def dense_linear(d: Dims, rng: Rng) -> Iterator[Case]:
    """The float weights: the mHC mixers and the router (float32), the compressor (float32), the indexer's head
    weights (bf16) and the vocabulary head (bf16 weight, float32 input and logits)."""
    n_mix, flat = (2 + d.hc) * d.hc, d.hc * d.hidden
    specs = [("hc fn", n_mix, flat, F32, F32, True), ("hc_head fn", d.hc, flat, F32, F32, True),
             ("gate", d.experts, d.hidden, F32, F32, True),
             ("compressor wkv", 2 * d.head_dim, d.hidden, F32, F32, True),
             ("index weights_proj", d.index_heads, d.hidden, BF16, BF16, True),
             ("head", d.vocab, d.hidden, BF16, F32, True)]
    ragged = [("ragged", n, k, wd, xd, False) for n, k, wd, xd in [
        (129, 37, F32, F32), (7, 1, F32, F32), (300, 200, BF16, BF16), (24, 40, BF16, F32), (1000, 17, BF16, BF16)]]
    for name, n, k, w_dtype, x_dtype, timed in specs + ragged:
        w = rng.randn(n, k, std=k**-0.5, dtype=w_dtype, on_device=n * k > 1 << 24)
        out_dtype = torch.promote_types(w_dtype, x_dtype)
        counts = (*d.decode, d.prefill) if timed else (1, 5, d.ragged)
        if name == "head":
            counts = d.decode  # the head runs on the last position of each sequence
        for rows in counts:
            x = rng.randn(rows, k, dtype=x_dtype)
            yield Case("dense_linear", f"{name} {n}x{k} w={dtype_name(w_dtype)} rows={rows}", dtype_name(out_dtype),
                       (x, w), nbytes(x, w) + rows * n * out_dtype.itemsize, 2 * rows * n * k, timed)


# ---- moe_experts ----------------------------------------------------------------------------------------------------

def experts(rng: Rng, n_routed: int, dim: int, inter: int, routed_fmt: str, on_device: bool = False
            ) -> list[list[torch.Tensor]]:
    """w1, s1, w3, s3, w2, s2 over `n_routed` experts in `routed_fmt` and the shared one in FP8 (the model's)."""
    lists: list[list[torch.Tensor]] = [[] for _ in range(6)]
    for e in range(n_routed + 1):
        fmt = routed_fmt if e < n_routed else "fp8"
        for i, (n, k) in enumerate(((inter, dim), (inter, dim), (dim, inter))):
            if fmt == "float":
                w, s = rng.randn(n, k, std=k**-0.5, dtype=BF16, on_device=on_device), torch.empty(0, device=rng.device)
            else:
                w, s = (rng.fp8 if fmt == "fp8" else rng.fp4)(n, k, on_device)
            lists[2 * i].append(w)
            lists[2 * i + 1].append(s)
    return lists


def routing(rng: Rng, tokens: int, n_routed: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing weights [T, k+1] float32 and picks [T, k+1] as MoE.forward passes them: k distinct routed experts
    per token, then the shared one (index n_routed) with weight 1."""
    dev = rng.device
    picks = rng.rand(tokens, n_routed).argsort(dim=1)[:, :k]
    picks = torch.cat([picks, torch.full((tokens, 1), n_routed, dtype=torch.long, device=dev)], dim=1)
    weights = torch.cat([rng.rand(tokens, k) * (1.5 / k), torch.ones(tokens, 1, device=dev)], dim=1)
    return weights, picks


def _moe_case(label: str, rng: Rng, lists: list[list[torch.Tensor]], k: int, tokens: int, dtype: torch.dtype,
              act: bool, timed: bool, x_std: float = 1.0) -> Case:
    n_routed, dim, inter = len(lists[0]) - 1, lists[4][-1].shape[0], lists[0][-1].shape[0]
    x = rng.randn(tokens, dim, std=x_std, dtype=dtype)
    weights, picks = routing(rng, tokens, n_routed, k)
    used = torch.unique(picks).tolist()
    moved = nbytes(x, weights, picks) + sum(nbytes(*(ws[e] for ws in lists)) for e in used) + tokens * dim * 4
    # The twin rounds the steps' results to x's dtype and, with act_quant, rounds those again to e4m3: a float64
    # run without the first rounding moves the second by whole e4m3 steps (2e-2 in bf16, measured), so the
    # reference is the twin in x's dtype itself.
    return Case("moe_experts", f"{label} T={tokens}{'' if act else ' no-round'}", dtype_name(dtype),
                (x, weights, picks, *lists, 10.0, act), moved, 6 * dim * inter * tokens * (k + 1), timed,
                ops_ref.moe_experts, "twin")


def moe_experts(d: Dims, rng: Rng) -> Iterator[Case]:
    # 256 FP4 experts are 3.3 GB: drawn and quantized on the device (on the CPU they would take minutes)
    lists = experts(rng, d.experts, d.hidden, d.inter, "fp4", on_device=True)
    label = f"{d.experts}x fp4 {d.inter}x{d.hidden} top-{d.topk}+shared"
    for tokens in (*d.decode, d.prefill):
        yield _moe_case(label, rng, lists, d.topk, tokens, BF16, True, True)
    yield _moe_case(label, rng, lists, d.topk, 8, BF16, False, False)
    for tokens in (1, d.ragged):
        yield _moe_case(label, rng, lists, d.topk, tokens, F32, False, False)
    del lists
    # ragged: I = 96 (FP8 tiles cut at 96, FP4 blocks of 32), 5 experts; inputs x4 so that the SwiGLU clamp bites
    for fmt in ("fp4", "fp8", "float"):
        small = experts(rng, 5, 256, 96, fmt)
        for tokens in (1, 5, 13) if fmt == "fp4" else (5,):
            yield _moe_case(f"ragged 5x {fmt} 96x256 top-2+shared", rng, small, 2, tokens, BF16, fmt != "float",
                            False, 4.0)
        yield _moe_case(f"ragged 5x {fmt} 96x256 top-2+shared", rng, small, 2, 5, F32, False, False, 4.0)
