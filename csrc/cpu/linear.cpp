// FP8 and FP4 linear layers on the CPU, for decode (a few input rows) and for prefill.
//
// The PyTorch twin dequantizes the whole weight to float32 and multiplies; for one row of input that
// writes and re-reads four times the weight's bytes. Here each row of W is decoded span by span into
// an L1 buffer and used at once by every input row, so W is read once, in its stored form. Decoded
// values equal the twin's exactly (e4m3/e2m1 times a power of two is exact in float32); only the order
// of summation differs.

#include <ATen/Parallel.h>
#include <c10/util/Float8_e4m3fn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../ops.h"

namespace v4cli {
namespace {

constexpr int64_t kFp8Tile = 128;  // FP8 scales cover 128x128 tiles
constexpr int64_t kFp4Block = 32;  // FP4 scales cover 32 inputs of one row
constexpr int64_t kSpan = 1024;    // weights decoded at a time (4 KiB of float32: stays in L1)
constexpr int64_t kLanes = 16;     // independent partial sums: one AVX-512 register, two AVX2 ones
constexpr int64_t kActBlock = 128; // the input rounding's block along K
// Past this many input rows dequantize-then-GEMM is faster than the row kernel (measured on 2 cores:
// at 32 rows the row kernel is 1.6-2.4x faster, at 64 rows 0.8-1.5x, at 128 rows 0.3-1.1x).
constexpr int64_t kRowKernelMax = 32;
constexpr float kFp8Max = 448.f;

inline float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// UE8M0: 2^(b - 127); 255 is NaN as in torch.float8_e8m0fnu; 0 is the subnormal 2^-127.
inline float e8m0(uint8_t b) {
  if (b == 255) return NAN;
  return b ? from_bits(uint32_t(b) << 23) : 0x1p-127f;
}

inline uint32_t to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// The two decoders below use integer operations and one exact subtraction, no branches or selects, so
// the compiler vectorises the decode loops. A subnormal code is decoded as the normal code one exponent
// up with the same mantissa, minus that exponent's implicit one.

// e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is subnormal (m * 2^-9);
// 0x7F and 0xFF are NaN (a corrupt weight must not pass as 480).
inline float e4m3(uint8_t b) {
  const uint32_t em = b & 0x7F;
  const uint32_t sub = (em & 0x78) == 0;
  const uint32_t nan = (em == 0x7F) * 0x7FC00000u;
  const float v = from_bits(((em | (sub << 3)) << 20) + (120u << 23)) - from_bits(sub * to_bits(0x1p-6f));
  return from_bits(to_bits(v) | nan | (uint32_t(b & 0x80) << 24));
}

// e2m1 nibble: sign in bit 3, 2 exponent bits (bias 1), 1 mantissa bit; exponent 0 is subnormal (m * 0.5).
inline float e2m1(uint32_t c) {
  const uint32_t em = c & 7;
  const uint32_t sub = (em & 6) == 0;
  const float v = from_bits(((em | (sub << 1)) << 22) + (126u << 23)) - from_bits(sub * to_bits(1.0f));
  return from_bits(to_bits(v) | ((c & 8) << 28));
}

inline float dot(const float* a, const float* b, int64_t n) {
  float part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) part[j] += a[i + j] * b[i + j];
  float s = 0.f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int64_t j = 0; j < kLanes; ++j) s += part[j];
  return s;
}

// 2^ceil(log2(v)) for v > 0, exactly (frexp, not a rounded log2): the reference's UE8M0 scale.
inline float pow2_ceil(float v) {
  int e;
  const float mant = std::frexp(v, &e);  // v = mant * 2^e, mant in [0.5, 1)
  return std::ldexp(1.f, mant == 0.5f ? e - 1 : e);
}

// The reference's rounding of an FP8 GEMM input: each 1x128 block along K (a shorter block at the end)
// scaled by 2^ceil(log2(max(amax, 1e-4) / 448)), rounded to e4m3 (nearest even, saturating), scaled back.
void act_quant_rows(const float* x, float* out, int64_t m_rows, int64_t k) {
  for (int64_t m = 0; m < m_rows; ++m) {
    for (int64_t k0 = 0; k0 < k; k0 += kActBlock) {
      const float* xb = x + m * k + k0;
      float* ob = out + m * k + k0;
      const int64_t len = std::min(kActBlock, k - k0);
      float amax = 0.f;
      for (int64_t j = 0; j < len; ++j) amax = std::max(amax, std::abs(xb[j]));
      const float s = pow2_ceil(std::max(amax, 1e-4f) / kFp8Max);
      for (int64_t j = 0; j < len; ++j) {
        const float v = std::min(std::max(xb[j] / s, -kFp8Max), kFp8Max);
        ob[j] = static_cast<float>(c10::Float8_e4m3fn(v)) * s;
      }
    }
  }
}

void check_input(const at::Tensor& x, int64_t k, const char* op) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), op,
              ": x must be a contiguous float32 [M, K] tensor");
  TORCH_CHECK(x.size(1) == k, op, ": x has ", x.size(1), " inputs, the weight ", k);
}

