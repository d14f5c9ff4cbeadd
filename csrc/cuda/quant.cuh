// The checkpoint's number formats on the GPU: decoding e4m3, packed e2m1 and UE8M0 scales, and the reference's
// activation rounding (the twins: runtime/quant.py). Plain CUDA C++, no torch; __host__ __device__ so the same code
// is checked against the twins on a machine without a GPU (tests/test_cuda_build.py compiles a host program).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace v4cli::cuda {

constexpr int kFp8Tile = 128;   // FP8 weight scales cover 128x128 tiles
constexpr int kFp4Block = 32;   // FP4 weight scales cover 32 inputs of one row
constexpr int kActBlock = 128;  // the GEMM input rounding's block along K
constexpr float kFp8Max = 448.f;
constexpr float kFp4Max = 6.f;
constexpr float kFp8Floor = 1e-4f;               // amax floor of the FP8 rounding
constexpr float kFp4Floor = 6.f * 0x1p-126f;     // amax floor of the FP4 rounding: the scale is never below 2^-126

// A float from its bits, in host and device code (the __int_as_float intrinsic is device-only).
__host__ __device__ inline float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// UE8M0 byte -> 2^(b - 127) (b = 255 is NaN, b = 0 is 2^-127, a subnormal float).
__host__ __device__ inline float ue8m0_to_float(uint8_t b) {
  if (b == 0) return 0x1p-127f;
  if (b == 255) return bits_float(0x7fc00000u);
  return bits_float(static_cast<uint32_t>(b) << 23);
}

// e4m3fn byte -> float (exact): 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, 0x7f/0xff NaN.
__host__ __device__ inline float e4m3_to_float(uint8_t b) {
  const int sign = b >> 7, exp = (b >> 3) & 0xf, man = b & 7;
  float mag;
  if (exp == 0xf && man == 7) {
    mag = bits_float(0x7fc00000u);
  } else if (exp == 0) {
    mag = man * 0x1p-9f;  // subnormal: man/8 * 2^-6
  } else {
    mag = bits_float((static_cast<uint32_t>(exp + 120) << 23) | (static_cast<uint32_t>(man) << 20));  // (1 + man/8) * 2^(exp-7)
  }
  return sign ? -mag : mag;
}

// e2m1 code (low 4 bits; bit 3 the sign) -> float: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives.
__host__ __device__ inline float e2m1_to_float(uint32_t code) {
  const uint32_t m = code & 7;
  const float mag = m < 4 ? 0.5f * m : (m == 4 ? 2.f : m == 5 ? 3.f : m == 6 ? 4.f : 6.f);
  return (code & 8) ? -mag : mag;
}

// 2^ceil(log2(v)) for v > 0, exactly (frexp, not a rounded log2): the reference's UE8M0 activation scale.
__host__ __device__ inline float pow2_ceil(float v) {
  int e;
  const float mant = frexpf(v, &e);  // v = mant * 2^e, mant in [0.5, 1)
  return ldexpf(1.f, mant == 0.5f ? e - 1 : e);
}

// Nearest e4m3 value of v (ties to even), saturating at +-448; NaN stays NaN. Bit for bit torch's
// x.clamp(-448, 448).to(float8_e4m3fn).float().
__host__ __device__ inline float round_e4m3(float v) {
  if (v != v) return v;
  const float c = fminf(fmaxf(v, -kFp8Max), kFp8Max);
  const float a = fabsf(c);
  if (a < 0x1p-6f) {  // subnormal range: a multiple of 2^-9, ties to even
    return copysignf(rintf(a * 512.f) * 0x1p-9f, c);
  }
  int e;
  frexpf(a, &e);                                      // a = m * 2^e, m in [0.5, 1): 3 mantissa bits below 2^(e-1)
  const float step = ldexpf(1.f, e - 4);              // spacing of e4m3 values in [2^(e-1), 2^e)
  return copysignf(rintf(a / step) * step, c);        // a/step is exact (a power of two); rintf: ties to even
}

// Nearest e2m1 value of a scaled v, saturating at 6, ties to the even code: at 0.25, 1.25, 2.5 and 5 the lower
// value, at 0.75, 1.75 and 3.5 the upper (quant.e2m1_codes).
__host__ __device__ inline float round_e2m1(float v) {
  const float m = fminf(fabsf(v), kFp4Max);
  const float q = m <= 0.25f ? 0.f : m < 0.75f ? 0.5f : m <= 1.25f ? 1.f : m < 1.75f ? 1.5f
                  : m <= 2.5f ? 2.f : m < 3.5f ? 3.f : m <= 5.f ? 4.f : 6.f;
  return v < 0 ? -q : q;
}

// The FP8 rounding of one block's values given its amax: each value / s to e4m3, times s, where
// s = 2^ceil(log2(max(amax, 1e-4) / 448)) (quant.fp8_round_blocks, and act_quant per 1x128 block).
__host__ __device__ inline float fp8_block_scale(float amax) { return pow2_ceil(fmaxf(amax, kFp8Floor) / kFp8Max); }
__host__ __device__ inline float fp4_block_scale(float amax) { return pow2_ceil(fmaxf(amax, kFp4Floor) / kFp4Max); }
__host__ __device__ inline float fp8_round_scaled(float v, float s) { return round_e4m3(v / s) * s; }
__host__ __device__ inline float fp4_round_scaled(float v, float s) { return round_e2m1(v / s) * s; }

__host__ __device__ inline float bf16_round(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

}  // namespace v4cli::cuda
