"""moe_experts on the GPU (csrc/cuda/moe*.cu) against its twin on the same inputs: tiny test models and V4's real
widths, decode (GEMV path, T <= 32) and prefill (grouped GEMM) token counts, FP4 routed experts with an FP8 shared
one, FP8, bfloat16 and float32 weights, float32 x (the SIMT path, to 1e-5), ragged sizes; plus determinism, a
token's result alone and among others, skipped out-of-range picks, and the cases that fall back to the twin."""

from __future__ import annotations

import pytest
import torch

from v4cli.runtime import cuda_kernels, kernels, ops, ops_ref, quant

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
LIMIT = 7.0


@pytest.fixture(scope="module")
def cuda_built():
    mp = pytest.MonkeyPatch()
    mp.setenv("V4_KERNELS", "1")
    line = kernels.install("cuda")
    assert "CUDA kernels:" in line and "moe_experts" in line.split("CUDA kernels:")[1].split("(")[0], line
    assert ops.backend("moe_experts", "cuda") == cuda_kernels.__name__
    yield line
    ops.reset()
    mp.undo()


def _fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quant.quantize_fp8 on w's device: e4m3 + UE8M0 per 128x128 tile (ragged edge tiles padded)."""
    out, inp = w.shape
    bo, bi = -(-out // 128), -(-inp // 128)
    padded = torch.zeros(bo * 128, bi * 128, device=w.device)
    padded[:out, :inp] = w.float()
    tiles = padded.view(bo, 128, bi, 128)
    scale = quant.pow2_scale(tiles.abs().amax(dim=(1, 3)), quant.FP8_MAX, 1e-30)
    q = (tiles / scale[:, None, :, None]).clamp(-quant.FP8_MAX, quant.FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(bo * 128, bi * 128)[:out, :inp].contiguous(), quant.float_to_e8m0(scale)


def _matrix(fmt: str, n: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randn(n, k, generator=g, device="cuda") * (4 * k**-0.5)  # large enough that the clamp bites
    if fmt == "fp4":
        return quant.quantize_fp4(w)
    if fmt == "fp8":
        return _fp8(w)
    return w.to(torch.bfloat16 if fmt == "bf16" else torch.float32), torch.empty(0, device="cuda")


def _experts(routed: str, shared: str, E: int, D: int, inter: int, seed: int) -> list[list[torch.Tensor]]:
    """w1, s1, w3, s3, w2, s2: E routed experts in `routed`, then the shared one in `shared`."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    lists: list[list[torch.Tensor]] = [[] for _ in range(6)]
    for e in range(E + 1):
        fmt = shared if e == E else routed
        for i, (n, k) in enumerate([(inter, D), (inter, D), (D, inter)]):
            weight, scale = _matrix(fmt, n, k, g)
            lists[2 * i].append(weight)
            lists[2 * i + 1].append(scale)
    return lists


def _routing(T: int, E: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    picks = torch.rand(T, E, generator=g, device="cuda").argsort(dim=1)[:, :k]
    picks = torch.cat([picks, torch.full((T, 1), E, device="cuda")], dim=1)  # the shared expert, weight 1
    weights = torch.cat([torch.rand(T, k, generator=g, device="cuda") * 2, torch.ones(T, 1, device="cuda")], dim=1)
    return weights, picks


def _x(T: int, D: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(T, D, generator=torch.Generator(device="cuda").manual_seed(seed), device="cuda").to(dtype)


def _check(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert not got.isnan().any()
    err = ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()
    assert err < tol, err


def _compare(lists, T: int, E: int, k: int, D: int, dtype: torch.dtype, act_quant: bool, limit: float = LIMIT,
             seed: int = 0) -> None:
    weights, picks = _routing(T, E, k, seed)
    x = _x(T, D, dtype, seed + 1)
    got = cuda_kernels.moe_experts(x, weights, picks, *lists, limit, act_quant)
    want = ops_ref.moe_experts(x, weights, picks, *lists, limit, act_quant)
    tol = 1e-2 if dtype == torch.bfloat16 else (1e-5 if not act_quant else 1e-4)  # float32: an e4m3 rounding can flip
    _check(got, want, tol)


# tiny models: D 256 / inter 128 take the tensor-core paths with bfloat16 x, D 64 / inter 32 the SIMT one
@pytest.mark.parametrize("D,inter", [(64, 32), (256, 128)])
@pytest.mark.parametrize("routed,shared", [("fp4", "fp8"), ("fp8", "fp8"), ("bf16", "bf16"), ("float", "float")])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("act_quant", [False, True])
def test_tiny_models_match_the_twin(cuda_built, D: int, inter: int, routed: str, shared: str, dtype: torch.dtype,
                                    act_quant: bool) -> None:
    E, k = 16, 4
    lists = _experts(routed, shared, E, D, inter, seed=D + inter)
    for T in (1, 5, 32, 33, 300):  # GEMV path up to 32 tokens, the grouped GEMM past it
        _compare(lists, T, E, k, D, dtype, act_quant, seed=T)


@pytest.mark.parametrize("D,inter,E", [(4096, 2048, 64), (7168, 3072, 16)])  # Flash's widths, Pro's
def test_real_widths_match_the_twin(cuda_built, D: int, inter: int, E: int) -> None:
    lists = _experts("fp4", "fp8", E, D, inter, seed=1)
    for T in (1, 7, 32, 200):
        _compare(lists, T, E, 6, D, torch.bfloat16, act_quant=True, seed=T)
    _compare(lists, 3, E, 6, D, torch.bfloat16, act_quant=False, limit=0.0, seed=3)
    _compare(lists, 3, E, 6, D, torch.float32, act_quant=False, seed=4)  # float32 x: the SIMT path at full width


@pytest.mark.parametrize("D,inter,routed", [(192, 96, "fp4"), (200, 72, "fp8"), (136, 40, "bf16"), (128, 64, "fp8")])
def test_ragged_sizes_match_the_twin(cuda_built, D: int, inter: int, routed: str) -> None:
    """Sizes that are not multiples of 128 (ragged FP8 scale tiles), and inter 64 (a half N block)."""
    lists = _experts(routed, "fp8", 8, D, inter, seed=7)
    for T in (1, 9, 40):
        for dtype in (torch.bfloat16, torch.float32):
            _compare(lists, T, 8, 3, D, dtype, act_quant=True, seed=T)


def test_runs_are_deterministic_and_tokens_independent_on_the_decode_path(cuda_built) -> None:
    E, k, D, inter = 32, 6, 512, 256
    lists = _experts("fp4", "fp8", E, D, inter, seed=3)
    weights, picks = _routing(300, E, k, 5)
    x = _x(300, D, torch.bfloat16, 6)
    first = cuda_kernels.moe_experts(x, weights, picks, *lists, LIMIT, True)
    assert torch.equal(first, cuda_kernels.moe_experts(x, weights, picks, *lists, LIMIT, True))
    # up to 32 tokens (one path), a token's result is what it gets alone: every MMA column is its own
    together = cuda_kernels.moe_experts(x[:20], weights[:20], picks[:20], *lists, LIMIT, True)
    for t in (0, 7, 19):
        alone = cuda_kernels.moe_experts(x[t : t + 1], weights[t : t + 1], picks[t : t + 1], *lists, LIMIT, True)
        assert torch.equal(together[t : t + 1], alone), t


def test_out_of_range_picks_add_nothing(cuda_built) -> None:
    E, k, D, inter = 8, 3, 256, 128
    lists = _experts("fp4", "fp8", E, D, inter, seed=4)
    weights, picks = _routing(6, E, k, 8)
    x = _x(6, D, torch.bfloat16, 9)
    bad = picks.clone()
    bad[0, 0], bad[3, 1] = E + 5, -1
    zeroed = weights.clone()
    zeroed[0, 0] = zeroed[3, 1] = 0.0
    got = cuda_kernels.moe_experts(x, weights, bad, *lists, LIMIT, False)
    assert torch.equal(got, cuda_kernels.moe_experts(x, zeroed, picks, *lists, LIMIT, False))


def test_empty_inputs(cuda_built) -> None:
    lists = _experts("fp4", "fp8", 4, 256, 128, seed=5)
    weights, picks = _routing(0, 4, 2, 0)
    got = cuda_kernels.moe_experts(_x(0, 256, torch.bfloat16, 0), weights, picks, *lists, LIMIT, True)
    assert got.shape == (0, 256) and got.dtype == torch.float32
    x = _x(3, 256, torch.bfloat16, 1)
    none = torch.empty(3, 0, dtype=torch.long, device="cuda")
    got = cuda_kernels.moe_experts(x, none.float(), none, *lists, LIMIT, True)
    assert torch.equal(got, torch.zeros(3, 256, device="cuda"))


def test_other_inputs_fall_back_to_the_twin(cuda_built) -> None:
    lists = _experts("fp8", "fp8", 4, 256, 128, seed=6)
    weights, picks = _routing(5, 4, 2, 1)
    x = _x(5, 256, torch.float16, 2)  # a dtype the kernels do not take
    got = cuda_kernels.moe_experts(x, weights, picks, *lists, LIMIT, False)
    assert torch.equal(got, ops_ref.moe_experts(x, weights, picks, *lists, LIMIT, False))
    assert ops.moe_experts(x, weights, picks, *lists, LIMIT, False).shape == (5, 256)


def test_bad_lists_are_refused(cuda_built) -> None:
    w1, s1, w3, s3, w2, s2 = _experts("fp4", "fp8", 4, 256, 128, seed=7)
    weights, picks = _routing(2, 4, 2, 2)
    x = _x(2, 256, torch.bfloat16, 3)
    with pytest.raises(RuntimeError, match="w3 and its scales must list 5 experts"):
        torch.ops.v4cli.moe_experts(x, weights, picks, w1, s1, w3[:3], s3, w2, s2, LIMIT, False, True)
    with pytest.raises(RuntimeError, match="must share a format"):
        w3b = [*w3[:-1], w1[0]]
        s3b = [*s3[:-1], s1[0]]
        torch.ops.v4cli.moe_experts(x, weights, picks, w1, s1, w3b, s3b, w2, s2, LIMIT, False, True)