// y = x W^T where `decode(n, k0, len, buf)` writes row n of W, inputs [k0, k0+len), as float32.
// Up to kRowKernelMax input rows, each span of W is decoded into L1 and dotted with every input row at once;
// rows of W are split across threads and each output is summed in one place, so results do not depend on
// the thread count. With more rows, one decoded copy of W serves a GEMM (the twin's dequantize-then-GEMM,
// without its Python-level temporaries).
template <typename Decode>
at::Tensor rows_times_weight(const at::Tensor& x, int64_t n_out, bool act_quant, Decode decode) {
  const int64_t m_rows = x.size(0), k = x.size(1);
  at::Tensor xin = x;
  if (act_quant) {
    xin = at::empty_like(x);
    const float* src = x.data_ptr<float>();
    float* dst = xin.data_ptr<float>();
    at::parallel_for(0, m_rows, 1, [&](int64_t m0, int64_t m1) {
      act_quant_rows(src + m0 * k, dst + m0 * k, m1 - m0, k);
    });
  }
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(k, 1));
  if (m_rows > kRowKernelMax) {
    at::Tensor w = at::empty({n_out, k}, x.options());
    float* wp = w.data_ptr<float>();
    at::parallel_for(0, n_out, grain, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t k0 = 0; k0 < k; k0 += kSpan) decode(n, k0, std::min(kSpan, k - k0), wp + n * k + k0);
    });
    return at::mm(xin, w.t());
  }
  at::Tensor out = at::empty({m_rows, n_out}, x.options());
  const float* xp = xin.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n_out, grain, [&](int64_t n0, int64_t n1) {
    alignas(64) float buf[kSpan];
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t m = 0; m < m_rows; ++m) op[m * n_out + n] = 0.f;
      for (int64_t k0 = 0; k0 < k; k0 += kSpan) {
        const int64_t len = std::min(kSpan, k - k0);
        decode(n, k0, len, buf);
        for (int64_t m = 0; m < m_rows; ++m) op[m * n_out + n] += dot(buf, xp + m * k + k0, len);
      }
    }
  });
  return out;
}

}  // namespace

at::Tensor fp8_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale, bool act_quant) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat8_e4m3fn && weight.is_contiguous(),
              "fp8_linear: weight must be a contiguous float8_e4m3fn [N, K] tensor");
  const int64_t n_out = weight.size(0), k = weight.size(1);
  check_input(x, k, "fp8_linear");
  const int64_t tiles = (k + kFp8Tile - 1) / kFp8Tile;
  TORCH_CHECK(scale.dim() == 2 && scale.element_size() == 1 && scale.is_contiguous() &&
                  scale.size(0) == (n_out + kFp8Tile - 1) / kFp8Tile && scale.size(1) == tiles,
              "fp8_linear: scale must be a contiguous UE8M0 [ceil(N/128), ceil(K/128)] tensor");
  const auto* w = static_cast<const uint8_t*>(weight.data_ptr());
  const auto* s = static_cast<const uint8_t*>(scale.data_ptr());
  return rows_times_weight(x, n_out, act_quant, [=](int64_t n, int64_t k0, int64_t len, float* buf) {
    const uint8_t* row = w + n * k;
    const uint8_t* srow = s + (n / kFp8Tile) * tiles;
    for (int64_t t = 0; t < len; t += kFp8Tile) {  // spans start on tile boundaries (kSpan % 128 == 0)
      const float sc = e8m0(srow[(k0 + t) / kFp8Tile]);
      const int64_t end = std::min(t + kFp8Tile, len);
      for (int64_t j = t; j < end; ++j) buf[j] = e4m3(row[k0 + j]) * sc;
    }
  });
}

at::Tensor fp4_linear_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, bool act_quant) {
  TORCH_CHECK(packed.dim() == 2 && packed.element_size() == 1 && packed.is_contiguous(),
              "fp4_linear: packed must be a contiguous int8 [N, K/2] tensor");
  const int64_t n_out = packed.size(0), k = packed.size(1) * 2;
  check_input(x, k, "fp4_linear");
  TORCH_CHECK(k % kFp4Block == 0, "fp4_linear: K must be a multiple of 32, got ", k);
  TORCH_CHECK(scale.dim() == 2 && scale.element_size() == 1 && scale.is_contiguous() && scale.size(0) == n_out &&
                  scale.size(1) == k / kFp4Block,
              "fp4_linear: scale must be a contiguous UE8M0 [N, K/32] tensor");
  const auto* w = static_cast<const uint8_t*>(packed.data_ptr());
  const auto* s = static_cast<const uint8_t*>(scale.data_ptr());
  return rows_times_weight(x, n_out, act_quant, [=](int64_t n, int64_t k0, int64_t len, float* buf) {
    const uint8_t* row = w + n * (k / 2);
    const uint8_t* srow = s + n * (k / kFp4Block);
    for (int64_t t = 0; t < len; t += kFp4Block) {  // element 2i in the low nibble, 2i+1 in the high one
      const float sc = e8m0(srow[(k0 + t) / kFp4Block]);
      const uint8_t* bytes = row + (k0 + t) / 2;
      for (int64_t j = 0; j < kFp4Block / 2; ++j) {
        buf[t + 2 * j] = e2m1(bytes[j] & 0xF) * sc;
        buf[t + 2 * j + 1] = e2m1(bytes[j] >> 4) * sc;
      }
    }
  });
}

}  // namespace v4cli
