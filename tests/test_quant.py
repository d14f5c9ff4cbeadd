"""FP8 / FP4 formats against the written formulas of architecture.md §4.3 and §2.3/§2.5."""

import math

import pytest
import torch

from v4cli.runtime import quant

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def e4m3_value(byte: int) -> float:
    """Decode one e4m3fn byte by hand: sign, 4-bit exponent (bias 7), 3-bit mantissa, 0x7F/0xFF = NaN."""
    s, e, m = byte >> 7, (byte >> 3) & 0xF, byte & 7
    mag = (m / 8) * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
    return -mag if s else mag


def test_dequant_fp8_matches_formula():
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (256, 384), generator=g, dtype=torch.uint8)
    raw[(raw & 0x7F) == 0x7F] = 0x10  # no NaN codes
    exps = torch.randint(110, 140, (2, 3), generator=g, dtype=torch.uint8)
    w = quant.dequant_fp8(raw.view(torch.float8_e4m3fn), exps.view(torch.float8_e8m0fnu))
    for r, c in [(0, 0), (5, 200), (127, 127), (128, 0), (255, 383), (130, 300)]:
        want = e4m3_value(int(raw[r, c])) * 2.0 ** (int(exps[r // 128, c // 128]) - 127)
        assert w[r, c].item() == want


def test_dequant_fp4_nibble_order_and_scales():
    # byte 0x71: low nibble 1 (+0.5) is element 0, high nibble 7 (+6) is element 1; 0xA9 -> -0.5, -1.0
    packed = torch.tensor([[0x71, 0xA9] + [0] * 14], dtype=torch.uint8).view(torch.int8)
    scale = torch.tensor([[129]], dtype=torch.uint8).view(torch.float8_e8m0fnu)  # 2^2
    w = quant.dequant_fp4(packed, scale)
    assert w.shape == (1, 32)
    assert w[0, :4].tolist() == [0.5 * 4, 6.0 * 4, -0.5 * 4, -1.0 * 4]


def test_dequant_fp4_random_against_formula():
    g = torch.Generator().manual_seed(1)
    packed = torch.randint(0, 256, (8, 64), generator=g, dtype=torch.uint8)
    exps = torch.randint(100, 150, (8, 4), generator=g, dtype=torch.uint8)
    w = quant.dequant_fp4(packed.view(torch.int8), exps.view(torch.float8_e8m0fnu))
    for r in range(8):
        for c in range(128):
            nib = (int(packed[r, c // 2]) >> (4 * (c % 2))) & 0xF
            val = (-1 if nib & 8 else 1) * E2M1[nib & 7] * 2.0 ** (int(exps[r, c // 32]) - 127)
            assert w[r, c].item() == val


def test_quantize_fp8_round_trip_and_scale_rule():
    w = torch.randn(200, 300) * 0.05
    q, s = quant.quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float8_e8m0fnu and s.shape == (2, 3)
    amax = w[:128, :128].abs().max().item()
    assert s.float()[0, 0].item() == 2.0 ** math.ceil(math.log2(amax / 448))
    back = quant.dequant_fp8(q, s)
    # half an ulp of 3 mantissa bits, or half the smallest subnormal (2^-9) in scaled units
    tile_scale = s.float().repeat_interleave(128, 0)[:200].repeat_interleave(128, 1)[:, :300]
    assert ((back - w).abs() <= torch.maximum(w.abs() * 2**-4, tile_scale * 2**-10)).all()


def test_quantize_fp4_round_trip():
    w = torch.randn(4, 64)
    packed, s = quant.quantize_fp4(w)
    assert packed.shape == (4, 32) and s.shape == (4, 2)
    back = quant.dequant_fp4(packed, s)
    grid = back / s.float().repeat_interleave(32, -1)
    assert set(grid.abs().flatten().tolist()) <= set(E2M1)
    # every value went to its nearest grid point
    scaled = w / s.float().repeat_interleave(32, -1)
    nearest = torch.tensor(E2M1)[(scaled.abs().unsqueeze(-1) - torch.tensor(E2M1)).abs().argmin(-1)]
    assert torch.allclose(grid.abs(), nearest)


@pytest.mark.parametrize(("x", "want"), [(0.25, 0.0), (0.75, 1.0), (1.25, 1.0), (1.75, 2.0), (2.5, 2.0),
                                         (3.5, 4.0), (5.0, 4.0), (7.0, 6.0), (-0.75, -1.0), (-5.5, -6.0)])
def test_e2m1_rounds_to_nearest_even(x, want):
    assert quant.round_e2m1(torch.tensor([x])).item() == want


def test_fp8_block_rounding_formula():
    x = torch.randn(3, 448) * torch.logspace(-3, 2, 448)
    y = quant.fp8_round_blocks(x, 64)
    for r in range(3):
        for b in range(7):
            blk = x[r, b * 64 : (b + 1) * 64]
            s = 2.0 ** math.ceil(math.log2(max(blk.abs().max().item(), 1e-4) / 448))
            want = (blk / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s
            assert torch.equal(y[r, b * 64 : (b + 1) * 64], want)


def test_fp4_block_rounding_formula():
    x = torch.randn(2, 128)
    y = quant.fp4_round_blocks(x)
    for r in range(2):
        for b in range(4):
            blk = x[r, b * 32 : (b + 1) * 32]
            s = 2.0 ** math.ceil(math.log2(max(blk.abs().max().item(), 6 * 2.0**-126) / 6))
            got = y[r, b * 32 : (b + 1) * 32] / s
            assert set(got.abs().tolist()) <= set(E2M1)
            assert ((got - blk / s).abs() <= 1.0 + 1e-6).all()


def test_act_quant_uses_128_blocks_and_floor():
    x = torch.zeros(1, 256)
    x[0, 0] = 1.0
    x[0, 128] = 1e-6  # a tiny block: amax floored at 1e-4, so the value rounds within e4m3's range
    y = quant.act_quant(x)
    assert y[0, 0].item() == 1.0
    s = 2.0 ** math.ceil(math.log2(1e-4 / 448))
    assert y[0, 128].item() == pytest.approx(round(1e-6 / s) * s if 1e-6 / s < 2**-6 else y[0, 128].item())
    assert torch.equal(quant.act_quant(x[:, :128]), y[:, :128])
