"""The CUDA row-wise ops (csrc/cuda/pointwise.cu, rounding.cu) against their twins, at the model's shapes (those of
bench/gpucheck/cases_point.py) and ragged ones: hc_sinkhorn, rope and hadamard to a float64 reference (1e-5 for
float32, 1e-2 for bfloat16), the FP8/FP4 roundings bit for bit with the twin on the GPU; plus the paths for
widths that do not split into vectors, strided and misaligned inputs, empty ones, and the fallbacks."""

from __future__ import annotations

import pytest
import torch

from cudakit import installed, rel  # noqa: F401 (installed: an autouse fixture)
from v4cli.runtime import cuda_kernels, ops, ops_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

POINTWISE = ("hc_sinkhorn", "rope", "hadamard", "fp8_round", "fp4_round")
ROWS = (1, 8, 32, 512, 77)  # decode, prefill, a ragged tail


def _tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-2


def _misaligned(x: torch.Tensor) -> torch.Tensor:
    """x's values in a contiguous tensor that starts one element past an allocation's (16-byte) alignment."""
    flat = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)[1:]
    return flat.copy_(x.flatten()).view(x.shape)


def test_the_seam_routes_the_pointwise_ops_here() -> None:
    for name in POINTWISE:
        assert ops.backend(name, "cuda") == cuda_kernels.__name__, name


# ---- hc_sinkhorn ---------------------------------------------------------------------------------------------------
def _sinkhorn_inputs(rows: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mixes = torch.randn(rows, (2 + n) * n, device="cuda") * 0.5
    return mixes, torch.rand(3, device="cuda") + 0.5, torch.randn((2 + n) * n, device="cuda") * 0.5


@pytest.mark.parametrize("n", [4, 2, 1, 3, 8])
@pytest.mark.parametrize("rows", ROWS)
def test_hc_sinkhorn(n: int, rows: int) -> None:
    mixes, scale, base = _sinkhorn_inputs(rows, n)
    got = cuda_kernels.hc_sinkhorn(mixes, scale, base, n, 20, 1e-6)
    want = ops_ref.hc_sinkhorn(mixes.double(), scale.double(), base.double(), n, 20, 1e-6)
    for g, w, shape in zip(got, want, [(rows, n), (rows, n), (rows, n, n)], strict=True):
        assert g.dtype == torch.float32 and g.shape == shape and g.is_cuda
        assert rel(g, w) < 1e-5


@pytest.mark.parametrize("iters", [1, 2, 7])
def test_hc_sinkhorn_iterations(iters: int) -> None:
    mixes, scale, base = _sinkhorn_inputs(33, 4)
    got = cuda_kernels.hc_sinkhorn(mixes, scale, base, 4, iters, 1e-6)
    want = ops_ref.hc_sinkhorn(mixes.double(), scale.double(), base.double(), 4, iters, 1e-6)
    for g, w in zip(got, want, strict=True):
        assert rel(g, w) < 1e-5


def test_hc_sinkhorn_takes_bf16_logits_host_scales_and_no_rows() -> None:
    mixes, scale, base = _sinkhorn_inputs(9, 4)
    got = torch.ops.v4cli.hc_sinkhorn(mixes.bfloat16(), scale.cpu(), base, 4, 20, 1e-6)
    want = ops_ref.hc_sinkhorn(mixes.bfloat16().double(), scale.double(), base.double(), 4, 20, 1e-6)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and rel(g, w) < 1e-5
    empty = cuda_kernels.hc_sinkhorn(mixes[:0], scale, base, 4, 20, 1e-6)
    assert [tuple(t.shape) for t in empty] == [(0, 4), (0, 4), (0, 4, 4)]


# ---- rope ----------------------------------------------------------------------------------------------------------
def _angles(rows: int, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    ang = torch.randint(0, 1 << 20, (rows, 1), device="cuda").float() * torch.rand(half, device="cuda")
    return ang.cos(), ang.sin()


def _check_rope(x: torch.Tensor, half: int, inverse: bool) -> None:
    cos, sin = _angles(x.shape[0], half)
    got = cuda_kernels.rope(x, cos, sin, inverse)
    want = ops_ref.rope(x.double(), cos.double(), sin.double(), inverse)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert rel(got, want) < _tol(x.dtype)
    nope = x.shape[-1] - 2 * half
    assert torch.equal(got[..., :nope], x[..., :nope])  # the other dims copied


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape,half,inverse", [
    ((64, 512), 32, False),  # queries
    ((512,), 32, False),  # kv rows
    ((64, 512), 32, True),  # the output's inverse rotation
    ((64, 128), 32, False),  # the indexer's queries
])
def test_rope_at_the_models_shapes(rows: int, shape: tuple[int, ...], half: int, inverse: bool) -> None:
    _check_rope(torch.randn(rows, *shape, device="cuda").bfloat16(), half, inverse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,half,inverse", [
    ((13, 4, 128), 32, False),
    ((5, 96), 16, True),
    ((3, 2, 64), 32, False),  # every dim rotated
    ((4, 2, 100), 16, False),  # nope 68: pairs of values a thread for bf16
    ((5, 3, 37), 9, True),  # odd widths: a value a thread
    ((6, 2, 3, 40), 20, False),  # two middle dims
])
def test_rope_ragged(dtype: torch.dtype, shape: tuple[int, ...], half: int, inverse: bool) -> None:
    _check_rope(torch.randn(*shape, device="cuda").to(dtype), half, inverse)


