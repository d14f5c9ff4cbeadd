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
    assert all(ops.backend(name) == kernels.__name__ for name in ops.OP_NAMES)  # every op has its kernel


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


def test_bfloat16_head_gives_the_float32_upcast_logits(built):
    """The head stays BF16 as stored; with float32 inputs its logits are float32 and equal the product with
    the weight widened to float32 first (widening is exact) to float32 rounding: the kernel's own float32
    path (the same sums, in the same order, except on AVX2, which adds a block's even then odd inputs) and the
    twin's float32 product."""
    g = torch.Generator().manual_seed(11)
    weight = (torch.randn(3001, 256, generator=g) * 256**-0.5).bfloat16()
    for rows in (1, 2, 5, 33):
        x = torch.randn(rows, 256, generator=g)
        got = kernels.dense_linear(x, weight)
        assert got.dtype == torch.float32
        _close(got, kernels.dense_linear(x, weight.float()), 1e-6)
        _close(got, x @ weight.float().t(), 1e-6)
        assert torch.equal(ops_ref.dense_linear(x, weight), torch.nn.functional.linear(x, weight.float()))


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
    with pytest.raises(RuntimeError, match="of the weight's dtype or float32"):
        torch.ops.v4cli.dense_linear(torch.randn(3, 12).bfloat16(), torch.randn(5, 12))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        torch.ops.v4cli.dense_linear(torch.randn(3, 12).half(), torch.randn(5, 12).half())


def test_engine_uses_the_kernels_and_decodes_as_the_twins(built, ckpt_dir, monkeypatch):
    path = ckpt_dir("flash")
    prompt = torch.randint(0, 1024, (40,), generator=torch.Generator().manual_seed(5)).tolist()
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=0)
    # float32: only summation order differs (in BF16 an ulp there can flip a rounding and a later token)
    fast = Engine.from_pretrained(path, dtype=torch.float32, max_context=128, max_batch=2, simulate_quant=False)
    assert fast.kernels.startswith("C++ CPU kernels")
    got = fast.generate(prompt, params)
    monkeypatch.setenv("V4_KERNELS", "0")
    ref = Engine.from_pretrained(path, dtype=torch.float32, max_context=128, max_batch=2, simulate_quant=False)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 256), (9, 4096), (3, 5, 64)])
def test_rms_norm_matches_its_twin(built, dtype, shape):
    g = torch.Generator().manual_seed(shape[0])
    x = (torch.randn(*shape, generator=g) * 4).to(dtype)
    w = torch.rand(shape[-1], generator=g) + 0.5
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # the mean's order of summation; then bfloat16 rounding
    got = kernels.rms_norm(x, w, 1e-6)
    assert got.dtype == dtype
    _close(got, ops_ref.rms_norm(x, w, 1e-6), tol)
    plain = kernels.rms_norm(x, None, 1e-6)  # the query heads' form: no weight, the product in x's dtype
    assert plain.dtype == dtype
    _close(plain, ops_ref.rms_norm(x, None, 1e-6), tol)
    assert not torch.equal(plain, got)
    with pytest.raises(RuntimeError, match="weight must be"):
        torch.ops.v4cli.rms_norm(x, w[:-1], 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 7, 130])
def test_hc_pre_and_post_match_their_twins(built, dtype, tokens):
    """Both differ from their twins in the order of summation only."""
    g = torch.Generator().manual_seed(tokens)
    n, d, eps = 4, 256, 1e-6
    mix = (2 + n) * n
    x = torch.randn(tokens, n, d, generator=g).to(dtype)
    fn, base = torch.randn(mix, n * d, generator=g) * 0.05, torch.randn(mix, generator=g)
    scale = torch.rand(3, generator=g) + 0.5
    got, want = kernels.hc_pre(x, fn, scale, base, n, 20, eps, 1e-6), ops_ref.hc_pre(x, fn, scale, base, n, 20, eps,
                                                                                     1e-6)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        _close(a, b, 1e-5 if dtype == torch.float32 else 1e-2)
    o = torch.randn(tokens, d, generator=g).to(dtype)
    post, comb = want[1], want[2]
    y = kernels.hc_post(o, x, post, comb)
    assert y.shape == x.shape and y.dtype == dtype
    _close(y, ops_ref.hc_post(o, x, post, comb), 1e-6 if dtype == torch.float32 else 1e-2)
    # the streams really mix: a stream's output depends on the others
    assert not torch.allclose(y[:, 0].float(), (post[:, 0, None] * o.float() + comb[:, 0, 0, None] * x[:, 0].float()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 512), (5, 8, 512), (3, 2, 4, 64), (7, 64)])
