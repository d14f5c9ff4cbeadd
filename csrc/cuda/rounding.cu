// The reference's quantisation-aware rounding of activations outside the GEMMs on the GPU (the twins:
// ops_ref.fp8_round, fp4_round, i.e. quant.fp8_round_blocks, fp4_round_blocks): the KV entries' non-rope dims to
// e4m3 in blocks of 64, the indexer's rotated queries and keys to e2m1 in blocks of 32, UE8M0 scales.
//
// One thread per 16 bytes of x (8 bf16 or 4 float values); the lanes of one scale block reduce its amax by
// shuffles. Widths that do not split into such groups run one thread per block. The element roundings and scales
// are quant.cuh's, the twins' bit for bit; a block with an infinite or NaN amax comes out NaN, as the twins'.

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "launch.h"
#include "pointwise.cuh"
#include "quant.cuh"

namespace v4cli::cuda {
namespace {

using pointwise::aligned;
using pointwise::blocks_for;
using pointwise::Chunk;
using pointwise::from_float;
using pointwise::kFull;
using pointwise::kThreads;
using pointwise::to_float;

// amax that keeps a NaN, as torch's amax does (fmaxf drops it).
__device__ inline float max_nan(float a, float b) { return (b > a || b != b) ? b : a; }

// The block's scale; an infinite or NaN amax is the scale itself, as the twin's log2/exp2 make it (so that the
// block comes out NaN as there).
template <bool kFp8>
__device__ inline float block_scale(float amax) {
  if (!isfinite(amax)) return amax;
  return kFp8 ? fp8_block_scale(amax) : fp4_block_scale(amax);
}

template <bool kFp8>
__device__ inline float round_scaled(float v, float s) {
  return kFp8 ? fp8_round_scaled(v, s) : fp4_round_scaled(v, s);
}

// V values a thread, `group` lanes (a power of two up to 32) per block of group * V values; each row of d values
// (d a multiple of V) takes `slots` threads, a multiple of group, so that groups never straddle rows or warps.
template <typename T, int V, bool kFp8>
__global__ void __launch_bounds__(kThreads) round_vec_kernel(const T* x, T* y, int64_t rows, int64_t d,
                                                             int64_t width, int group, int64_t slots) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t r = g / slots, c = (g % slots) * V;
  const bool live = r < rows && c < d, rounds = c < width;  // `rounds` is the same across a group
  Chunk<T, V> chunk;
  if (live) chunk.load(x + r * d + c);
  float v[V], amax = 0.f;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    v[i] = to_float(chunk.v[i]);
    if (live && rounds) amax = max_nan(amax, fabsf(v[i]));
  }
  for (int m = 1; m < group; m *= 2) amax = max_nan(amax, __shfl_xor_sync(kFull, amax, m));
  if (!live) return;
  if (rounds) {
    const float s = block_scale<kFp8>(amax);
#pragma unroll
    for (int i = 0; i < V; ++i) chunk.v[i] = from_float<T>(round_scaled<kFp8>(v[i], s));
  }
  chunk.store(y + r * d + c);
}

// One thread per block of a row (any block size); the values past width copied by the row's threads in turn.
template <typename T, bool kFp8>
__global__ void __launch_bounds__(kThreads) round_block_kernel(const T* x, T* y, int64_t rows, int64_t d,
                                                               int64_t width, int64_t block, int64_t units) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (g >= rows * units) return;
  const int64_t r = g / units, u = g % units;
  const T* xr = x + r * d;
  T* yr = y + r * d;
  if (u < width / block) {
    const T* xb = xr + u * block;
    float amax = 0.f;
    for (int64_t j = 0; j < block; ++j) amax = max_nan(amax, fabsf(to_float(xb[j])));
    const float s = block_scale<kFp8>(amax);
    for (int64_t j = 0; j < block; ++j) yr[u * block + j] = from_float<T>(round_scaled<kFp8>(to_float(xb[j]), s));
  }
  for (int64_t j = width + u; j < d; j += units) yr[j] = xr[j];
}

template <typename T, bool kFp8>
cudaError_t launch_round(const T* x, T* y, int64_t rows, int64_t d, int64_t width, int64_t block,
                         cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t group = block / kVec;
  if (block % kVec == 0 && group <= 32 && (group & (group - 1)) == 0 && d % kVec == 0 && aligned(x, 16) &&
      aligned(y, 16)) {
    const int64_t slots = (d / kVec + group - 1) / group * group;
    round_vec_kernel<T, kVec, kFp8><<<blocks_for(rows * slots), kThreads, 0, stream>>>(
        x, y, rows, d, width, static_cast<int>(group), slots);
  } else {
    const int64_t units = width / block > 0 ? width / block : 1;
    round_block_kernel<T, kFp8><<<blocks_for(rows * units), kThreads, 0, stream>>>(x, y, rows, d, width, block,
                                                                                    units);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t fp8_round(const void* x, void* y, int64_t rows, int64_t d, int64_t width, int64_t block, bool bf16,
                      cudaStream_t stream) {
  if (rows * d == 0) return cudaSuccess;
  if (block < 1 || width < 0 || width > d || width % block != 0) return cudaErrorInvalidValue;
  if (bf16) {
    return launch_round<__nv_bfloat16, true>(static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y),
                                             rows, d, width, block, stream);
  }
  return launch_round<float, true>(static_cast<const float*>(x), static_cast<float*>(y), rows, d, width, block,
                                   stream);
}

cudaError_t fp4_round(const void* x, void* y, int64_t rows, int64_t d, int64_t block, bool bf16,
                      cudaStream_t stream) {
  if (rows * d == 0) return cudaSuccess;
  if (block < 1 || d % block != 0) return cudaErrorInvalidValue;
  if (bf16) {
    return launch_round<__nv_bfloat16, false>(static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y),
                                              rows, d, d, block, stream);
  }
  return launch_round<float, false>(static_cast<const float*>(x), static_cast<float*>(y), rows, d, d, block, stream);
}

}  // namespace v4cli::cuda
