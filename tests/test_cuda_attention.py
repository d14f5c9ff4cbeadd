"""The CUDA sparse_attention and indexer_scores against float64 references (run where a CUDA device is; skipped
elsewhere): both kernels of each op (tensor cores for bfloat16 at the model's widths, SIMT for float32 and odd
shapes), split candidates (few rows), skipped candidates, a row with none, dense entries with limits."""

from __future__ import annotations

import pytest
import torch

from cudakit import installed, rel  # noqa: F401 (installed: an autouse fixture)
from v4cli.runtime import cuda_kernels, ops

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def _attention_f64(q, kv, sink, idx, scale, dense, limit) -> torch.Tensor:
    """The twin's formula in float64, by blocks of rows (the gathered [s, K, D] stays small)."""
    S, H, D = q.shape
    out = torch.empty(S, H, D, dtype=torch.float64, device=q.device)
    kvd, dd = kv.double(), None if dense is None else dense.double()
    for s0 in range(0, S, 64):
        qb, ib = q[s0 : s0 + 64].double(), idx[s0 : s0 + 64]
        g = kvd[ib.clamp_min(0)]
        logits = torch.einsum("shd,skd->shk", qb, g) * scale
        parts = [logits.masked_fill((ib < 0)[:, None, :], float("-inf"))]
        if dd is not None:
            dl = torch.einsum("shd,nd->shn", qb, dd) * scale
            hidden = torch.arange(dd.shape[0], device=q.device) >= limit[s0 : s0 + 64, None]
            parts.append(dl.masked_fill(hidden[:, None, :], float("-inf")))
        parts.append(sink.double().view(1, -1, 1).expand(qb.shape[0], -1, 1))
        p = torch.softmax(torch.cat(parts, dim=-1), dim=-1)
        o = torch.einsum("shk,skd->shd", p[..., : ib.shape[1]], g)
        if dd is not None:
            o += torch.einsum("shn,nd->shd", p[..., ib.shape[1] : -1], dd)
        out[s0 : s0 + 64] = o
    return out


def _attention_inputs(S, H, D, T, K, N, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(S, H, D, device="cuda", generator=g).to(dtype)
    kv = torch.randn(T, D, device="cuda", generator=g).to(dtype)
    sink = torch.randn(H, device="cuda", generator=g)
    idx = torch.rand(S, T, device="cuda", generator=g).argsort(dim=1)[:, :K]
    idx = idx.masked_fill(torch.rand(S, K, device="cuda", generator=g) < 0.2, -1)
    dense = limit = None
    if N:
        dense = torch.randn(N, D, device="cuda", generator=g).to(dtype)
        limit = torch.randint(-2, N + 3, (S,), device="cuda", generator=g)
    if S > 1:
        idx[-1] = -1  # a row with no candidate: all mass on the sink, output 0
        if limit is not None:
            limit[-1] = 0
    return q, kv, sink, idx, D**-0.5, dense, limit


ATTN_SHAPES = [  # S, H, D, T, K, N
    (1, 64, 512, 300, 160, 0),  # decode, tensor cores, split candidates
    (1, 64, 512, 300, 160, 1024),  # HCA decode: dense entries
    (8, 64, 512, 1000, 640, 0),
    (32, 64, 512, 1000, 640, 64),
    (512, 64, 512, 2000, 640, 0),  # a prefill chunk, no split
    (5, 8, 512, 100, 37, 7),  # H = 8: SIMT
    (3, 16, 64, 50, 19, 5),
    (4, 32, 128, 80, 40, 0),
    (6, 48, 192, 90, 33, 9),
    (2, 4, 100, 37, 19, 3),  # odd D: SIMT
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", ATTN_SHAPES)
def test_sparse_attention(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    S, H, D, T, K, N = shape
    args = _attention_inputs(S, H, D, T, K, N, dtype)
    got = cuda_kernels.sparse_attention(*args)
    want = _attention_f64(*args)
    assert got.dtype == dtype and got.shape == (S, H, D)
    assert rel(got, want) < (1e-5 if dtype == torch.float32 else 1e-2)
    if S > 1:
        assert torch.equal(got[-1].float(), torch.zeros_like(got[-1].float()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_sparse_attention_long_prefill(dtype: torch.dtype) -> None:
    args = _attention_inputs(4096, 64, 512, 5000, 640, 0, dtype, seed=1)
    got = cuda_kernels.sparse_attention(*args)
    want = _attention_f64(*args)
    assert rel(got, want) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_sparse_attention_takes_strided_and_unaligned_views() -> None:
    q, kv, sink, idx, scale, dense, limit = _attention_inputs(3, 64, 512, 200, 50, 20, torch.bfloat16)
    q2 = q.transpose(0, 1).contiguous().transpose(0, 1)  # strided
    kv2 = kv.new_empty(200 * 512 + 1)[1:].view(200, 512).copy_(kv)  # 2 bytes off: not 16-byte aligned rows
    got = cuda_kernels.sparse_attention(q2, kv2, sink, idx.int(), scale, dense, limit)
    assert rel(got, _attention_f64(q, kv, sink, idx, scale, dense, limit)) < 1e-2


def _indexer_f64(q, w, keys) -> torch.Tensor:
    dots = torch.einsum("shd,td->sht", q.double(), keys.double()).relu()
    return torch.einsum("sh,sht->st", w.double(), dots)


INDEX_SHAPES = [  # S, H, D, T
    (1, 64, 128, 2048),
    (32, 64, 128, 4096),
    (512, 64, 128, 8192),
    (5, 16, 128, 37),
    (3, 32, 64, 300),
    (3, 8, 128, 300),  # H = 8: SIMT
    (4, 4, 100, 77),  # odd D: SIMT
    (2, 64, 128, 1),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", INDEX_SHAPES)
def test_indexer_scores(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    S, H, D, T = shape
    g = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(S, H, D, device="cuda", generator=g).to(dtype)
    keys = torch.randn(T, D, device="cuda", generator=g).to(dtype)
    w = torch.randn(S, H, device="cuda", generator=g) * (D * H) ** -0.5
    got = cuda_kernels.indexer_scores(q, w, keys)
    # bfloat16: the twin's roundings (products, weights, the sum) are within the tolerance of the exact value
    want = _indexer_f64(q, w, keys)
    assert got.dtype == torch.float32 and got.shape == (S, T)
    assert rel(got, want) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_indexer_scores_at_a_long_context() -> None:
    g = torch.Generator(device="cuda").manual_seed(3)
    q = torch.randn(4, 64, 128, device="cuda", generator=g).bfloat16()
    keys = torch.randn(262144, 128, device="cuda", generator=g).bfloat16()
    w = torch.randn(4, 64, device="cuda", generator=g) / 90
    assert rel(cuda_kernels.indexer_scores(q, w, keys), _indexer_f64(q, w, keys)) < 1e-2


def test_the_seam_routes_cuda_tensors_here() -> None:
    assert ops.backend("sparse_attention", "cuda") == cuda_kernels.__name__
    assert ops.backend("indexer_scores", "cuda") == cuda_kernels.__name__
