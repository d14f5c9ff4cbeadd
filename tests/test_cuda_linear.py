"""fp8_linear, fp4_linear and dense_linear on the GPU (csrc/cuda/linear*.cu) against a float64 product of the same
quantized inputs: V4's real widths (hidden 4096, q_lora 1024, 64 heads x 512, the head 129280 x 4096) at decode
and prefill row counts, ragged sizes (the SIMT path), float32 inputs (to 1e-5), the act_quant rounding bit for bit,
a strided input, empty inputs; plus row invariance (a row alone equals that row among others, bit for bit)."""

from __future__ import annotations

import pytest
import torch

from cudakit import rel
from v4cli.runtime import cuda_kernels, kernels, ops, ops_ref, quant

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
BF16, F32 = torch.bfloat16, torch.float32


@pytest.fixture(scope="module", autouse=True)
def cuda_built():
    mp = pytest.MonkeyPatch()
    mp.setenv("V4_KERNELS", "1")
    line = kernels.install("cuda")
    assert "CUDA kernels:" in line, line
    for name in ("fp8_linear", "fp4_linear", "dense_linear"):
        assert ops.backend(name, "cuda") == cuda_kernels.__name__
    yield line
    ops.reset()
    mp.undo()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def _randn(*shape: int, g: torch.Generator, std: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g, device="cuda") * std


