"""The C++ CPU kernels (csrc/), called directly, against their PyTorch twins in ops_ref; then wired into the
seam and the engine."""

from __future__ import annotations

import shutil

import pytest
import torch

from v4cli.runtime import Engine, SamplingParams, kernels, ops, ops_ref, quant

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler on PATH")


def _fp8(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return quant.quantize_fp8(torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g) * 3)


def _fp4(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return quant.quantize_fp4(torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g) * 3)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    """Only the order of summation differs: bound the error by the size of the products summed."""
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.isfinite(a).all()
    err = (a.float() - b.float()).abs().max().item()
    assert err <= rel * max(b.float().abs().max().item(), 1.0), err


def test_install_routes_the_linear_ops(built):
    assert ops.backend("fp8_linear") == kernels.__name__
    assert ops.backend("fp4_linear") == kernels.__name__
    assert ops.backend("dense_linear") == kernels.__name__
    assert ops.backend("hc_sinkhorn") == kernels.__name__
    assert ops.backend("sparse_attention") == "torch"


def _one_hot_columns(k: int):
    """Inputs that pick one column each: y[:, c] is then the decoded weight column itself, exactly."""
    for col0 in range(0, k, 16):
        x = torch.zeros(16, k)
        x[torch.arange(16), col0 + torch.arange(16)] = 1.0
        yield x


def test_every_e4m3_byte_and_scale_decodes_exactly(built):
    bytes_ = (torch.arange(256).repeat(256, 1) + torch.arange(256).unsqueeze(1)) % 256  # each row a rotation
    bytes_[(bytes_ & 0x7F) == 0x7F] = 0  # NaN codes apart (below): one NaN makes its whole row NaN
    weight = bytes_.to(torch.uint8).view(torch.float8_e4m3fn)
    # 2^-127 (a subnormal float) up to 2^100; 0 * inf would make rows NaN, so no overflow.
    scale = torch.tensor([[0, 60], [127, 227]], dtype=torch.uint8).view(torch.float8_e8m0fnu)
    for x in _one_hot_columns(256):
        assert torch.equal(kernels.fp8_linear(x, weight, scale, False), ops_ref.fp8_linear(x, weight, scale, False))
    nan_row = torch.zeros(128, 256, dtype=torch.uint8)
    nan_row[5, 17], nan_row[9, 200] = 0x7F, 0xFF
    got = kernels.fp8_linear(torch.ones(2, 256), nan_row.view(torch.float8_e4m3fn), scale[:1], False)
    assert got.isnan().nonzero()[:, 1].unique().tolist() == [5, 9]


