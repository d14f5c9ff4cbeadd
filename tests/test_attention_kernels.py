"""The C++ sparse-attention and lightning-indexer kernels (csrc/cpu/attention.cpp, indexer.cpp) against their
PyTorch twins in ops_ref, their row and thread-count invariance, and their refusals of bad shapes."""

from __future__ import annotations

import shutil

import pytest
import torch

from v4cli.runtime import kernels, ops, ops_ref

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler on PATH")

EPS32 = 2.0**-24  # float32's unit roundoff
BF16_ULP = 2.0**-7  # bfloat16's spacing relative to a value (8 significant bits), at most


def _threads(n: int):
    class _Ctx:
        def __enter__(self):
            self.old = torch.get_num_threads()
            torch.set_num_threads(n)

        def __exit__(self, *exc):
            torch.set_num_threads(self.old)

    return _Ctx()


def _attention_case(S: int, H: int, D: int, T: int, K: int, N: int, q_dtype: torch.dtype, kv_dtype: torch.dtype,
                    seed: int, scale: float | None = None):
    """Inputs with skipped (-1) candidates, a last row whose candidates are all skipped (only the sink; for
    HCA its limit 0) when S > 1, and limits below 0, inside and past the N dense entries."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(S, H, D, generator=g).to(q_dtype)
    kv = torch.randn(T, D, generator=g).to(kv_dtype)
    sink = torch.randn(H, generator=g) * 2
    idx = torch.randint(0, T, (S, K), generator=g) if T else torch.full((S, K), -1, dtype=torch.long)
    idx = idx.masked_fill(torch.rand(S, K, generator=g) < 0.3, -1)
    if S > 1:
        idx[-1] = -1
    dense = limit = None
    if N:
        dense = torch.randn(N, D, generator=g).to(kv_dtype)
        limit = torch.randint(-2, N + 3, (S,), generator=g)
        if S > 1:
            limit[-1] = 0
        if S > 2:
            limit[0], limit[1] = N, N + 5
    return q, kv, sink, idx, D**-0.5 if scale is None else scale, dense, limit


def _attention_bound(q, kv, idx, scale, dense, limit) -> float:
    """How far the float32 sums may move with the order of summation: each logit sums D products (at most
    D eps of the sum of their magnitudes, L), and the output sums the candidates' K + N weighted values; both
    scaled by the largest value. Twice that (kernel and twin each err)."""
    rows = kv.float() if dense is None else torch.cat([kv.float(), dense.float()])
    mag = (q.float().abs().flatten(0, 1) @ rows.abs().t()).max().item() * scale if rows.numel() else 0.0
    n = idx.shape[1] + (0 if dense is None else dense.shape[0])
    vmax = rows.abs().max().item() if rows.numel() else 0.0
    return 2 * EPS32 * (q.shape[-1] * mag + n + 4) * vmax


def _check_attention(got: torch.Tensor, want: torch.Tensor, bound: float) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.isfinite(got).all()
    err = (got.float() - want.float()).abs()
    if got.dtype == torch.bfloat16:
        # Each side rounds its float32 result to bfloat16 once: one bfloat16 step apart at most, on top.
        assert (err <= BF16_ULP * want.float().abs() + bound).all(), err.max().item()
    else:
        assert err.max().item() <= bound, (err.max().item(), bound)


def test_install_routes_the_attention_ops(built):
    assert "sparse_attention" in built and "indexer_scores" in built
    assert ops.backend("sparse_attention") == kernels.__name__
    assert ops.backend("indexer_scores") == kernels.__name__


@pytest.mark.parametrize("S,H,D,T,K,N", [
    (1, 64, 512, 700, 640, 0),    # decode, DeepSeek-V4's heads: window + top-k candidates
    (1, 64, 512, 128, 128, 300),  # decode on an HCA layer: the window and the dense entries in place
    (9, 8, 512, 300, 64, 40),
    (40, 3, 100, 50, 20, 7),      # D not a multiple of the vector width, an odd head count
    (5, 1, 16, 3, 5, 0),
    (6, 4, 64, 0, 4, 9),          # every idx entry skipped: only dense entries and the sink
    (3, 5, 72, 40, 0, 12),        # no idx columns
    (33, 16, 128, 200, 70, 33),
])
@pytest.mark.parametrize("q_dtype,kv_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                              (torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)])
def test_sparse_attention_matches_twin(built, S, H, D, T, K, N, q_dtype, kv_dtype):
    case = _attention_case(S, H, D, T, K, N, q_dtype, kv_dtype, seed=S * 131 + D)
    if T == 0:  # (the twin gathers row 0 for a skipped entry: kv has one row, no query picks it)
        case = (case[0], torch.randn(1, D).to(kv_dtype), *case[2:])
    got, want = kernels.sparse_attention(*case), ops_ref.sparse_attention(*case)
    _check_attention(got, want, _attention_bound(*case[:2], case[3], case[4], case[5], case[6]))
    if S > 1:  # the row with every candidate skipped (and limit 0): the sink takes all the mass, the output is 0
        assert not got[-1].any()


def test_sparse_attention_large_logits_are_stable(built):
    """Logits in the hundreds (softmax_scale 1 at D 512): the max is subtracted, nothing overflows."""
    case = _attention_case(7, 4, 512, 300, 200, 50, torch.float32, torch.float32, seed=5, scale=1.0)
    got, want = kernels.sparse_attention(*case), ops_ref.sparse_attention(*case)
    assert torch.isfinite(want).all()
    _check_attention(got, want, _attention_bound(*case[:2], case[3], case[4], case[5], case[6]))


def test_sparse_attention_reads_only_the_candidates(built):
    """kv rows no query picks, and dense entries at or past a query's limit, are NaN: never read."""
    q, kv, sink, idx, scale, dense, limit = _attention_case(8, 4, 64, 60, 16, 20, torch.float32, torch.float32, 3)
    limit = limit.clamp(0, 19)
    idx[2, ::3] = -7  # any negative entry is skipped, as the twin masks idx < 0
    unused = torch.ones(60, dtype=torch.bool)
    unused[idx[idx >= 0]] = False
    kv[unused] = float("nan")
    poisoned = dense.clone()
    poisoned[int(limit.max()):] = float("nan")
    got = kernels.sparse_attention(q, kv, sink, idx, scale, poisoned, limit)
    assert torch.isfinite(got).all()
    want = ops_ref.sparse_attention(q, kv.nan_to_num(), sink, idx, scale, dense, limit)
    _check_attention(got, want, _attention_bound(q, kv.nan_to_num(), idx, scale, dense, limit))
    one = torch.zeros(1, 4, 64)  # one candidate and the sink: o = v e^0 / (e^0 + e^sink)
    v = torch.randn(1, 64)
    got = kernels.sparse_attention(one, v, sink, torch.zeros(1, 1, dtype=torch.long), 1.0)
    want = v / (1 + sink.exp()).view(4, 1)
    assert torch.allclose(got[0], want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N", [0, 50])
def test_sparse_attention_rows_do_not_depend_on_the_other_rows_or_threads(built, dtype, N):
    """A query row's result is bit for bit the same computed alone, among other rows, in another order, or
    with another thread count (each changes how the heads are split into tasks)."""
    q, kv, sink, idx, scale, dense, limit = _attention_case(24, 64, 512, 400, 160, N, dtype, dtype, seed=N + 1)
    with _threads(1):
        alone = torch.cat([kernels.sparse_attention(q[i : i + 1], kv, sink, idx[i : i + 1], scale, dense,
                                                    None if limit is None else limit[i : i + 1]) for i in range(24)])
        one = kernels.sparse_attention(q, kv, sink, idx, scale, dense, limit)
    with _threads(2):
        two = kernels.sparse_attention(q, kv, sink, idx, scale, dense, limit)
        pick = torch.randperm(24, generator=torch.Generator().manual_seed(0))[:9]
        some = kernels.sparse_attention(q[pick], kv, sink, idx[pick], scale, dense,
                                        None if limit is None else limit[pick])
        first = kernels.sparse_attention(q[:1], kv, sink, idx[:1], scale, dense, None if limit is None else limit[:1])
    assert torch.equal(one, alone)
    assert torch.equal(two, alone)
    assert torch.equal(some, alone[pick])
    assert torch.equal(first, alone[:1])


def test_sparse_attention_falls_back_to_the_twin(built):
    q, kv, sink, idx, scale, _, _ = _attention_case(3, 2, 32, 10, 4, 0, torch.float32, torch.float32, seed=9)
    half = kernels.sparse_attention(q.half(), kv.half(), sink, idx, scale)  # no float16 kernel: the twin's
    assert torch.equal(half, ops_ref.sparse_attention(q.half(), kv.half(), sink, idx, scale))


def test_sparse_attention_bad_shapes_are_refused_with_a_message(built):
    q, kv, sink, idx, scale, dense, limit = _attention_case(3, 2, 32, 10, 4, 5, torch.float32, torch.float32, 1)
    op = torch.ops.v4cli.sparse_attention
    with pytest.raises(RuntimeError, match=r"kv must be a float32 or bfloat16 \[T, 32\]"):
        op(q, kv[:, :16], sink, idx, scale, None, None)
    with pytest.raises(RuntimeError, match=r"q must be a float32 or bfloat16 \[S, H, D\]"):
        op(q[0], kv, sink, idx, scale, None, None)
    with pytest.raises(RuntimeError, match=r"sink must be a float32 \[2\]"):
        op(q, kv, sink[:1], idx, scale, None, None)
    with pytest.raises(RuntimeError, match=r"idx must be an int64 \[3, K\]"):
        op(q, kv, sink, idx[:2], scale, None, None)
    with pytest.raises(RuntimeError, match=r"idx\[1, 2\] = 10 is past kv's 10 rows"):
        bad = idx.clone()
        bad[1, 2] = 10
        op(q, kv, sink, bad, scale, None, None)
    with pytest.raises(RuntimeError, match=r"dense must be a float32 or bfloat16 \[N, 32\]"):
        op(q, kv, sink, idx, scale, dense[:, :8], limit)
    with pytest.raises(RuntimeError, match="dense entries need a limit"):
        op(q, kv, sink, idx, scale, dense, None)
    with pytest.raises(RuntimeError, match=r"limit must be an int64 \[3\]"):
        op(q, kv, sink, idx, scale, dense, limit[:2])


# ---- indexer scores ------------------------------------------------------------------------------------------------


def _indexer_case(S: int, H: int, D: int, T: int, q_dtype: torch.dtype, k_dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(S, H, D, generator=g).to(q_dtype)
    w = torch.randn(S, H, generator=g) * (D**-0.5 * H**-0.5)  # as the Indexer scales them
    keys = torch.randn(T, D, generator=g).to(k_dtype)
    return q, w, keys


def _check_indexer(got: torch.Tensor, want: torch.Tensor, q, w, keys) -> None:
    """float32 q: the order of the float32 sums only (D products per head, then H heads, each side).
    bfloat16 q: the twin's einsum rounds each product q.k and the sum to bfloat16 (the kernel does too, from its
    own float32 sums), so where the two float32 values straddle a rounding boundary they land one bfloat16 step
    apart (<= 2^-7 of the value): a product that moves changes the sum by <= 2^-7 |w| |q.k|, the sum's own
    rounding by <= 2^-7 of it. Bounded by 2^-6 sum_h |w| |q.k| (and the float32 part); most agree exactly."""
    assert got.shape == want.shape and got.dtype == torch.float32
    qd, kd = q.to(keys.dtype if q.dtype == torch.float32 else q.dtype).double(), keys.to(q.dtype).double()
    dots = torch.einsum("shd,td->sht", qd, kd)
    wd = w.to(q.dtype).double()
    mag = torch.einsum("sh,sht->st", wd.abs(), dots.abs())
    prods = torch.einsum("sh,shd,td->st", wd.abs(), qd.abs(), kd.abs())
    bound = 2 * EPS32 * (q.shape[-1] + q.shape[1] + 2) * prods
    if q.dtype == torch.bfloat16:
        bound = bound + 2 * BF16_ULP * mag
    err = (got.double() - want.double()).abs()
    assert (err <= bound + 1e-30).all(), (err - bound).max().item()
    if q.dtype == torch.bfloat16:
        assert (got == want).float().mean().item() > 0.9


@pytest.mark.parametrize("S,H,D,T", [(1, 64, 128, 1000), (7, 64, 128, 300), (9, 4, 128, 77), (17, 5, 33, 200),
                                     (3, 13, 128, 49), (40, 16, 64, 500), (2, 1, 8, 1),
                                     # few heads: a register tile's rows of q span queries, a task's rows too
                                     (50, 3, 128, 97), (45, 4, 64, 130), (37, 5, 128, 61), (70, 1, 32, 50)])
@pytest.mark.parametrize("q_dtype,k_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                             (torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_indexer_scores_matches_twin(built, S, H, D, T, q_dtype, k_dtype):
    q, w, keys = _indexer_case(S, H, D, T, q_dtype, k_dtype, seed=S * 7 + T)
    _check_indexer(kernels.indexer_scores(q, w, keys), ops_ref.indexer_scores(q, w, keys), q, w, keys)


def test_indexer_scores_empty(built):
    q, w, keys = _indexer_case(3, 4, 16, 0, torch.float32, torch.float32, seed=0)
    assert kernels.indexer_scores(q, w, keys).shape == (3, 0)
    assert kernels.indexer_scores(q[:0], w[:0], torch.randn(5, 16)).shape == (0, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_indexer_scores_do_not_depend_on_the_other_rows_keys_or_threads(built, dtype):
    """A score is bit for bit the same whatever the other query rows, however many keys follow or precede it
    (the Indexer's keys grow with the context), and whatever the thread count."""
    q, w, keys = _indexer_case(21, 64, 128, 700, dtype, dtype, seed=3)
    with _threads(1):
        alone = torch.cat([kernels.indexer_scores(q[i : i + 1], w[i : i + 1], keys) for i in range(21)])
        one = kernels.indexer_scores(q, w, keys)
    with _threads(2):
        two = kernels.indexer_scores(q, w, keys)
        fewer = kernels.indexer_scores(q, w, keys[:333])
        later = kernels.indexer_scores(q[5:], w[5:], keys[101:])
    assert torch.equal(one, alone)
    assert torch.equal(two, alone)
    assert torch.equal(fewer, alone[:, :333])
    assert torch.equal(later, alone[5:, 101:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("H", [3, 4, 5])
def test_indexer_scores_with_few_heads_do_not_depend_on_the_other_rows_or_threads(built, H, dtype):
    """With fewer heads than a register tile has rows, a tile's rows of q are (query, head) pairs of several
    queries, and where a query's heads fall in a tile depends on the rows before it: its scores must not."""
    S = 75  # not a multiple of the queries per tile or per task
    q, w, keys = _indexer_case(S, H, 128, 150, dtype, dtype, seed=H)
    with _threads(1):
        alone = torch.cat([kernels.indexer_scores(q[i : i + 1], w[i : i + 1], keys) for i in range(S)])
        one = kernels.indexer_scores(q, w, keys)
    with _threads(2):
        two = kernels.indexer_scores(q, w, keys)
        later = kernels.indexer_scores(q[3:], w[3:], keys[7:])
    assert torch.equal(one, alone)
    assert torch.equal(two, alone)
    assert torch.equal(later, alone[3:, 7:])
    _check_indexer(one, ops_ref.indexer_scores(q, w, keys), q, w, keys)


def test_indexer_scores_bad_shapes_are_refused_with_a_message(built):
    q, w, keys = _indexer_case(3, 4, 16, 10, torch.float32, torch.float32, seed=1)
    op = torch.ops.v4cli.indexer_scores
    with pytest.raises(RuntimeError, match=r"keys must be a float32 or bfloat16 \[T, 16\]"):
        op(q, w, keys[:, :8])
    with pytest.raises(RuntimeError, match=r"weights must be a float32 \[3, 4\]"):
        op(q, w[:, :2], keys)
    with pytest.raises(RuntimeError, match=r"q must be a float32 or bfloat16 \[S, H, D\]"):
        op(q.double(), w, keys)