@pytest.mark.parametrize("inverse", [False, True])
def test_rope_is_the_twin_bit_for_bit(built, dtype, shape, inverse):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g) * 4).to(dtype)
    ang = torch.rand(shape[0], 32, generator=g) * 1000  # far positions: large angles, as at 1M tokens
    cos, sin = ang.cos(), ang.sin()
    got, want = kernels.rope(x, cos, sin, inverse), ops_ref.rope(x, cos, sin, inverse)
    assert got.dtype == want.dtype == dtype and torch.equal(got, want)
    assert torch.equal(got[..., :-64], x[..., :-64])  # the dims without rotary are copied as they are
    assert torch.allclose(kernels.rope(got, cos, sin, not inverse).float(), x.float(), atol=0.05, rtol=0.02)
    with pytest.raises(RuntimeError, match="do not fit"):
        torch.ops.v4cli.rope(x.contiguous(), cos[:, :1].expand(shape[0], 1000).contiguous(),
                             sin[:, :1].expand(shape[0], 1000).contiguous(), inverse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 128), (3, 64, 128), (9, 512), (2, 1)])
def test_hadamard_is_the_twin_bit_for_bit(built, dtype, shape):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(shape[-1])) * 3).to(dtype)
    got, want = kernels.hadamard(x), ops_ref.hadamard(x)
    assert got.dtype == want.dtype == dtype and torch.equal(got, want)
    if dtype == torch.float32:  # orthonormal and its own inverse
        assert torch.allclose(kernels.hadamard(got), x, atol=1e-5)
    with pytest.raises(RuntimeError, match="power of two"):
        torch.ops.v4cli.hadamard(torch.zeros(2, 96))


def _blocks(shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Values over many magnitudes, row by row (from 2^-140, below the scales' floors, up to 2^20), and zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-140, 20, shape[:-1] + (1,), generator=g).float())
    x[..., 3] = 0.0
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,width", [((1, 512), 448), ((6, 3, 512), 448), ((4, 128), 128), ((2, 192), 64)])
def test_fp8_round_is_the_twin_bit_for_bit(built, dtype, shape, width):
    x = _blocks(shape, sum(shape) + width, dtype)
    got, want = kernels.fp8_round(x, 64, width), ops_ref.fp8_round(x, 64, width)
    assert got.dtype == dtype and torch.equal(got, want)
    assert torch.equal(got[..., width:], x[..., width:])  # the rope dims are not rounded
    assert torch.equal(kernels.fp8_round(x, 64), ops_ref.fp8_round(x, 64))  # width: all of it
    with pytest.raises(RuntimeError, match="whole blocks"):
        torch.ops.v4cli.fp8_round(x.contiguous(), 64, width - 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 128), (5, 64, 128), (3, 32)])
def test_fp4_round_is_the_twin_bit_for_bit(built, dtype, shape):
    x = _blocks(shape, sum(shape), dtype)
    got, want = kernels.fp4_round(x), ops_ref.fp4_round(x)
    assert got.dtype == dtype and torch.equal(got, want)
    # Ties to the even code, in a block whose scale is 1 (its amax is 6).
    ties = torch.zeros(1, 32, dtype=dtype)
    ties[0, :9] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75, 6.0])
    assert kernels.fp4_round(ties)[0, :9].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -1.0, 6.0]
    with pytest.raises(RuntimeError, match="whole blocks"):
        torch.ops.v4cli.fp4_round(torch.zeros(2, 48), 32)


# ---- the FP8/FP4 row kernel's SIMD paths (csrc/cpu/simd.h): fused (few rows), buffered (more), every decode ----


