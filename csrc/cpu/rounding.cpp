// The reference's quantisation-aware rounding of activations outside the GEMMs (architecture.md §2.3, §2.5): the
// non-rope dims of every new KV entry to e4m3 in blocks of 64, and the indexer's rotated queries and keys to
// e2m1 in blocks of 32, each block with a UE8M0 (power of two) scale. One call each in place of the ~20 small
// torch ops of the twins (quant.fp8_round_blocks, quant.fp4_round_blocks), several times a decode step.
//
// The FP8 blocks go through the GEMM input rounding (simd.h act_quant_block: the same scale floor, 1e-4, and
// saturation); the FP4 blocks through round_e2m1 below. Both are the twins' results bit for bit.

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../ops.h"
#include "parallel.h"
#include "simd.h"

namespace v4cli {
namespace {

constexpr float kFp4Max = 6.f;
constexpr float kFp4Floor = 6.f * 0x1p-126f;  // amax floor: the scale is never below 2^-126

// Nearest e2m1 value (0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives) of a scaled value, saturating at 6, ties to the
// even code: at 0.25, 1.25, 2.5 and 5 the lower value, at 0.75, 1.75 and 3.5 the upper (quant.e2m1_codes).
inline float round_e2m1(float v) {
  const float m = std::min(std::fabs(v), kFp4Max);
  const float q = m <= 0.25f ? 0.f : m < 0.75f ? 0.5f : m <= 1.25f ? 1.f : m < 1.75f ? 1.5f
                  : m <= 2.5f ? 2.f : m < 3.5f ? 3.f : m <= 5.f ? 4.f : 6.f;
  return v < 0 ? -q : q;
}

void fp4_block(const float* xb, float* ob, int64_t len) {
  float amax = 0.f;
  for (int64_t j = 0; j < len; ++j) amax = std::max(amax, std::abs(xb[j]));
  const float s = simd::pow2_ceil(std::max(amax, kFp4Floor) / kFp4Max);
  for (int64_t j = 0; j < len; ++j) ob[j] = round_e2m1(xb[j] / s) * s;
}

// Row by row: the first `width` values of each row in blocks of `block` through `round`, the rest copied.
template <typename T, typename Round>
void round_rows(const T* x, T* y, int64_t rows, int64_t d, int64_t width, int64_t block, const Round& round) {
  parallel_tasks(rows, std::max<int64_t>(1, 8192 / d), [&](int64_t r0, int64_t r1) {
    std::vector<float> in(width), out(width);
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * d;
      T* yr = y + r * d;
      for (int64_t i = 0; i < width; ++i) in[i] = static_cast<float>(xr[i]);
      for (int64_t b = 0; b < width; b += block) round(in.data() + b, out.data() + b, block);
      for (int64_t i = 0; i < width; ++i) yr[i] = static_cast<T>(out[i]);
      for (int64_t i = width; i < d; ++i) yr[i] = xr[i];
    }
  });
}

template <typename Round>
at::Tensor round_blocks(const at::Tensor& x, int64_t block, int64_t width, const Round& round, const char* name) {
  TORCH_CHECK(x.dim() >= 1 && x.is_contiguous() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              name, ": x must be a contiguous float32 or bfloat16 tensor");
  const int64_t d = x.size(-1);
  TORCH_CHECK(block > 0 && width >= 0 && width <= d && width % block == 0, name, ": the first ", width,
              " of ", d, " values must be whole blocks of ", block);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const int64_t rows = x.numel() / d;
  if (x.scalar_type() == at::kFloat) {
    round_rows(x.data_ptr<float>(), y.data_ptr<float>(), rows, d, width, block, round);
  } else {
    round_rows(x.data_ptr<c10::BFloat16>(), y.data_ptr<c10::BFloat16>(), rows, d, width, block, round);
  }
  return y;
}

}  // namespace

at::Tensor fp8_round_cpu(const at::Tensor& x, int64_t block, int64_t width) {
  return round_blocks(x, block, width, simd::act_quant_block, "fp8_round");
}

at::Tensor fp4_round_cpu(const at::Tensor& x, int64_t block) {
  return round_blocks(x, block, x.dim() ? x.size(-1) : 0, fp4_block, "fp4_round");
}

}  // namespace v4cli
