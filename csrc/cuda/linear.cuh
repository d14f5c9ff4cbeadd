// What the linear kernels share (linear.cu: the launcher, input rounding, split-K sum and SIMT fallback;
// linear_tc.cu: the tensor-core path): the tensor-core path's arguments and the plan of a call. The plan's index
// math is __host__ __device__ so tests/cuda/linear_host.cu checks it without a GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "launch.h"
#include "moe.cuh"

namespace v4cli::cuda {

constexpr int kLinWarps = 4;                  // tensor-core path: warps per block, 16 weight rows each
constexpr int kLinBlockRows = 16 * kLinWarps;
constexpr int kLinMaxSplits = 16;             // split-K factor bound (partials: splits x rows x N floats)
constexpr int kLinTargetWarps = 4096;         // enough warps streaming weights to keep HBM busy
constexpr int kLinSimtWarps = 8;              // SIMT path: warps per block
constexpr int kLinSimtFewRows = 2048;         // SIMT path: below this many weight rows, a block per row
constexpr int kLinSimtManyTokens = 32;        // SIMT path: past this many tokens a thread covers 4 weight rows

// The tensor-core path takes a format when each lane's 16-byte pieces tile K exactly: 4 lanes x G elements a step.
__host__ __device__ inline int lin_step_elems(int fmt) {
  return fmt == kMoeFormatFp4 ? 4 * 32 : fmt == kMoeFormatFp8 ? 4 * 16 : 4 * 8;
}
__host__ __device__ inline bool lin_tc_format(int fmt) {
  return fmt == kMoeFormatFp4 || fmt == kMoeFormatFp8 || fmt == kMoeFormatBf16;
}

// Split-K: chosen from (format, N, K) alone, so that a row's sum never depends on M. Enough splits for
// kLinTargetWarps warps over N's 16-row warps, each split a whole number of steps, no empty split.
struct LinSplit {
  int splits, steps_per_split;
};
__host__ __device__ inline LinSplit lin_split(int fmt, int N, int K) {
  const int steps = K / lin_step_elems(fmt);
  const int warps = (N + 15) / 16;
  int want = (kLinTargetWarps + warps - 1) / warps;
  want = want < 1 ? 1 : want > kLinMaxSplits ? kLinMaxSplits : want;
  if (want > steps) want = steps > 0 ? steps : 1;
  const int per = (steps + want - 1) / want;
  return {per > 0 ? (steps + per - 1) / per : 1, per};
}

// Token tiles (of 8) per block pass of the tensor-core path: as few as M needs up to 4, then 8 (4 with three
// input planes or FP4's wider pieces, for registers). Only how the tokens are grouped changes with it, not any
// output's sum.
__host__ __device__ inline int lin_tiles(int fmt, int64_t M, int planes) {
  if (M <= 8) return 1;
  if (M <= 16) return 2;
  if (M <= 32 || planes > 1 || fmt == kMoeFormatFp4) return 4;
  return 8;
}

// Splits run in turn within a block when the grid has warps enough without them (no partials to write).
__host__ __device__ inline bool lin_serial(int fmt, int64_t M, int N, int planes) {
  const int tokens = 8 * lin_tiles(fmt, M, planes);
  return (M + tokens - 1) / tokens * ((N + 15) / 16) >= kLinTargetWarps / 2;
}

// The tensor-core path's addressing, for lane (g = lane / 4, t = lane % 4) of a warp owning weight rows n0..n0+15
// and a token tile: at step `step` (4 lanes x G elements of K) it reads 16 bytes of rows n0 + g and n0 + g + 8
// at byte lin_w_offset, their scale bytes at lin_s_offset, and word v (8 bfloat16) of its token's (8j + g)
// elements G t .. G t + G - 1 of the step at lin_x_offset; accumulator c of tile j holds weight row
// n0 + g + 8 (c / 2), token 8j + 2t + c % 2.
__host__ __device__ inline size_t lin_w_offset(int fmt, int row, int t, int step, int K) {
  const size_t row_bytes = fmt == kMoeFormatFp4 ? K / 2 : fmt == kMoeFormatFp8 ? K : 2 * static_cast<size_t>(K);
  return row * row_bytes + 16 * t + static_cast<size_t>(step) * 64;
}
__host__ __device__ inline size_t lin_s_offset(int fmt, int row, int t, int step, int K) {
  if (fmt == kMoeFormatFp4) return static_cast<size_t>(row) * (K / kFp4Block) + 4 * step + t;  // 32 elements each
  return static_cast<size_t>(row / kFp8Tile) * ((K + kFp8Tile - 1) / kFp8Tile) + (step >> 1);  // 64 of 128 columns
}
__host__ __device__ inline size_t lin_x_offset(int fmt, int64_t m, int t, int step, int v, int K) {
  const int G = lin_step_elems(fmt) / 4;
  return static_cast<size_t>(m) * K + static_cast<size_t>(step) * 4 * G + G * t + 8 * v;
}
__host__ __device__ inline int lin_out_row(int g, int c) { return g + 8 * (c >> 1); }
__host__ __device__ inline int lin_out_token(int j, int t, int c) { return 8 * j + 2 * t + (c & 1); }

// The tensor-core kernel's arguments: x as `planes` bfloat16 copies [M, K] (`plane` elements apart) whose sum is
// the (rounded) input -- one plane when x is bfloat16 or rounded to e4m3 (exact in bfloat16), three for float32
// (hi + mid + lo: every float32 exactly). Steps [z * per, (z + 1) * per) of split z; with one split, or `serial`
// (a block sums the splits in turn, as the partials' sum adds them: the same bits), the sums go straight to y,
// else to part [splits, M, N].
struct LinTc {
  const uint8_t* w;
  const uint8_t* s;
  const __nv_bfloat16* xq;
  int64_t plane;
  void* y;
  bool y_bf16;
  float* part;
  int64_t M;
  int N, K;
  int splits, per;
  bool serial;
};
void linear_tc_launch(const LinTc& a, int fmt, int planes, cudaStream_t stream);

}  // namespace v4cli::cuda
