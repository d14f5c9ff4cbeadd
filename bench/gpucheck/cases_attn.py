"""Inputs of the attention ops (sparse_attention, indexer_scores), from their twins' docstrings: candidates laid
out as the model gathers them (the window ring's rows, then CSA's picked entries; HCA's entries read in place up
to each query's limit) at 8K and 128K tokens of context, and ragged small cases (skipped candidates, a query with
none, limits below 0 and past the entries, no rows at all)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .common import Case, Dims, Rng, dtype_name, nbytes

BF16, F32 = torch.bfloat16, torch.float32


def window_idx(S: int, W: int, n_prev: int, device: torch.device) -> torch.Tensor:
    """The model's window candidates [S, W] for S queries after n_prev ring rows (rows n_prev.. are the queries')."""
    idx = torch.arange(S, device=device)[:, None] + n_prev - W + 1 + torch.arange(W, device=device)[None]
    return idx.masked_fill(idx < 0, -1)


def _distinct(rng: Rng, S: int, lo: int, hi: int, k: int) -> torch.Tensor:
    """k distinct rows of [lo, hi) per query (-1 past the hi - lo available)."""
    picks = rng.rand(S, hi - lo).argsort(dim=1)[:, :k] + lo
    if picks.shape[1] < k:
        picks = torch.cat([picks, picks.new_full((S, k - picks.shape[1]), -1)], dim=1)
    return picks


def _attention(label: str, rng: Rng, q_shape: tuple[int, int, int], T: int, idx: torch.Tensor, n_dense: int,
               limit: torch.Tensor | None, dtype: torch.dtype, timed: bool) -> Case:
    S, H, D = q_shape
    q, kv = rng.randn(S, H, D, dtype=dtype), rng.randn(T, D, dtype=dtype)  # both RMS 1, as the model's
    sink = rng.randn(H)
    dense = rng.randn(n_dense, D, dtype=dtype) if n_dense else None
    used = torch.unique(idx[idx >= 0]).numel()  # rows of kv it must read
    moved = 2 * nbytes(q) + nbytes(sink, idx, dense, limit) + used * D * kv.element_size()
    return Case("sparse_attention", label, dtype_name(dtype), (q, kv, sink, idx, D**-0.5, dense, limit), moved,
                4 * S * H * D * (idx.shape[1] + n_dense), timed)


def _csa(rng: Rng, d: Dims, S: int, ctx: int) -> Case:
    """S queries at position ctx of a CSA layer: the window, then index_topk of the ctx/4 entries each."""
    W, dev = d.window, rng.device
    entries = min(S * d.index_topk, ctx // 4)  # the distinct entries the batch's picks gather
    base = W - 1 + S
    idx = torch.cat([window_idx(S, W, W - 1, dev), _distinct(rng, S, base, base + entries, d.index_topk)], dim=1)
    return _attention(f"CSA ctx={ctx} S={S} K={idx.shape[1]}", rng, (S, d.heads, d.head_dim), base + entries, idx, 0,
                      None, BF16, True)


def _hca(rng: Rng, d: Dims, S: int, ctx: int) -> Case:
    """S queries at position ctx of an HCA layer: the window, and every closed entry read in place."""
    W, dev = d.window, rng.device
    n = (ctx + S) // 128
    limit = (torch.arange(ctx, ctx + S, device=dev) + 1) // 128
    return _attention(f"HCA ctx={ctx} S={S} N={n}", rng, (S, d.heads, d.head_dim), W - 1 + S,
                      window_idx(S, W, W - 1, dev), n, limit, BF16, True)


def sparse_attention(d: Dims, rng: Rng) -> Iterator[Case]:
    yield _attention("SWA decode S=1", rng, (1, d.heads, d.head_dim), d.window,
                     window_idx(1, d.window, d.window - 1, rng.device), 0, None, BF16, True)
    for ctx in d.contexts:
        for S in d.decode:
            yield _csa(rng, d, S, ctx)
            yield _hca(rng, d, S, ctx)
    yield _csa(rng, d, d.prefill, d.contexts[0])
    yield _hca(rng, d, d.prefill, d.contexts[0])
    for dtype in (BF16, F32):
        for S, T, K, N in ((1, 37, 19, 0), (5, 37, 19, 0), (5, 37, 19, 7), (13, 200, 64, 3)):
            idx = _distinct(rng, S, 0, T, K)
            idx = idx.masked_fill(rng.rand(S, K) < 0.2, -1)
            limit = rng.randint(-2, N + 3, (S,)) if N else None
            if S > 1:
                idx[-1] = -1  # a query with no candidate left: only the sink
                if limit is not None:
                    limit[-1] = 0
            yield _attention(f"ragged S={S} T={T} K={K} N={N}", rng, (S, 4, 128), T, idx, N, limit, dtype, False)


def _indexer(label: str, rng: Rng, S: int, H: int, D: int, T: int, dtype: torch.dtype, timed: bool) -> Case:
    q, keys = rng.randn(S, H, D, dtype=dtype), rng.randn(T, D, dtype=dtype)
    weights = rng.randn(S, H, std=D**-0.5 * H**-0.5)  # weights_proj(x) * weight_scale, float32
    return Case("indexer_scores", f"{label} S={S} T={T}", dtype_name(dtype), (q, weights, keys),
                nbytes(q, weights, keys) + S * T * 4, 2 * S * H * T * D, timed)


def indexer_scores(d: Dims, rng: Rng) -> Iterator[Case]:
    for ctx in d.contexts:  # T = the ctx/4 closed CSA entries every query scores
        for S in d.decode:
            yield _indexer(f"ctx={ctx}", rng, S, d.index_heads, d.index_dim, ctx // 4, BF16, True)
    yield _indexer(f"prefill ctx={d.contexts[0]}", rng, d.prefill, d.index_heads, d.index_dim, d.contexts[0] // 4,
                   BF16, True)
    for dtype in (BF16, F32):
        for S, T in ((1, 1), (5, 37), (13, 300)):
            yield _indexer("ragged H=16", rng, S, 16, 128, T, dtype, False)