def test_rope_strided_misaligned_and_empty() -> None:
    x = torch.randn(4, 128, 8, device="cuda").bfloat16().transpose(1, 2)  # [4, 8, 128], not contiguous
    _check_rope(x, 32, False)
    _check_rope(_misaligned(torch.randn(7, 2, 64, device="cuda")), 32, True)
    cos, sin = _angles(0, 32)
    assert cuda_kernels.rope(torch.empty(0, 4, 128, device="cuda"), cos, sin).shape == (0, 4, 128)


def test_rope_falls_back_for_broadcast_angles() -> None:
    x = torch.randn(5, 4, 64, device="cuda")
    cos, sin = _angles(1, 16)
    assert torch.equal(cuda_kernels.rope(x, cos, sin), ops_ref.rope(x, cos, sin))


# ---- hadamard ------------------------------------------------------------------------------------------------------
def _check_hadamard(x: torch.Tensor) -> None:
    got = cuda_kernels.hadamard(x)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert rel(got, ops_ref.hadamard(x.double())) < _tol(x.dtype)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", [(64, 128), (128,)])  # the indexer's queries and keys
def test_hadamard_at_the_models_shapes(rows: int, shape: tuple[int, ...]) -> None:
    _check_hadamard(torch.randn(rows, *shape, device="cuda").bfloat16())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(13, 4, 128), (5, 64), (3, 256), (9, 512), (2, 1024), (33, 32), (7, 16), (5, 3, 2),
                                   (4, 1)])