def test_every_fp4_byte_and_scale_decodes_exactly(built):
    k = 512  # 256 bytes per row: every byte value, both nibbles
    packed = ((torch.arange(256).repeat(64, 1) + torch.arange(64).unsqueeze(1)) % 256).to(torch.uint8)
    packed = packed.view(torch.int8)
    scale = torch.randint(0, 220, (64, k // 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    scale[0, 0] = 0  # 2^-127, a subnormal float
    scale = scale.view(torch.float8_e8m0fnu)
    for x in _one_hot_columns(k):
        assert torch.equal(kernels.fp4_linear(x, packed, scale, False), ops_ref.fp4_linear(x, packed, scale, False))


@pytest.mark.parametrize("n,k", [(256, 256), (300, 200), (129, 384), (1024, 2048)])
@pytest.mark.parametrize("rows", [1, 3, 32, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_matches_twin(built, n, k, rows, dtype):
    weight, scale = _fp8(n, k, seed=n + k)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)).to(dtype)
    for act_quant in (False, True):
        _close(kernels.fp8_linear(x, weight, scale, act_quant), ops_ref.fp8_linear(x, weight, scale, act_quant),
               1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("n,k", [(128, 256), (77, 96), (512, 2048)])
@pytest.mark.parametrize("rows", [1, 5, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp4_linear_matches_twin(built, n, k, rows, dtype):
    packed, scale = _fp4(n, k, seed=n * k)
    x = torch.randn(2, rows, k, generator=torch.Generator().manual_seed(rows)).to(dtype)[1]
    for act_quant in (False, True):
        _close(kernels.fp4_linear(x, packed, scale, act_quant), ops_ref.fp4_linear(x, packed, scale, act_quant),
               1e-5 if dtype == torch.float32 else 1e-2)


def test_batched_leading_dims_and_many_rows(built):
    weight, scale = _fp8(256, 384, seed=1)
    x = torch.randn(2, 3, 384)
    _close(kernels.fp8_linear(x, weight, scale, False), ops_ref.fp8_linear(x, weight, scale, False), 1e-5)
    for rows in (33, 300):  # past the row kernel: dequantize-then-GEMM, the twin's own computation, bit for bit
        many = torch.randn(rows, 384)
        assert torch.equal(kernels.fp8_linear(many, weight, scale, True), ops_ref.fp8_linear(many, weight, scale, True))
    packed, s4 = _fp4(96, 256, seed=9)
    many = torch.randn(2, 40, 256)
    assert torch.equal(kernels.fp4_linear(many, packed, s4, True), ops_ref.fp4_linear(many, packed, s4, True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_linear_matches_twin(built, dtype):
    g = torch.Generator().manual_seed(7)
    shapes = [(256, 256), (129, 37), (24, 1024), (7, 1), (300, 200), (1000, 17), (5, 16)]
    for n, k in shapes:
        weight = (torch.randn(n, k, generator=g) * k**-0.5).to(dtype)
        for rows in (1, 3, 4, 5, 17, 33, 64):
            x = torch.randn(rows, k, generator=g)
            got, want = kernels.dense_linear(x, weight), ops_ref.dense_linear(x, weight)
            _close(got, want, 1e-5 if dtype == torch.float32 else 1e-2)
    x = torch.randn(2, 3, 40, generator=g)  # leading dims, and an input dtype other than the weight's
    weight = torch.randn(24, 40, generator=g).to(dtype)
    got = kernels.dense_linear(x.to(torch.bfloat16 if dtype == torch.float32 else torch.float32), weight)
    _close(got, ops_ref.dense_linear(x.to(got.dtype), weight), 1e-2)
    assert kernels.dense_linear(torch.randn(0, 40), weight).shape == (0, 24)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(129, 300), (24, 1024), (8, 256), (1031, 64)])
def test_dense_linear_rows_do_not_depend_on_the_other_rows(built, dtype, n, k):
    """Row i of an M-row product equals that row computed alone, bit for bit, for every M (torch.mm's
    does not: its blocking over the rows changes with M)."""
    g = torch.Generator().manual_seed(n * k)
    weight = torch.randn(n, k, generator=g).to(dtype)
    x = torch.randn(100, k, generator=g).to(dtype)
    alone = torch.cat([kernels.dense_linear(x[i : i + 1], weight) for i in range(100)])
    for rows in list(range(1, 34)) + [47, 64, 65, 100]:
        assert torch.equal(kernels.dense_linear(x[:rows], weight), alone[:rows]), rows
    picks = torch.randperm(100, generator=g)[:37]  # other rows around each, in another order
    assert torch.equal(kernels.dense_linear(x[picks], weight), alone[picks])


@pytest.mark.parametrize("fmt", ["fp8", "fp4"])
def test_row_kernel_rows_do_not_depend_on_the_other_rows(built, fmt):
    """The engine batches decode rows up to kernels.ROW_KERNEL_MAX in one pass because up to there the
    FP8/FP4 linear computes each row the same way whatever the others (past it, one GEMM does not)."""
    weight, scale = _fp8(384, 640, seed=11) if fmt == "fp8" else _fp4(384, 640, seed=11)
    op = kernels.fp8_linear if fmt == "fp8" else kernels.fp4_linear
    x = torch.randn(kernels.ROW_KERNEL_MAX, 640, generator=torch.Generator().manual_seed(12))
    for act_quant in (False, True):
        alone = torch.cat([op(x[i : i + 1], weight, scale, act_quant) for i in range(len(x))])
        for rows in range(2, kernels.ROW_KERNEL_MAX + 1):
            assert torch.equal(op(x[:rows], weight, scale, act_quant), alone[:rows]), (rows, act_quant)


def test_results_do_not_depend_on_the_thread_count(built):
    weight, scale = _fp8(2048, 1024, seed=2)
    x = torch.randn(4, 1024)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.fp8_linear(x, weight, scale, False)
        torch.set_num_threads(max(threads, 2))
        two = kernels.fp8_linear(x, weight, scale, False)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    w = torch.randn(1000, 300)
    x = torch.randn(9, 300)
    try:
        torch.set_num_threads(1)
        one = kernels.dense_linear(x, w)
        torch.set_num_threads(max(threads, 2))
        two = kernels.dense_linear(x, w)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_bad_shapes_are_refused_with_a_message(built):
    weight, scale = _fp8(256, 256, seed=3)
    with pytest.raises(RuntimeError, match="x has 128 inputs, the weight 256"):
        torch.ops.v4cli.fp8_linear(torch.randn(1, 128), weight, scale.view(torch.uint8), False)
    with pytest.raises(RuntimeError, match="scale must be"):
        torch.ops.v4cli.fp8_linear(torch.randn(1, 256), weight, scale.view(torch.uint8)[:, :1], False)
    packed, s4 = _fp4(64, 96, seed=4)
    with pytest.raises(RuntimeError, match="scale must be"):
        torch.ops.v4cli.fp4_linear(torch.randn(1, 96), packed, s4.view(torch.uint8)[:32], False)
    with pytest.raises(RuntimeError, match="x has 10 inputs, the weight 12"):
        torch.ops.v4cli.dense_linear(torch.randn(3, 10), torch.randn(5, 12))
    with pytest.raises(RuntimeError, match="of the weight's dtype"):
        torch.ops.v4cli.dense_linear(torch.randn(3, 12), torch.randn(5, 12).bfloat16())
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        torch.ops.v4cli.dense_linear(torch.randn(3, 12).half(), torch.randn(5, 12).half())


def test_engine_uses_the_kernels_and_decodes_as_the_twins(built, ckpt_dir, monkeypatch):
    path = ckpt_dir("flash")
    prompt = torch.randint(0, 1024, (40,), generator=torch.Generator().manual_seed(5)).tolist()
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=0)
    fast = Engine.from_pretrained(path, max_context=128, max_batch=2, simulate_quant=False)
    assert fast.kernels.startswith("C++ CPU kernels")
    got = fast.generate(prompt, params)
    monkeypatch.setenv("V4_KERNELS", "0")
    ref = Engine.from_pretrained(path, max_context=128, max_batch=2, simulate_quant=False)
    assert ref.kernels == "PyTorch reference ops (V4_KERNELS=0)" and ops.backend("fp8_linear") == "torch"
    want = ref.generate(prompt, params)
    assert got.token_ids == want.token_ids
    diffs = [abs(a.logprob - b.logprob) for a, b in zip(got.logprobs, want.logprobs, strict=True)]
    assert max(diffs) < 1e-4
    monkeypatch.setenv("V4_KERNELS", "1")
    kernels.install()  # the seam back on the kernels for the rest of the module


def test_input_rounding_is_the_twins_bit_for_bit(built):
    # Through an identity FP8 weight (scale 1) the output is the rounded input itself, exactly.
    k = 200  # one 128 block and a 72-wide tail block
    eye, one = quant.quantize_fp8(torch.eye(k))
    g = torch.Generator().manual_seed(6)
    x = torch.randn(6, k, generator=g) * torch.logspace(-8, 4, k)  # blocks of very different magnitudes
    x[1] = 0.0  # amax below the 1e-4 floor
    x[2, :128] = 1e-6
    x[3] = torch.linspace(-448, 448, k)  # e4m3 ties and the saturation edge at scale 1
    x[4, 5] = float(torch.finfo(torch.float32).max) / 2
    got = kernels.fp8_linear(x, eye, one, True)
    assert torch.equal(got, quant.act_quant(x))
    assert torch.equal(kernels.fp8_linear(x.bfloat16(), eye, one, True), quant.act_quant(x.bfloat16()))


@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_hc_sinkhorn_matches_twin(built, tokens):
    g = torch.Generator().manual_seed(tokens)
    n, eps = 4, 1e-6
    mixes = torch.randn(tokens, (2 + n) * n, generator=g) * 3
    base, scale = torch.randn((2 + n) * n, generator=g), torch.rand(3, generator=g) + 0.5
    got = kernels.hc_sinkhorn(mixes, scale, base, n, 20, eps)
    want = ops_ref.hc_sinkhorn(mixes, scale, base, n, 20, eps)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert (a - b).abs().max().item() < 1e-6
    assert torch.allclose(got[2].sum(-2), torch.ones(tokens, n), atol=1e-4)  # columns balanced last
    with pytest.raises(RuntimeError, match="mixes must be"):
        torch.ops.v4cli.hc_sinkhorn(mixes[:, :10], scale, base, n, 20, eps)
