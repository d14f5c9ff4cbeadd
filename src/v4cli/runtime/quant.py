"""FP8 (e4m3 + UE8M0 block scales) and FP4 (e2m1, two per byte, UE8M0 per 32) formats.

Pure functions: pack/unpack, dequantize stored weights, quantize weights (for tiny checkpoints),
and the reference's quantisation-aware rounding of activations (architecture.md §2.3, §2.5, §4.3).
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0
FP4_MAX = 6.0
WEIGHT_BLOCK = 128  # FP8 weight scales cover 128x128 tiles
FP4_BLOCK = 32  # FP4 scales cover 32 inputs of one row
ACT_BLOCK = 128  # activations are quantised per 1x128 block along K

# e2m1 magnitudes by 3-bit code; bit 3 of a nibble is the sign.
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_E2M1_MIDPOINTS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
# Round-to-nearest-even on the code: at midpoints 0.75, 1.75 and 3.5 the upper code is the even one.
_E2M1_TIES_UP = torch.tensor([0.75, 1.75, 3.5])


# ---- scales ---------------------------------------------------------------------------------
def e8m0_to_float(scale: torch.Tensor) -> torch.Tensor:
    """UE8M0 byte -> 2^(byte-127) as float32. Accepts float8_e8m0fnu or uint8 storage."""
    if scale.dtype == torch.float8_e8m0fnu:
        return scale.float()
    return torch.exp2(scale.to(torch.int32).float() - 127.0)


def float_to_e8m0(pow2: torch.Tensor) -> torch.Tensor:
    """Exact powers of two -> float8_e8m0fnu."""
    exp = torch.log2(pow2.float()).round().to(torch.int32) + 127
    return exp.clamp(0, 254).to(torch.uint8).view(torch.float8_e8m0fnu)


def pow2_scale(amax: torch.Tensor, qmax: float, floor: float) -> torch.Tensor:
    """The reference's UE8M0 scale: 2^ceil(log2(max(amax, floor) / qmax))."""
    return torch.exp2(torch.ceil(torch.log2(amax.float().clamp_min(floor) / qmax)))


# ---- e4m3 / e2m1 element casts ------------------------------------------------------------------
def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    return x.float().clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()


def e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """Nearest e2m1 code (0..15, sign in bit 3) of each value, saturating at +-6, ties to even."""
    mag = x.float().abs().clamp_max(FP4_MAX)
    code = torch.bucketize(mag, _E2M1_MIDPOINTS.to(x.device), right=False)
    code = code + torch.isin(mag, _E2M1_TIES_UP.to(x.device)).long()
    return (code | ((x < 0).long() << 3)).to(torch.uint8)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    codes = codes.long()
    mag = E2M1_VALUES.to(codes.device)[codes & 7]
    return torch.where((codes & 8) != 0, -mag, mag)


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    return e2m1_decode(e2m1_codes(x))


# ---- packed FP4 ---------------------------------------------------------------------------------
def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """[..., K] codes -> [..., K/2] int8; element 2k in the low nibble, 2k+1 in the high one."""
    c = codes.to(torch.uint8)
    return (c[..., 0::2] | (c[..., 1::2] << 4)).view(torch.int8)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    b = packed.view(torch.uint8)
    codes = torch.stack([b & 0xF, b >> 4], dim=-1)
    return codes.flatten(-2)


