// The two rotations of a decode step: interleaved RoPE on the last dims of each row, and the orthonormal
// Walsh-Hadamard transform of the indexer's queries and keys. Each is one call in place of the ~17 (RoPE) and
// ~60 (Hadamard over 128 dims) small torch ops of its twin (ops_ref.rope, ops_ref.hadamard), run 15 and 2 times
// a decode step on the built-in model.
//
// Bit for bit the twins': float32 arithmetic, one rounding per product and per sum in the twins' order (this
// file is compiled without FMA contraction: a fused e*c - o*s rounds once where the twin rounds twice), and the
// result rounded to the input's dtype (round to nearest even, as torch's cast).

#pragma GCC optimize("fp-contract=off")

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../ops.h"
#include "parallel.h"

namespace v4cli {
namespace {

template <typename T>
void rope_rows(const T* x, const float* cos, const float* sin, T* y, int64_t rows, int64_t per_row, int64_t width,
               int64_t half, bool inverse) {
  const int64_t nope = width - 2 * half;
  parallel_tasks(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, per_row * width)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* c = cos + r * half;
      const float* s = sin + r * half;
      for (int64_t m = 0; m < per_row; ++m) {
        const T* xr = x + (r * per_row + m) * width;
        T* yr = y + (r * per_row + m) * width;
        for (int64_t i = 0; i < nope; ++i) yr[i] = xr[i];
        const T* rot = xr + nope;
        T* out = yr + nope;
        for (int64_t i = 0; i < half; ++i) {
          const float e = static_cast<float>(rot[2 * i]), o = static_cast<float>(rot[2 * i + 1]);
          const float ci = c[i], si = inverse ? -s[i] : s[i];
          const float ec = e * ci, os = o * si, es = e * si, oc = o * ci;
          out[2 * i] = static_cast<T>(ec - os);
          out[2 * i + 1] = static_cast<T>(es + oc);
        }
      }
    }
  });
}

template <typename T>
void hadamard_rows(const T* x, T* y, int64_t rows, int64_t d) {
  const float norm = static_cast<float>(std::pow(static_cast<double>(d), -0.5));  // the twin's d**-0.5
  parallel_tasks(rows, std::max<int64_t>(1, 16384 / d), [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(d);
    float* v = buf.data();
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t i = 0; i < d; ++i) v[i] = static_cast<float>(x[r * d + i]);
      for (int64_t h = 1; h < d; h *= 2) {  // Sylvester order: (a, b) -> (a + b, a - b) over blocks of 2h
        for (int64_t j = 0; j < d; j += 2 * h) {
          for (int64_t i = j; i < j + h; ++i) {
            const float a = v[i], b = v[i + h];
            v[i] = a + b;
            v[i + h] = a - b;
          }
        }
      }
      for (int64_t i = 0; i < d; ++i) y[r * d + i] = static_cast<T>(v[i] * norm);
    }
  });
}

}  // namespace

at::Tensor rope_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool inverse) {
  TORCH_CHECK(x.dim() >= 2 && x.is_contiguous() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "rope: x must be a contiguous float32 or bfloat16 [T, ..., D] tensor");
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.scalar_type() == at::kFloat &&
                  sin.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous(),
              "rope: cos and sin must be contiguous float32 [T, dim/2] tensors");
  const int64_t rows = x.size(0), width = x.size(-1), half = cos.size(1);
  TORCH_CHECK(cos.size(0) == rows && 2 * half <= width, "rope: cos/sin ", cos.sizes(), " do not fit x ", x.sizes());
  const int64_t per_row = rows == 0 ? 0 : x.numel() / (rows * width);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  if (x.scalar_type() == at::kFloat) {
    rope_rows(x.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), y.data_ptr<float>(), rows, per_row,
              width, half, inverse);
  } else {
    rope_rows(x.data_ptr<c10::BFloat16>(), cos.data_ptr<float>(), sin.data_ptr<float>(), y.data_ptr<c10::BFloat16>(),
              rows, per_row, width, half, inverse);
  }
  return y;
}

at::Tensor hadamard_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.is_contiguous() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "hadamard: x must be a contiguous float32 or bfloat16 tensor");
  const int64_t d = x.size(-1);
  TORCH_CHECK(d > 0 && (d & (d - 1)) == 0, "hadamard: the last dim must be a power of two, got ", d);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const int64_t rows = x.numel() / d;
  if (x.scalar_type() == at::kFloat) {
    hadamard_rows(x.data_ptr<float>(), y.data_ptr<float>(), rows, d);
  } else {
    hadamard_rows(x.data_ptr<c10::BFloat16>(), y.data_ptr<c10::BFloat16>(), rows, d);
  }
  return y;
}

}  // namespace v4cli