def _fp8(n: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.device("cuda"):
        return quant.quantize_fp8(_randn(n, k, g=g, std=k**-0.5))


def _fp4(n: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return quant.quantize_fp4(_randn(n, k, g=g, std=k**-0.5))


def _tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == F32 else 1e-2


def _quant_ref(op: str, x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, act: bool) -> torch.Tensor:
    xin = quant.act_quant(x) if act else x
    deq = quant.dequant_fp8 if op == "fp8_linear" else quant.dequant_fp4
    return xin.double() @ deq(w, s, torch.float64).t()


HIDDEN, Q_LORA, HEADS, HEAD_DIM, VOCAB = 4096, 1024, 64, 512, 129280
FP8_SHAPES = [(Q_LORA, HIDDEN), (HEADS * HEAD_DIM, Q_LORA), (HEAD_DIM, HIDDEN), (HIDDEN, 8 * 1024), (2048, HIDDEN)]
ROWS = (1, 8, 32, 512)


@pytest.mark.parametrize("n,k", FP8_SHAPES)
@pytest.mark.parametrize("rows", ROWS)
def test_fp8_linear_at_model_shapes(n: int, k: int, rows: int) -> None:
    g = _gen(n + k + rows)
    w, s = _fp8(n, k, g)
    x = _randn(rows, k, g=g).to(BF16)
    got = cuda_kernels.fp8_linear(x, w, s, True)
    assert got.dtype == BF16 and got.shape == (rows, n)
    assert rel(got, _quant_ref("fp8_linear", x, w, s, True)) < 1e-2


@pytest.mark.parametrize("n,k", [(2048, HIDDEN), (HIDDEN, 2048)])
@pytest.mark.parametrize("rows", ROWS)
def test_fp4_linear_at_model_shapes(n: int, k: int, rows: int) -> None:
    g = _gen(n + k + rows)
    w, s = _fp4(n, k, g)
    x = _randn(rows, k, g=g).to(BF16)
    got = cuda_kernels.fp4_linear(x, w, s, True)
    assert got.dtype == BF16 and got.shape == (rows, n)
    assert rel(got, _quant_ref("fp4_linear", x, w, s, True)) < 1e-2


@pytest.mark.parametrize("op", ["fp8_linear", "fp4_linear"])
@pytest.mark.parametrize("dtype,act", [(F32, False), (F32, True), (BF16, False)])
def test_float32_and_unrounded_inputs(op: str, dtype: torch.dtype, act: bool) -> None:
    g = _gen(3)
    n, k = 1024, 4096
    w, s = (_fp8 if op == "fp8_linear" else _fp4)(n, k, g)
    for rows in (1, 77):
        x = _randn(rows, k, g=g).to(dtype)
        got = getattr(cuda_kernels, op)(x, w, s, act)
        assert got.dtype == dtype
        assert rel(got, _quant_ref(op, x, w, s, act)) < _tol(dtype)


# (N, K) off the tensor cores' steps (SIMT) and on them with N tails
RAGGED = {"fp8_linear": [(200, 320), (77, 96), (129, 130), (130, 64)], "fp4_linear": [(77, 96), (130, 288), (33, 128)]}


@pytest.mark.parametrize("op,n,k", [(op, n, k) for op, shapes in RAGGED.items() for n, k in shapes])
@pytest.mark.parametrize("dtype,act", [(BF16, True), (BF16, False), (F32, True), (F32, False)])
def test_ragged_shapes(op: str, n: int, k: int, dtype: torch.dtype, act: bool) -> None:
    g = _gen(n * k)
    w, s = (_fp8 if op == "fp8_linear" else _fp4)(n, k, g)
    for rows in (1, 5, 77):
        x = _randn(rows, k, g=g).to(dtype)
        got = getattr(cuda_kernels, op)(x, w, s, act)
        assert got.shape == (rows, n) and got.dtype == dtype
        assert rel(got, _quant_ref(op, x, w, s, act)) < _tol(dtype)


def test_act_quant_is_the_references_rounding() -> None:
    """With an identity-like weight (one e4m3 1.0 per row) the product returns the rounded input itself."""
    g = _gen(5)
    k = 4096 + 64  # a tail block of 64
    w = torch.eye(k, device="cuda").to(torch.float8_e4m3fn)
    s = torch.full(((k + 127) // 128, (k + 127) // 128), 127, dtype=torch.uint8, device="cuda")
    x = _randn(3, k, g=g) * torch.exp2(torch.randint(-20, 10, (3, k), device="cuda").float())
    x[0, :128] = 0.0
    got = cuda_kernels.fp8_linear(x, w, s.view(torch.float8_e8m0fnu), True)
    assert torch.equal(got, quant.act_quant(x))


def test_a_strided_group_of_the_heads_output() -> None:
    g = _gen(6)
    w, s = _fp8(1024, 4096, g)
    x = _randn(8, 8, 4096, g=g).to(BF16)[:, -1]
    assert not x.is_contiguous()
    got = cuda_kernels.fp8_linear(x, w, s, False)
    assert rel(got, _quant_ref("fp8_linear", x.contiguous(), w, s, False)) < 1e-2


def test_empty_and_batched_shapes() -> None:
    g = _gen(7)
    w, s = _fp8(64, 256, g)
    out = cuda_kernels.fp8_linear(torch.empty(0, 256, device="cuda", dtype=BF16), w, s, True)
    assert out.shape == (0, 64) and out.dtype == BF16
    x = _randn(2, 3, 256, g=g).to(BF16)
    got = cuda_kernels.fp8_linear(x, w, s, True)
    assert got.shape == (2, 3, 64)
    assert torch.equal(got, cuda_kernels.fp8_linear(x.view(6, 256), w, s, True).view(2, 3, 64))
    wd = _randn(64, 256, g=g)
    assert cuda_kernels.dense_linear(torch.empty(0, 256, device="cuda"), wd).shape == (0, 64)


@pytest.mark.parametrize("n,k,w_dtype,x_dtype", [
    (VOCAB, HIDDEN, BF16, F32), (64, HIDDEN, BF16, BF16), (24, 4 * HIDDEN, F32, F32), (256, HIDDEN, F32, F32),
    (1024, HIDDEN, F32, F32), (129, 37, F32, F32), (7, 1, F32, F32), (300, 200, BF16, BF16), (24, 40, BF16, F32),
    (1000, 17, BF16, BF16), (96, 256, F32, BF16)])
def test_dense_linear(n: int, k: int, w_dtype: torch.dtype, x_dtype: torch.dtype) -> None:
    g = _gen(n + k)
    w = _randn(n, k, g=g, std=k**-0.5).to(w_dtype)
    out_dtype = torch.promote_types(w_dtype, x_dtype)
    for rows in (1, 8, 32) if n == VOCAB else (1, 5, 77, 512):
        x = _randn(rows, k, g=g).to(x_dtype)
        got = cuda_kernels.dense_linear(x, w)
        assert got.dtype == out_dtype and got.shape == (rows, n)
        assert rel(got, x.double() @ w.double().t()) < _tol(out_dtype)


@pytest.mark.parametrize("case", ["fp8", "fp8 wide", "fp8 ragged", "fp4", "head", "dense f32", "dense bf16 ragged"])
def test_a_row_alone_equals_the_row_among_others(case: str) -> None:
    """fp8 wide: 600 rows sum the splits in turn within a block, fewer rows through partials."""
    g = _gen(9)
    if case.startswith("fp8"):
        n, k = {"fp8": (1024, 4096), "fp8 wide": (4096, 4096), "fp8 ragged": (129, 130)}[case]
        w, s = _fp8(n, k, g)
        run = lambda x: cuda_kernels.fp8_linear(x, w, s, True)  # noqa: E731
        dtype = BF16
    elif case == "fp4":
        n, k = 2048, 4096
        w, s = _fp4(n, k, g)
        run = lambda x: cuda_kernels.fp4_linear(x, w, s, True)  # noqa: E731
        dtype = BF16
    else:
        n, k, wd, dtype = {"head": (VOCAB, HIDDEN, BF16, F32), "dense f32": (256, HIDDEN, F32, F32),
                           "dense bf16 ragged": (300, 200, BF16, BF16)}[case]
        w = _randn(n, k, g=g, std=k**-0.5).to(wd)
        run = lambda x: cuda_kernels.dense_linear(x, w)  # noqa: E731
    x = _randn(600 if case != "head" else 40, k, g=g).to(dtype)
    full = run(x)
    for rows in (1, 7, 32, 33):
        assert torch.equal(run(x[-rows:]), full[-rows:]), rows
    assert torch.equal(run(x), full)  # deterministic


def test_what_falls_back_to_the_twin() -> None:
    g = _gen(10)
    w, s = _fp8(64, 256, g)
    x = _randn(3, 256, g=g).half()  # no float16 kernel
    torch.testing.assert_close(cuda_kernels.fp8_linear(x, w, s, True), ops_ref.fp8_linear(x, w, s, True))
    wd = _randn(64, 256, g=g).half()
    torch.testing.assert_close(cuda_kernels.dense_linear(x, wd), ops_ref.dense_linear(x, wd))