# ---- weight dequantization -----------------------------------------------------------------------
def dequant_fp8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W = e4m3(W8) * 2^(S[r//128, c//128] - 127)."""
    out, inp = weight.shape
    s = e8m0_to_float(scale)
    if out % WEIGHT_BLOCK or inp % WEIGHT_BLOCK:  # ragged edge tiles: expand the scale grid
        s = s.repeat_interleave(WEIGHT_BLOCK, 0)[:out].repeat_interleave(WEIGHT_BLOCK, 1)[:, :inp]
        return (weight.float() * s).to(dtype)
    tiles = weight.float().view(out // WEIGHT_BLOCK, WEIGHT_BLOCK, inp // WEIGHT_BLOCK, WEIGHT_BLOCK)
    return (tiles * s[:, None, :, None]).view(out, inp).to(dtype)


def _fp4_byte_table(device: torch.device) -> torch.Tensor:
    """[256, 2]: the two e2m1 values (low nibble first) of every byte."""
    table = _FP4_TABLES.get(device)
    if table is None:
        b = torch.arange(256, device=device)
        table = _FP4_TABLES[device] = e2m1_decode(torch.stack([b & 0xF, b >> 4], dim=-1))
    return table


_FP4_TABLES: dict[torch.device, torch.Tensor] = {}


def dequant_fp4(packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W = e2m1(nibble) * 2^(S[r, c//32] - 127)."""
    out, half = packed.shape
    w = _fp4_byte_table(packed.device)[packed.view(torch.uint8).long()]  # [out, in/2, 2]
    blocks = w.view(out, half * 2 // FP4_BLOCK, FP4_BLOCK) * e8m0_to_float(scale).unsqueeze(-1)
    return blocks.view(out, half * 2).to(dtype)


# ---- weight quantization (tiny checkpoints, tests) -----------------------------------------------
def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float [out, in] -> (e4m3 [out, in], UE8M0 [ceil(out/128), ceil(in/128)])."""
    out, inp = w.shape
    bo, bi = -(-out // WEIGHT_BLOCK), -(-inp // WEIGHT_BLOCK)
    padded = torch.zeros(bo * WEIGHT_BLOCK, bi * WEIGHT_BLOCK, dtype=torch.float32)
    padded[:out, :inp] = w.float()
    tiles = padded.view(bo, WEIGHT_BLOCK, bi, WEIGHT_BLOCK)
    scale = pow2_scale(tiles.abs().amax(dim=(1, 3)), FP8_MAX, 1e-30)
    q = (tiles / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(bo * WEIGHT_BLOCK, bi * WEIGHT_BLOCK)[:out, :inp].contiguous(), float_to_e8m0(scale)


def quantize_fp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float [out, in] -> (packed int8 [out, in/2], UE8M0 [out, in/32])."""
    out, inp = w.shape
    blocks = w.float().view(out, inp // FP4_BLOCK, FP4_BLOCK)
    scale = pow2_scale(blocks.abs().amax(-1), FP4_MAX, 1e-30)
    codes = e2m1_codes(blocks / scale[..., None]).view(out, inp)
    return pack_fp4(codes), float_to_e8m0(scale)


# ---- quantisation-aware rounding of activations (the reference's QAT simulation) ----------------
def fp8_round_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Round x to e4m3 in blocks of `block` along the last dim with UE8M0 scales (amax floored at 1e-4)."""
    shape = x.shape
    xb = x.float().reshape(*shape[:-1], shape[-1] // block, block)
    s = pow2_scale(xb.abs().amax(-1, keepdim=True), FP8_MAX, 1e-4)
    return (round_e4m3(xb / s) * s).reshape(shape).to(x.dtype)


def fp4_round_blocks(x: torch.Tensor, block: int = FP4_BLOCK) -> torch.Tensor:
    """Round x to e2m1 in blocks of 32 along the last dim (amax floored at 6 * 2^-126)."""
    shape = x.shape
    xb = x.float().reshape(*shape[:-1], shape[-1] // block, block)
    s = pow2_scale(xb.abs().amax(-1, keepdim=True), FP4_MAX, FP4_MAX * 2.0**-126)
    return (round_e2m1(xb / s) * s).reshape(shape).to(x.dtype)


def act_quant(x: torch.Tensor) -> torch.Tensor:
    """The input rounding of every FP8/FP4 GEMM: e4m3 per 1x128 block along K (a tail block if K%128)."""
    k = x.shape[-1]
    if k % ACT_BLOCK == 0:
        return fp8_round_blocks(x, ACT_BLOCK)
    main = (k // ACT_BLOCK) * ACT_BLOCK
    head = fp8_round_blocks(x[..., :main], ACT_BLOCK) if main else x[..., :0]
    return torch.cat([head, fp8_round_blocks(x[..., main:], k - main)], dim=-1)
