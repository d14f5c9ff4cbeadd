"""Inputs of the row-wise ops (hc_sinkhorn, rope, hadamard, fp8_round, fp4_round, rms_norm, hc_pre, hc_post), from
the tensors the model passes them (queries, kv rows, the indexer's queries and keys, the mHC mixing logits) at
decode and prefill row counts, and ragged ones (odd rows, other widths, blocks under the scale's floor)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from v4cli.runtime.args import ModelArgs
from v4cli.runtime.model.rope import Rope

from .common import Case, Dims, Rng, dtype_name, nbytes

BF16, F32 = torch.bfloat16, torch.float32


def _rows(d: Dims) -> tuple[tuple[int, bool], ...]:
    """(rows, timed): the decode and prefill counts, then the ragged one."""
    return (*((r, True) for r in (*d.decode, d.prefill)), (d.ragged, False))


def hc_sinkhorn(d: Dims, rng: Rng) -> Iterator[Case]:
    n, iters, eps = d.hc, ModelArgs().hc_sinkhorn_iters, ModelArgs().hc_eps
    for rows, timed in _rows(d):
        mixes = rng.randn(rows, (2 + n) * n, std=0.5)  # float32, as HyperConnection.pre makes them
        scale, base = 0.5 + rng.rand(3), rng.randn((2 + n) * n, std=0.5)
        yield Case("hc_sinkhorn", f"mixes {rows}x{(2 + n) * n} n={n} iters={iters}", "f32",
                   (mixes, scale, base, n, iters, eps), nbytes(mixes) + rows * (2 * n + n * n) * 4, 0, timed)


def rope(d: Dims, rng: Rng) -> Iterator[Case]:
    """Angles of the compressed layers' YaRN table at random positions up to 1M."""
    args = ModelArgs()

    def case(label: str, shape: tuple[int, ...], dim: int, inverse: bool, dtype: torch.dtype, timed: bool) -> Case:
        table = Rope(dim, args.compress_rope_theta, args.yarn)
        cos, sin = table.angles(rng.randint(0, 1 << 20, (shape[0],)))
        x = rng.randn(*shape, dtype=dtype)
        return Case("rope", f"{label} {'x'.join(map(str, shape))} rope={dim}{' inverse' if inverse else ''}",
                    dtype_name(dtype), (x, cos, sin, inverse), 2 * nbytes(x) + nbytes(cos, sin), 0, timed)

    for rows, timed in _rows(d):
        yield case("q", (rows, d.heads, d.head_dim), d.rope, False, BF16, timed)
        yield case("kv", (rows, d.head_dim), d.rope, False, BF16, timed)
        yield case("o", (rows, d.heads, d.head_dim), d.rope, True, BF16, timed)
        yield case("index q", (rows, d.index_heads, d.index_dim), d.rope, False, BF16, timed)
    for dtype in (BF16, F32):
        yield case("ragged", (13, 4, 128), 64, False, dtype, False)
        yield case("ragged", (5, 96), 32, True, dtype, False)
        yield case("ragged", (3, 2, 64), 64, False, dtype, False)  # every dim rotated


def hadamard(d: Dims, rng: Rng) -> Iterator[Case]:
    def case(label: str, shape: tuple[int, ...], dtype: torch.dtype, timed: bool) -> Case:
        x = rng.randn(*shape, dtype=dtype)
        return Case("hadamard", f"{label} {'x'.join(map(str, shape))}", dtype_name(dtype), (x,), 2 * nbytes(x), 0,
                    timed)

    for rows, timed in _rows(d):
        yield case("index q", (rows, d.index_heads, d.index_dim), BF16, timed)
        yield case("index keys", (rows, d.index_dim), BF16, timed)
    for shape in ((13, 4, 128), (5, 64), (3, 256), (2, 1024)):
        for dtype in (BF16, F32):
            yield case("ragged", shape, dtype, False)


