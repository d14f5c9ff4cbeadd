"""The routed-expert step as one op: its twin against the plain per-expert formula, the C++ kernel against
the twin, and the kernel's result for a token against that token alone."""

from __future__ import annotations

import shutil

import pytest
import torch

from v4cli.runtime import kernels, ops, ops_ref, pointwise, quant

E, D, INTER, K = 6, 256, 64, 2
LIMIT = 7.0


def _experts(fmt: str, seed: int, dtype: torch.dtype = torch.bfloat16) -> list[list[torch.Tensor]]:
    """w1, s1, w3, s3, w2, s2 for E routed experts plus a shared one, in `fmt`."""
    g = torch.Generator().manual_seed(seed)
    quantize = {"fp8": quant.quantize_fp8, "fp4": quant.quantize_fp4}.get(fmt)
    lists: list[list[torch.Tensor]] = [[] for _ in range(6)]
    for _ in range(E + 1):
        for i, (n, k) in enumerate([(INTER, D), (INTER, D), (D, INTER)]):
            w = torch.randn(n, k, generator=g) * k**-0.5 * 4  # large enough that the clamp bites
            if quantize is None:
                weight, scale = w.to(dtype), torch.empty(0)
            else:
                weight, scale = quantize(w)
            lists[2 * i].append(weight)
            lists[2 * i + 1].append(scale)
    return lists


def _routing(tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    picks = torch.rand(tokens, E, generator=g).argsort(dim=1)[:, :K]
    picks = torch.cat([picks, torch.full((tokens, 1), E)], dim=1)  # the shared expert, weight 1
    weights = torch.cat([torch.rand(tokens, K, generator=g), torch.ones(tokens, 1)], dim=1)
    return weights, picks


def test_twin_is_the_per_expert_formula() -> None:
    w1, s1, w3, s3, w2, s2 = _experts("fp4", 0)
    weights, picks = _routing(5, 1)
    x = torch.randn(5, D)
    got = ops_ref.moe_experts(x, weights, picks, w1, s1, w3, s3, w2, s2, LIMIT, False)
    want = torch.zeros(5, D)
    for t in range(5):
        for e in sorted(picks[t].tolist()):  # ascending expert order
            j = picks[t].tolist().index(e)
            gate = (x[t : t + 1] @ quant.dequant_fp4(w1[e], s1[e]).t()).clamp(max=LIMIT)
            up = (x[t : t + 1] @ quant.dequant_fp4(w3[e], s3[e]).t()).clamp(-LIMIT, LIMIT)
            h = weights[t, j] * (pointwise.silu(gate) * up)
            want[t] += (h @ quant.dequant_fp4(w2[e], s2[e]).t())[0]
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert (got.abs() > 0).all()
    # the clamp bit: without it the result differs
    assert not torch.allclose(got, ops_ref.moe_experts(x, weights, picks, w1, s1, w3, s3, w2, s2, 0.0, False))


needs_compiler = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                    reason="no C++ compiler on PATH")


@needs_compiler
@pytest.mark.parametrize("fmt", ["fp4", "fp8", "float"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act_quant", [False, True])
def test_kernel_matches_twin(built, fmt: str, dtype: torch.dtype, act_quant: bool) -> None:
    assert ops.backend("moe_experts") == kernels.__name__
    lists = _experts(fmt, 2, dtype)
    for tokens in (1, 3, 17):
        weights, picks = _routing(tokens, tokens)
        x = torch.randn(tokens, D, generator=torch.Generator().manual_seed(tokens)).to(dtype)
        got = kernels.moe_experts(x, weights, picks, *lists, LIMIT, act_quant)
        want = ops_ref.moe_experts(x, weights, picks, *lists, LIMIT, act_quant)
        assert got.dtype == torch.float32 and got.shape == (tokens, D)
        scale = max(want.abs().max().item(), 1.0)
        # only summation order differs in float32; a bfloat16 model rounds between steps, so an ulp there
        # can move a later rounding by one bfloat16 ulp
        tol = 1e-4 if dtype == torch.float32 and not act_quant else 3e-2
        assert (got - want).abs().max().item() <= tol * scale, (fmt, dtype, act_quant, tokens)


@needs_compiler
@pytest.mark.parametrize("fmt", ["fp4", "fp8"])
def test_a_tokens_result_does_not_depend_on_the_others(built, fmt: str) -> None:
    lists = _experts(fmt, 3)
    weights, picks = _routing(12, 4)
    x = torch.randn(12, D, generator=torch.Generator().manual_seed(5))
    together = kernels.moe_experts(x, weights, picks, *lists, LIMIT, True)
    for t in (0, 5, 11):
        alone = kernels.moe_experts(x[t : t + 1], weights[t : t + 1], picks[t : t + 1], *lists, LIMIT, True)
        assert torch.equal(together[t : t + 1], alone), t


@needs_compiler
def test_bad_lists_are_refused(built) -> None:
    w1, s1, w3, s3, w2, s2 = _experts("fp4", 6)
    weights, picks = _routing(2, 7)
    x = torch.randn(2, D)
    with pytest.raises(RuntimeError, match="w3 and its scales must list 7 experts"):
        torch.ops.v4cli.moe_experts(x, weights, picks, w1, s1, w3[:3], s3, w2, s2, LIMIT, False, False)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.v4cli.moe_experts(x, weights, picks + 10, w1, s1, w3, s3, w2, s2, LIMIT, False, False)
