// RMSNorm and mHC's stream collapse/expansion on the GPU (the twins: ops_ref.rms_norm, hc_pre, hc_post).
//
// All three are memory-bound row operations, at most a few MB a layer per step. rms_norm: one block of 256 threads
// per row; each thread sums the squares of a strided slice in float32, a shared-memory tree gives the row's sum,
// then every thread scales its slice (the row is read twice: the second read hits L2 for any D the model has).
// hc_post: one thread per output element (t, k, d): post[t,k] * o[t,d] + sum_j comb[t,j,k] * x[t,j,d], j in order.
// hc_collapse (inside hc_pre): u[t,d] = sum_j pre[t,j] * x[t,j,d]. row_rsqrt (inside hc_pre): 1/sqrt(mean(x^2)+eps)
// of each flattened row. Sums are float32 throughout; bfloat16 inputs are widened exactly, outputs rounded once.

#include <cuda_bf16.h>

#include <cstdint>

#include "launch.h"

namespace v4cli::cuda {
namespace {

constexpr int kRowThreads = 256;

template <typename T>
__device__ inline float load(const T* p, int64_t i);
template <>
__device__ inline float load<float>(const float* p, int64_t i) { return p[i]; }
template <>
__device__ inline float load<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }

template <typename T>
__device__ inline void store(T* p, int64_t i, float v);
template <>
__device__ inline void store<float>(float* p, int64_t i, float v) { p[i] = v; }
template <>
__device__ inline void store<__nv_bfloat16>(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// The sum over the block of one float per thread (kRowThreads threads), returned to every thread.
__device__ inline float block_sum(float v, float* scratch) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kRowThreads / 32 ? scratch[lane] : 0.f;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  const float total = scratch[0];
  __syncthreads();  // scratch is reused by the caller's next block_sum
  return total;
}

// 1 / sqrt(mean(row^2) + eps) of one row of length d.
template <typename T>
__device__ inline float row_factor(const T* row, int64_t d, float eps, float* scratch) {
  float sq = 0.f;
  for (int64_t i = threadIdx.x; i < d; i += kRowThreads) {
    const float v = load(row, i);
    sq = fmaf(v, v, sq);
  }
  return rsqrtf(block_sum(sq, scratch) / static_cast<float>(d) + eps);
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads) rms_norm_kernel(const T* x, const float* w, T* y, int64_t d, float eps) {
  __shared__ float scratch[kRowThreads / 32];
  const int64_t r = blockIdx.x;
  const T* row = x + r * d;
  const float f = row_factor(row, d, eps, scratch);
  for (int64_t i = threadIdx.x; i < d; i += kRowThreads) store(y, r * d + i, w[i] * (load(row, i) * f));
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads) row_rsqrt_kernel(const T* x, float* out, int64_t d, float eps) {
  __shared__ float scratch[kRowThreads / 32];
  const float f = row_factor(x + blockIdx.x * d, d, eps, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = f;
}

template <typename T>
__global__ void hc_post_kernel(const T* o, const T* x, const float* post, const float* comb, T* y, int64_t tokens,
                               int n, int64_t d) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // over [T, n, D]
  if (i >= tokens * n * d) return;
  const int64_t t = i / (n * d), k = (i / d) % n, c = i % d;
  const float* cm = comb + t * n * n;
  float acc = 0.f;
  for (int j = 0; j < n; ++j) acc = fmaf(cm[j * n + k], load(x, (t * n + j) * d + c), acc);
  store(y, i, fmaf(post[t * n + k], load(o, t * d + c), acc));
}

template <typename T>
__global__ void hc_collapse_kernel(const T* x, const float* pre, T* u, int64_t tokens, int n, int64_t d) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // over [T, D]
  if (i >= tokens * d) return;
  const int64_t t = i / d, c = i % d;
  float acc = 0.f;
  for (int j = 0; j < n; ++j) acc = fmaf(pre[t * n + j], load(x, (t * n + j) * d + c), acc);
  store(u, i, acc);
}

constexpr int kElemThreads = 256;

inline unsigned blocks_for(int64_t count) { return static_cast<unsigned>((count + kElemThreads - 1) / kElemThreads); }

}  // namespace

cudaError_t rms_norm(const void* x, const float* w, void* y, int64_t rows, int64_t d, float eps, bool bf16,
                     cudaStream_t stream) {
  if (rows == 0 || d == 0) return cudaSuccess;
  if (bf16) {
    rms_norm_kernel<<<rows, kRowThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), w,
                                                      static_cast<__nv_bfloat16*>(y), d, eps);
  } else {
    rms_norm_kernel<<<rows, kRowThreads, 0, stream>>>(static_cast<const float*>(x), w, static_cast<float*>(y), d,
                                                      eps);
  }
  return cudaGetLastError();
}

cudaError_t row_rsqrt(const void* x, float* out, int64_t rows, int64_t d, float eps, bool bf16, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (bf16) {
    row_rsqrt_kernel<<<rows, kRowThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), out, d, eps);
  } else {
    row_rsqrt_kernel<<<rows, kRowThreads, 0, stream>>>(static_cast<const float*>(x), out, d, eps);
  }
  return cudaGetLastError();
}

cudaError_t hc_post(const void* o, const void* x, const float* post, const float* comb, void* y, int64_t tokens,
                    int n, int64_t d, bool bf16, cudaStream_t stream) {
  const int64_t count = tokens * n * d;
  if (count == 0) return cudaSuccess;
  if (bf16) {
    hc_post_kernel<<<blocks_for(count), kElemThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(o), static_cast<const __nv_bfloat16*>(x), post, comb,
        static_cast<__nv_bfloat16*>(y), tokens, n, d);
  } else {
    hc_post_kernel<<<blocks_for(count), kElemThreads, 0, stream>>>(static_cast<const float*>(o),
                                                                   static_cast<const float*>(x), post, comb,
                                                                   static_cast<float*>(y), tokens, n, d);
  }
  return cudaGetLastError();
}

cudaError_t hc_collapse(const void* x, const float* pre, void* u, int64_t tokens, int n, int64_t d, bool bf16,
                        cudaStream_t stream) {
  const int64_t count = tokens * d;
  if (count == 0) return cudaSuccess;
  if (bf16) {
    hc_collapse_kernel<<<blocks_for(count), kElemThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(x), pre, static_cast<__nv_bfloat16*>(u), tokens, n, d);
  } else {
    hc_collapse_kernel<<<blocks_for(count), kElemThreads, 0, stream>>>(static_cast<const float*>(x), pre,
                                                                       static_cast<float*>(u), tokens, n, d);
  }
  return cudaGetLastError();
}

}  // namespace v4cli::cuda