def test_hadamard_ragged(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    _check_hadamard(torch.randn(*shape, device="cuda").to(dtype))


def test_hadamard_strided_misaligned_empty_and_too_wide() -> None:
    _check_hadamard(torch.randn(128, 6, device="cuda").t())
    _check_hadamard(_misaligned(torch.randn(3, 128, device="cuda").bfloat16()))
    assert cuda_kernels.hadamard(torch.empty(0, 128, device="cuda")).shape == (0, 128)
    x = torch.randn(2, 2048, device="cuda")  # past the kernel's widest row: the twin
    assert torch.equal(cuda_kernels.hadamard(x), ops_ref.hadamard(x))


# ---- fp8_round, fp4_round: bit for bit -----------------------------------------------------------------------------
def _awkward(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    """Values across binades, blocks of zeros and blocks under the FP8 scale's floor."""
    x = torch.randn(*shape, device="cuda") * torch.exp2(torch.randint(-12, 8, shape[:-1] + (1,), device="cuda"))
    x = x.to(dtype)
    x.view(-1, shape[-1])[0, :32] = 0
    x.view(-1, shape[-1])[-1, :64] *= 1e-7
    return x


def _check_exact(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want), f"{(got != want).sum().item()} values differ"


@pytest.mark.parametrize("rows", ROWS)
def test_fp8_round_kv_rows(rows: int) -> None:
    x = torch.randn(rows, 512, device="cuda").bfloat16()  # the kv rows' non-rope dims, blocks of 64
    _check_exact(cuda_kernels.fp8_round(x, 64, 448), ops_ref.fp8_round(x, 64, 448))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,block,width", [
    ((13, 128), 64, 64), ((5, 128), 64, None), ((3, 4, 256), 64, 192), ((7, 512), 128, 384),
    ((6, 100), 32, 64),  # rows that do not split into 16-byte vectors: a thread per block
    ((4, 512), 256, 256),  # blocks wider than a warp's vectors
    ((3, 24), 8, 16), ((5, 64), 64, 0),  # blocks under a vector; nothing rounded
])
def test_fp8_round(dtype: torch.dtype, shape: tuple[int, ...], block: int, width: int | None) -> None:
    x = _awkward(*shape, dtype=dtype)
    _check_exact(cuda_kernels.fp8_round(x, block, width), ops_ref.fp8_round(x, block, width))


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", [(64, 128), (128,)])  # the indexer's queries and keys
def test_fp4_round_at_the_models_shapes(rows: int, shape: tuple[int, ...]) -> None:
    x = torch.randn(rows, *shape, device="cuda").bfloat16()
    _check_exact(cuda_kernels.fp4_round(x, 32), ops_ref.fp4_round(x, 32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,block", [((13, 4, 128), 32), ((5, 64), 32), ((3, 96), 16), ((4, 40), 4),
                                         ((2, 256), 256)])
def test_fp4_round(dtype: torch.dtype, shape: tuple[int, ...], block: int) -> None:
    x = _awkward(*shape, dtype=dtype)
    _check_exact(cuda_kernels.fp4_round(x, block), ops_ref.fp4_round(x, block))


def test_roundings_strided_misaligned_and_empty() -> None:
    x = torch.randn(128, 6, device="cuda").bfloat16().t()
    _check_exact(cuda_kernels.fp4_round(x), ops_ref.fp4_round(x))
    _check_exact(cuda_kernels.fp8_round(x, 64, 64), ops_ref.fp8_round(x, 64, 64))
    y = _misaligned(torch.randn(5, 128, device="cuda"))
    _check_exact(cuda_kernels.fp8_round(y, 64), ops_ref.fp8_round(y, 64))
    _check_exact(cuda_kernels.fp4_round(y), ops_ref.fp4_round(y))
    assert cuda_kernels.fp8_round(torch.empty(0, 512, device="cuda"), 64, 448).shape == (0, 512)
    assert cuda_kernels.fp4_round(torch.empty(0, 128, device="cuda").bfloat16()).shape == (0, 128)


def test_roundings_keep_nan_and_inf_blocks_as_the_twins() -> None:
    """A block with a NaN (either rounding) or an infinity (FP8) comes out NaN throughout, the others as usual."""
    x = torch.randn(4, 128, device="cuda")
    x[1, 3] = float("nan")
    y = x.clone()
    y[2, 70] = float("inf")
    for got, want in ((cuda_kernels.fp8_round(y, 64), ops_ref.fp8_round(y, 64)),
                      (cuda_kernels.fp4_round(x), ops_ref.fp4_round(x))):
        assert torch.equal(got.isnan(), want.isnan())
        finite = want.isfinite()
        assert torch.equal(got[finite], want[finite])