def test_fp8_simd_decode_is_exact_for_checkpoint_scales(built):
    """Scales a checkpoint has (the test above takes the scalar decode for its extreme ones): every e4m3 byte,
    through the few-row path (decoded into registers) and the many-row one (through the L1 buffer)."""
    bytes_ = (torch.arange(256).repeat(256, 1) + torch.arange(256).unsqueeze(1)) % 256
    bytes_[(bytes_ & 0x7F) == 0x7F] = 0
    weight = bytes_.to(torch.uint8).view(torch.float8_e4m3fn)
    scale = torch.tensor([[100, 127], [150, 190]], dtype=torch.uint8).view(torch.float8_e8m0fnu)
    for i, x in enumerate(_one_hot_columns(256)):
        assert torch.equal(kernels.fp8_linear(x, weight, scale, False), ops_ref.fp8_linear(x, weight, scale, False))
        rows = x[i % 16 : i % 16 + 3]  # 3 rows: the fused path
        want = ops_ref.fp8_linear(rows, weight, scale, False)
        assert torch.equal(kernels.fp8_linear(rows, weight, scale, False), want)


def test_fp4_few_rows_decode_exactly(built):
    k = 512
    packed = ((torch.arange(256).repeat(64, 1) + torch.arange(64).unsqueeze(1)) % 256).to(torch.uint8).view(torch.int8)
    scale = torch.randint(0, 253, (64, k // 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    scale[0, :3] = torch.tensor([0, 1, 252], dtype=torch.uint8)  # 2^-127, 2^-126, 2^125 (6 * 2^125 is finite)
    scale = scale.view(torch.float8_e8m0fnu)
    for i, x in enumerate(_one_hot_columns(k)):
        row = x[i % 16 : i % 16 + 1]
        assert torch.equal(kernels.fp4_linear(row, packed, scale, False), ops_ref.fp4_linear(row, packed, scale, False))


@pytest.mark.parametrize("rows", [1, 3, 7, 20])
def test_fp8_nan_codes_give_nan_outputs_in_every_path(built, rows):
    w = torch.zeros(130, 200, dtype=torch.uint8)
    w[:, :] = 0x38  # 1.0
    w[5, 17], w[9, 199], w[129, 64] = 0x7F, 0xFF, 0x7F
    scale = torch.full((2, 2), 127, dtype=torch.uint8).view(torch.float8_e8m0fnu)
    x = torch.randn(rows, 200, generator=torch.Generator().manual_seed(rows))
    got = kernels.fp8_linear(x, w.view(torch.float8_e4m3fn), scale, False)
    assert got.isnan().nonzero()[:, 1].unique().tolist() == [5, 9, 129]
    assert got.isnan().sum().item() == 3 * rows
    ok = torch.ones(130, dtype=torch.bool)
    ok[[5, 9, 129]] = False
    _close(got[:, ok], ops_ref.fp8_linear(x, w.view(torch.float8_e4m3fn), scale, False)[:, ok], 1e-5)


def test_fp8_extreme_scales_match_the_twin(built):
    """Scale bytes outside [64, 191] (2^-63 .. 2^64) take the scalar decode for the whole call."""
    weight, _ = _fp8(256, 384, seed=5)
    scale = torch.tensor([[250, 127, 10], [127, 200, 127]], dtype=torch.uint8).view(torch.float8_e8m0fnu)
    x = torch.randn(4, 384, generator=torch.Generator().manual_seed(5)) * 1e-3
    want = ops_ref.fp8_linear(x, weight, scale, False)
    got = kernels.fp8_linear(x, weight, scale, False)
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    fin = torch.isfinite(want)
    assert ((got - want).abs()[fin] <= 1e-5 * want.abs()[fin].max()).all()


@pytest.mark.parametrize("fmt,n,k", [("fp8", 130, 200), ("fp8", 64, 1088), ("fp4", 77, 96), ("fp4", 45, 2080)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_kernel_rows_do_not_depend_on_the_other_rows_ragged(built, fmt, n, k, dtype):
    """Ragged shapes (K not a multiple of the 64-input group or of the 512-input span, N not of the 4-row tile)
    and both input dtypes: every row count up to 32 crosses from the fused path to the buffered one."""
    weight, scale = _fp8(n, k, seed=n + k) if fmt == "fp8" else _fp4(n, k, seed=n + k)
    op = kernels.fp8_linear if fmt == "fp8" else kernels.fp4_linear
    x = torch.randn(kernels.ROW_KERNEL_MAX, k, generator=torch.Generator().manual_seed(k)).to(dtype)
    for act_quant in (False, True):
        alone = torch.cat([op(x[i : i + 1], weight, scale, act_quant) for i in range(len(x))])
        assert alone.dtype == dtype
        for rows in range(2, kernels.ROW_KERNEL_MAX + 1):
            assert torch.equal(op(x[:rows], weight, scale, act_quant), alone[:rows]), (rows, act_quant)
        ref = (ops_ref.fp8_linear if fmt == "fp8" else ops_ref.fp4_linear)(x, weight, scale, act_quant)
        _close(alone, ref, 1e-5 if dtype == torch.float32 else 1e-2)


def test_fp4_results_do_not_depend_on_the_thread_count(built):
    packed, scale = _fp4(2048, 1024, seed=3)
    threads = torch.get_num_threads()
    for rows in (1, 4, 20):
        x = torch.randn(rows, 1024, generator=torch.Generator().manual_seed(rows))
        try:
            torch.set_num_threads(1)
            one = kernels.fp4_linear(x, packed, scale, True)
            torch.set_num_threads(max(threads, 2))
            two = kernels.fp4_linear(x, packed, scale, True)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(one, two)


def test_bfloat16_input_goes_in_as_it_is(built):
    """The kernels take bfloat16 rows directly (widened exactly) and return bfloat16, as the float32 path rounded."""
    weight, scale = _fp8(256, 384, seed=8)
    packed, s4 = _fp4(96, 256, seed=8)
    for rows in (1, 5, 40):  # the row kernel and the GEMM past it
        x8 = torch.randn(rows, 384, generator=torch.Generator().manual_seed(rows)).bfloat16()
        x4 = torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows)).bfloat16()
        for aq in (False, True):
            s8, s4b = scale.view(torch.uint8), s4.view(torch.uint8)
            y = torch.ops.v4cli.fp8_linear(x8, weight, s8, aq)
            assert y.dtype == torch.bfloat16
            assert torch.equal(y, torch.ops.v4cli.fp8_linear(x8.float(), weight, s8, aq).bfloat16())
            y = torch.ops.v4cli.fp4_linear(x4, packed, s4b, aq)
            assert torch.equal(y, torch.ops.v4cli.fp4_linear(x4.float(), packed, s4b, aq).bfloat16())
    x = torch.randn(3, 384).half()  # other dtypes are widened in Python, and come back in their dtype
    y = kernels.fp8_linear(x, weight, scale, True)
    assert y.dtype == torch.float16
    _close(y, ops_ref.fp8_linear(x, weight, scale, True), 1e-2)


def test_input_rounding_is_the_twins_on_many_values(built):
    """The SIMD rounding (16 or 8 lanes at once; the scalar tail rounds through c10) against the twin, through an
    identity weight: random float32 bit patterns in every block, blocks of every scale, halfway cases."""
    eye, one = quant.quantize_fp8(torch.eye(128))
    g = torch.Generator().manual_seed(9)
    for _ in range(8):
        bits = torch.randint(0, 2**31 - 1, (32, 128), generator=g, dtype=torch.int64)
        x = (bits.to(torch.int32) & 0x43FFFFFF).view(torch.float32)  # |x| < 512, any mantissa, tiny to large
        x = x * torch.where(torch.rand(32, 128, generator=g) < 0.5, -1.0, 1.0)
        x = x * torch.exp2(torch.randint(-40, 40, (32, 1), generator=g).float())
        x[:4, 0] = 448.0  # scale 1: the e4m3 grid itself
        x[4:8] = torch.linspace(-448, 448, 128) + 0.5 * (torch.arange(128) % 2)
        assert torch.equal(kernels.fp8_linear(x, eye, one, True), quant.act_quant(x))