def fp8_round(d: Dims, rng: Rng) -> Iterator[Case]:
    def case(label: str, shape: tuple[int, ...], block: int, width: int | None, dtype: torch.dtype, timed: bool,
             tiny_block: bool = False) -> Case:
        x = rng.randn(*shape, dtype=dtype)
        if tiny_block:  # a block whose amax is under the scale's floor (1e-4)
            x[..., :block] *= 1e-7
        return Case("fp8_round", f"{label} {'x'.join(map(str, shape))} block={block} width={width or 'all'}",
                    dtype_name(dtype), (x, block, width), 2 * nbytes(x), 0, timed)

    nope = d.head_dim - d.rope
    for rows, timed in _rows(d):
        yield case("kv", (rows, d.head_dim), 64, nope, BF16, timed)  # the kv rows' and entries' non-rope dims
    for dtype in (BF16, F32):
        yield case("ragged", (13, 128), 64, 64, dtype, False, tiny_block=True)
        yield case("ragged", (5, 128), 64, None, dtype, False)
        yield case("ragged", (3, 4, 256), 64, 192, dtype, False)
        yield case("ragged", (7, 512), 128, 384, dtype, False)


def fp4_round(d: Dims, rng: Rng) -> Iterator[Case]:
    def case(label: str, shape: tuple[int, ...], dtype: torch.dtype, timed: bool, zero_block: bool = False) -> Case:
        x = rng.randn(*shape, dtype=dtype)
        if zero_block:  # amax 0: the floor's scale, and zeros out
            x[..., :32] = 0
        return Case("fp4_round", f"{label} {'x'.join(map(str, shape))}", dtype_name(dtype), (x, 32),
                    2 * nbytes(x), 0, timed)

    for rows, timed in _rows(d):
        yield case("index q", (rows, d.index_heads, d.index_dim), BF16, timed)
        yield case("index keys", (rows, d.index_dim), BF16, timed)
    for dtype in (BF16, F32):
        yield case("ragged", (13, 4, 128), dtype, False, zero_block=True)
        yield case("ragged", (5, 64), dtype, False)


def rms_norm(d: Dims, rng: Rng) -> Iterator[Case]:
    """The norms of a layer (hidden, q_lora, kv rows) with their float32 weight, and the query heads' form (no
    weight)."""
    def case(label: str, shape: tuple[int, ...], weighted: bool, dtype: torch.dtype, timed: bool) -> Case:
        x = rng.randn(*shape, dtype=dtype, std=3.0)
        w = 0.5 + rng.rand(shape[-1]) if weighted else None
        return Case("rms_norm", f"{label} {'x'.join(map(str, shape))}{'' if weighted else ' no weight'}",
                    dtype_name(dtype), (x, w, 1e-6), 2 * nbytes(x), 0, timed)

    for rows, timed in _rows(d):
        yield case("hidden", (rows, d.hidden), True, BF16, timed)
        yield case("q_lora", (rows, d.q_lora), True, BF16, timed)
        yield case("q heads", (rows, d.heads, d.head_dim), False, BF16, timed)
    for dtype in (BF16, F32):
        yield case("ragged", (13, 96), True, dtype, False)
        yield case("ragged", (3, 37), True, dtype, False)


def _streams(d: Dims, rng: Rng, rows: int, dtype: torch.dtype) -> torch.Tensor:
    return rng.randn(rows, d.hc, d.hidden, dtype=dtype)


def hc_pre(d: Dims, rng: Rng) -> Iterator[Case]:
    n, iters, eps = d.hc, ModelArgs().hc_sinkhorn_iters, ModelArgs().hc_eps
    mix = (2 + n) * n
    for rows, timed in _rows(d):
        for dtype in (BF16, F32) if not timed else (BF16,):
            x = _streams(d, rng, rows, dtype)
            fn, base = rng.randn(mix, n * d.hidden, std=0.02), rng.randn(mix, std=0.5)
            scale = 0.5 + rng.rand(3)
            yield Case("hc_pre", f"streams {rows}x{n}x{d.hidden}", dtype_name(dtype),
                       (x, fn, scale, base, n, iters, eps, 1e-6), nbytes(x, fn) + nbytes(x) // n,
                       2 * rows * mix * n * d.hidden, timed)


def hc_post(d: Dims, rng: Rng) -> Iterator[Case]:
    n = d.hc
    for rows, timed in _rows(d):
        for dtype in (BF16, F32) if not timed else (BF16,):
            x, o = _streams(d, rng, rows, dtype), rng.randn(rows, d.hidden, dtype=dtype)
            post, comb = 2 * rng.rand(rows, n), rng.rand(rows, n, n)
            yield Case("hc_post", f"streams {rows}x{n}x{d.hidden}", dtype_name(dtype), (o, x, post, comb),
                       2 * nbytes(x) + nbytes(o), 0, timed)
