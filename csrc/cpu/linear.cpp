// FP8 and FP4 linear layers on the CPU, for decode (a few input rows) and for prefill.
//
// The PyTorch twin dequantizes the whole weight to float32 and multiplies; for one row of input that writes and
// re-reads four times the weight's bytes. Here W is read once, in its stored form, near the memory bandwidth: each
// row of W is decoded with SIMD (simd.h: e4m3 through a bfloat16 byte table or the half-precision conversion, e2m1
// through a 16-entry register table already multiplied by its block's scale) and multiplied with the input rows
// while in registers (up to 6 input rows: one sequential stream through W) or, past that, from an L1 buffer that
// 4 rows of W share. An FP8 scale covers 128 rows of W, so it multiplies the input instead of every weight.
// Decoded values equal the twin's exactly (e4m3/e2m1 times a power of two is exact in float32); only the order of
// summation differs.
//
// Row invariance: each output y[m, n] has its own accumulators (kAccs vectors of kLanes) that run over K in one
// order (64-input groups in a fixed lane order, vector j into accumulator j % kAccs, then a fixed tree), whatever
// the number of input rows, which of the two paths computes it, or how the rows of W are split across threads.
// The order depends on K and the build only.

#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../ops.h"
#include "parallel.h"
#include "simd.h"

namespace v4cli {
namespace {

using namespace simd;

// Past this many input rows dequantize-then-GEMM is faster than the row kernel (mirrored as
// kernels.ROW_KERNEL_MAX; the engine batches decode rows up to it for row invariance).
constexpr int64_t kRowKernelMax = 32;

// The input rows as float32 (from float32 or bfloat16, exactly), rounded as the reference's GEMM input with
// act_quant, zero-padded to kp inputs and permuted within each group as the decoded weights are.
at::Tensor prepare_input(const at::Tensor& x, bool act_quant, int64_t kp, const int* perm) {
  const int64_t m_rows = x.size(0), k = x.size(1);
  const at::Tensor xf = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
  at::Tensor out = at::empty({m_rows, kp}, x.options().dtype(at::kFloat));
  const float* src = xf.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  bool identity = true;
  for (int j = 0; j < kGroup; ++j) identity &= perm[j] == j;
  std::vector<float> row(act_quant ? k : 0);
  for (int64_t m = 0; m < m_rows; ++m) {
    const float* xr = src + m * k;
    if (act_quant) {
      act_quant_row(xr, row.data(), k);
      xr = row.data();
    }
    float* o = dst + m * kp;
    if (identity) {
      std::memcpy(o, xr, k * sizeof(float));
      std::fill(o + k, o + kp, 0.f);
      continue;
    }
    for (int64_t g = 0; g < kp; g += kGroup)
      for (int j = 0; j < kGroup; ++j) {
        const int64_t i = g + perm[j];
        o[g + j] = i < k ? xr[i] : 0.f;
      }
  }
  return out;
}

void check_input(const at::Tensor& x, int64_t k, const char* op) {
  TORCH_CHECK(x.dim() == 2 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) && x.is_contiguous(),
              op, ": x must be a contiguous float32 or bfloat16 [M, K] tensor");
  TORCH_CHECK(x.size(1) == k, op, ": x has ", x.size(1), " inputs, the weight ", k);
}

// y = x W^T in x's dtype, W given by the format `f` (simd.h). Up to kRowKernelMax input rows, the row kernel; past
// it one decoded copy of W serves a GEMM (the twin's dequantize-then-GEMM without its Python-level temporaries:
// the same values, the same at::mm, bit for bit).
template <typename F>
at::Tensor rows_times_weight(const at::Tensor& x, int64_t n_out, bool act_quant, const F& f) {
  const int64_t m_rows = x.size(0), k = x.size(1);
  const int64_t kp = (k + kGroup - 1) / kGroup * kGroup;
  const auto dtype = x.scalar_type();
  if (m_rows == 0 || n_out == 0 || k == 0) return at::zeros({m_rows, n_out}, x.options());
  int perm[kGroup];
  F::perm(perm);
  const int64_t tiles = (n_out + kTileRows - 1) / kTileRows;
  auto tile_rows = [&](int64_t tile, int64_t* n) {  // the rows of W of a tile (fewer in the last one)
    for (int64_t t = 0; t < kTileRows; ++t) n[t] = tile * kTileRows + t;
    return std::min(kTileRows, n_out - tile * kTileRows);
  };
  if (m_rows > kRowKernelMax) {
    at::Tensor xin = x.to(at::kFloat);
    if (act_quant) {
      at::Tensor q = at::empty_like(xin);
      const float* src = xin.data_ptr<float>();
      float* dst = q.data_ptr<float>();
      parallel_tasks(m_rows, 1, [&](int64_t m0, int64_t m1) {
        for (int64_t m = m0; m < m1; ++m) act_quant_row(src + m * k, dst + m * k, k);
      });
      xin = q;
    }
    at::Tensor w = at::empty({n_out, k}, xin.options());
    float* wp = w.data_ptr<float>();
    parallel_tasks(tiles, std::max<int64_t>(1, (1 << 15) / (kp * kTileRows)), [&](int64_t t0, int64_t t1) {
      std::vector<float> buf(kChunk);
      int64_t n[kTileRows];
      for (int64_t tile = t0; tile < t1; ++tile) {
        const int64_t rows = tile_rows(tile, n);
        for (int64_t t = 0; t < rows; ++t) {
          const typename F::Row row = f.row(n[t]);
          for (int64_t k0 = 0; k0 < kp; k0 += kChunk) {
            const int64_t len = std::min(kChunk, kp - k0);
            decode_span(f, row, k0, len, perm, buf.data());
            for (int64_t j = 0; j < len; ++j) {  // back to the natural order, times the FP8 factor: exact
              const int64_t i = k0 + (j / kGroup) * kGroup + perm[j % kGroup];
              if (i < k) wp[n[t] * k + i] = buf[j] * f.weight_factor(row, i);
            }
          }
        }
      }
    });
    return at::mm(xin, w.t()).to(dtype);
  }
  const at::Tensor xq = prepare_input(x, act_quant, kp, perm);
  const float* xp = xq.data_ptr<float>();
  at::Tensor out = at::empty({m_rows, n_out}, x.options().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  // at least ~64K weights a task: with 2 threads a 2 MB weight still splits, a tiny one stays on one thread
  parallel_tasks(tiles, std::max<int64_t>(1, (1 << 16) / (kp * kTileRows)), [&](int64_t t0, int64_t t1) {
    std::vector<float> buf(kTileRows * kChunk + kLanes);
    float* bp = buf.data() + (kLanes - reinterpret_cast<uintptr_t>(buf.data()) / sizeof(float) % kLanes) % kLanes;
    std::vector<float> scaled(F::kScalesInput ? m_rows * kp : 0);  // FP8: the input times its 128-row band's factors
    const float* xs = F::kScalesInput ? scaled.data() : xp;
    int64_t band = -1;
    std::vector<float> acc(m_rows * kTileRows * kAccSize);
    int64_t n[kTileRows];
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t rows = tile_rows(tile, n);
      if (F::kScalesInput && n[0] / kFp8Tile != band) {
        band = n[0] / kFp8Tile;
        f.scale_input(n[0], xp, scaled.data(), m_rows, kp);
      }
      tile_times_rows(f, n, rows, perm, xs, m_rows, kp, acc.data(), bp);
      for (int64_t m = 0; m < m_rows; ++m)
        for (int64_t t = 0; t < rows; ++t) op[m * n_out + n[t]] = acc_sum(acc.data() + (m * kTileRows + t) * kAccSize);
    }
  });
  return dtype == at::kFloat ? out : out.to(dtype);
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
  const auto* s = static_cast<const uint8_t*>(scale.data_ptr());
  const Fp8 f{static_cast<const uint8_t*>(weight.data_ptr()), s, k, tiles, fp8_scales_exact_only(s, scale.numel())};
  return rows_times_weight(x, n_out, act_quant, f);
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
  const Fp4 f{static_cast<const uint8_t*>(packed.data_ptr()), static_cast<const uint8_t*>(scale.data_ptr()), k};
  return rows_times_weight(x, n_out, act_quant, f);
}

}  // namespace v4cli
