// The row-wise ops around attention and mHC on the GPU (the twins: ops_ref.hc_sinkhorn, rope, hadamard; the
// roundings fp8_round/fp4_round are rounding.cu). All are memory- or latency-bound: a few MB a call at most, called
// ~100 times a decode step.
//
// hc_sinkhorn: for n = 2 or 4 (the model's), n*n lanes per token, lane (i, j) holding comb[i, j]; a row's sums
// are shuffles among its n lanes, a column's among the n lanes n apart, so each of the 2*iters - 1 rounds is a
// few shuffles and one division per lane. Other n (to 8): one thread per token. The xor-butterfly sums leave the
// same bits in every lane (each step adds a pair in both lanes, and float addition commutes).
// rope: one thread per 16 bytes of x (8 bf16 or 4 float values): copied if they lie in the nope dims, else
// rotated as pairs; rows whose widths do not split into such vectors go one element a thread.
// hadamard: one warp per row (rows under 32 values: d lanes each), lane k holding the values k*E..k*E+E-1:
// butterflies of span under E inside the lane, the others between lanes (__shfl_xor_sync).
//
// float32 math throughout; the rotations round each product and sum as the twins do (no FMA contraction), and
// results are rounded once to x's dtype.

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "launch.h"
#include "pointwise.cuh"

namespace v4cli::cuda {
namespace {

using pointwise::aligned;
using pointwise::blocks_for;
using pointwise::Chunk;
using pointwise::from_float;
using pointwise::kFull;
using pointwise::kThreads;
using pointwise::to_float;

// ---- hc_sinkhorn ------------------------------------------------------------------------------------------------

__device__ inline float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

template <int N>
__global__ void __launch_bounds__(128) sinkhorn_lanes_kernel(const float* mixes, const float* scale,
                                                             const float* base, float* pre, float* post, float* comb,
                                                             int64_t tokens, int iters, float eps) {
  constexpr int kLanes = N * N, kWidth = (2 + N) * N;
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t t = g / kLanes;
  const int l = static_cast<int>(g % kLanes);
  const bool live = t < tokens;
  const float* row = mixes + (live ? t : 0) * kWidth;  // spare lanes of the last warp shuffle token 0's values
  if (live && l < 2 * N) {  // the gates: pre in lanes 0..N-1, post in N..2N-1
    const float sg = sigmoid(__fadd_rn(__fmul_rn(scale[l < N ? 0 : 1], row[l]), base[l]));
    if (l < N) {
      pre[t * N + l] = sg + eps;
    } else {
      post[t * N + l - N] = 2.f * sg;
    }
  }
  const float z = __fadd_rn(__fmul_rn(scale[2], row[2 * N + l]), base[2 * N + l]);
  float top = z;
#pragma unroll
  for (int m = 1; m < N; m *= 2) top = fmaxf(top, __shfl_xor_sync(kFull, top, m));
  const float e = expf(z - top);
  float total = e;
#pragma unroll
  for (int m = 1; m < N; m *= 2) total += __shfl_xor_sync(kFull, total, m);
  float c = e / total + eps;
  // columns first (lanes N apart), then rows (adjacent lanes), 2 * iters - 1 normalisations in all
  for (int round = 0; round < 2 * iters - 1; ++round) {
    float sum = c;
    if (round % 2 == 0) {
#pragma unroll
      for (int m = N; m < kLanes; m *= 2) sum += __shfl_xor_sync(kFull, sum, m);
    } else {
#pragma unroll
      for (int m = 1; m < N; m *= 2) sum += __shfl_xor_sync(kFull, sum, m);
    }
    c = c / (sum + eps);
  }
  if (live) comb[t * kLanes + l] = c;
}

template <int N>
__global__ void __launch_bounds__(128) sinkhorn_row_kernel(const float* mixes, const float* scale, const float* base,
                                                           float* pre, float* post, float* comb, int64_t tokens,
                                                           int iters, float eps) {
  constexpr int kWidth = (2 + N) * N;
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= tokens) return;
  const float* row = mixes + t * kWidth;
  const float s0 = scale[0], s1 = scale[1], s2 = scale[2];
#pragma unroll
  for (int i = 0; i < N; ++i) {
    pre[t * N + i] = sigmoid(__fadd_rn(__fmul_rn(s0, row[i]), base[i])) + eps;
    post[t * N + i] = 2.f * sigmoid(__fadd_rn(__fmul_rn(s1, row[N + i]), base[N + i]));
  }
  float c[N][N];
#pragma unroll
  for (int i = 0; i < N; ++i) {
    float top = -INFINITY, total = 0.f;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      c[i][j] = __fadd_rn(__fmul_rn(s2, row[2 * N + i * N + j]), base[2 * N + i * N + j]);
      top = fmaxf(top, c[i][j]);
    }
#pragma unroll
    for (int j = 0; j < N; ++j) total += (c[i][j] = expf(c[i][j] - top));
#pragma unroll
    for (int j = 0; j < N; ++j) c[i][j] = c[i][j] / total + eps;
  }
  for (int round = 0; round < 2 * iters - 1; ++round) {
    float sums[N];
    const bool by_column = round % 2 == 0;
#pragma unroll
    for (int a = 0; a < N; ++a) {
      float sum = 0.f;
#pragma unroll
      for (int z = 0; z < N; ++z) sum += by_column ? c[z][a] : c[a][z];
      sums[a] = sum + eps;
    }
#pragma unroll
    for (int i = 0; i < N; ++i) {
#pragma unroll
      for (int j = 0; j < N; ++j) c[i][j] = c[i][j] / sums[by_column ? j : i];
    }
  }
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int j = 0; j < N; ++j) comb[(t * N + i) * N + j] = c[i][j];
  }
}

template <int N>
void launch_sinkhorn_row(const float* mixes, const float* scale, const float* base, float* pre, float* post,
                         float* comb, int64_t tokens, int iters, float eps, cudaStream_t stream) {
  sinkhorn_row_kernel<N><<<blocks_for(tokens, 128), 128, 0, stream>>>(mixes, scale, base, pre, post, comb, tokens,
                                                                      iters, eps);
}

// ---- rope -------------------------------------------------------------------------------------------------------

// The twins' rotation of one pair (e, o), each product and sum rounded on its own.
__device__ inline void rotate(float e, float o, float c, float s, float& out_e, float& out_o) {
  out_e = __fsub_rn(__fmul_rn(e, c), __fmul_rn(o, s));
  out_o = __fadd_rn(__fmul_rn(e, s), __fmul_rn(o, c));
}

// V values a thread (V even, width and nope multiples of V): x viewed as rows of width values, `per_t` of them
// per token.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads) rope_vec_kernel(const T* x, const float* cos, const float* sin, T* y,
                                                            int64_t chunks, int64_t per_t, int64_t width,
                                                            int64_t half, bool inverse) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (g >= chunks) return;
  const int64_t per_row = width / V, line = g / per_row, c = (g % per_row) * V, nope = width - 2 * half;
  Chunk<T, V> in;
  in.load(x + g * V);
  if (c < nope) {
    in.store(y + g * V);
    return;
  }
  const int64_t base = (line / per_t) * half + (c - nope) / 2;
  Chunk<T, V> out;
#pragma unroll
  for (int i = 0; i < V / 2; ++i) {
    const float s = inverse ? -sin[base + i] : sin[base + i];
    float e, o;
    rotate(to_float(in.v[2 * i]), to_float(in.v[2 * i + 1]), cos[base + i], s, e, o);
    out.v[2 * i] = from_float<T>(e);
    out.v[2 * i + 1] = from_float<T>(o);
  }
  out.store(y + g * V);
}

// One output value a thread, for any widths.
template <typename T>
__global__ void __launch_bounds__(kThreads) rope_elem_kernel(const T* x, const float* cos, const float* sin, T* y,
                                                             int64_t count, int64_t per_t, int64_t width,
                                                             int64_t half, bool inverse) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (g >= count) return;
  const int64_t c = g % width, nope = width - 2 * half;
  if (c < nope) {
    y[g] = x[g];
    return;
  }
  const int64_t q = c - nope, first = g - (q & 1);  // the pair's even element
  const int64_t k = (g / width / per_t) * half + q / 2;
  const float s = inverse ? -sin[k] : sin[k];
  float e, o;
  rotate(to_float(x[first]), to_float(x[first + 1]), cos[k], s, e, o);
  y[g] = from_float<T>(q & 1 ? o : e);
}

template <typename T>
cudaError_t launch_rope(const T* x, const float* cos, const float* sin, T* y, int64_t rows, int64_t per_row,
                        int64_t width, int64_t half, bool inverse, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t count = rows * per_row * width, nope = width - 2 * half;
  if (width % kVec == 0 && nope % kVec == 0 && aligned(x, 16) && aligned(y, 16)) {
    rope_vec_kernel<T, kVec><<<blocks_for(count / kVec), kThreads, 0, stream>>>(x, cos, sin, y, count / kVec,
                                                                                per_row, width, half, inverse);
  } else if (width % 2 == 0 && nope % 2 == 0 && aligned(x, 2 * sizeof(T)) && aligned(y, 2 * sizeof(T))) {
    rope_vec_kernel<T, 2><<<blocks_for(count / 2), kThreads, 0, stream>>>(x, cos, sin, y, count / 2, per_row,
                                                                          width, half, inverse);
  } else {
    rope_elem_kernel<T><<<blocks_for(count), kThreads, 0, stream>>>(x, cos, sin, y, count, per_row, width, half,
                                                                    inverse);
  }
  return cudaGetLastError();
}

// ---- hadamard ---------------------------------------------------------------------------------------------------

// Rows of d = lanes * E values, 32 / lanes rows a warp.
template <typename T, int E>
__global__ void __launch_bounds__(kThreads) hadamard_kernel(const T* x, T* y, int64_t rows, int lanes, float norm) {
  const int lane = threadIdx.x % 32;
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int64_t r = warp * (32 / lanes) + lane / lanes;
  const int k = lane % lanes;
  const bool live = r < rows;
  const int64_t at = (r * lanes + k) * E;
  float v[E];
  Chunk<T, E> chunk;
  if (live) chunk.load(x + at);
#pragma unroll
  for (int i = 0; i < E; ++i) v[i] = live ? to_float(chunk.v[i]) : 0.f;
#pragma unroll
  for (int h = 1; h < E; h *= 2) {  // Sylvester order: (a, b) -> (a + b, a - b) over blocks of 2h
#pragma unroll
    for (int i = 0; i < E; ++i) {
      if ((i & h) == 0) {
        const float a = v[i], b = v[i + h];
        v[i] = a + b;
        v[i + h] = a - b;
      }
    }
  }
  for (int m = 1; m < lanes; m *= 2) {  // span m * E: the partner's value at the same place, in lane k ^ m
    const bool upper = (k & m) != 0;
#pragma unroll
    for (int i = 0; i < E; ++i) {
      const float other = __shfl_xor_sync(kFull, v[i], m);
      v[i] = upper ? other - v[i] : v[i] + other;
    }
  }
  if (!live) return;
#pragma unroll
  for (int i = 0; i < E; ++i) chunk.v[i] = from_float<T>(v[i] * norm);
  chunk.store(y + at);
}

template <typename T, int E>
void launch_hadamard_e(const T* x, T* y, int64_t rows, int lanes, float norm, cudaStream_t stream) {
  const int64_t warps = (rows + 32 / lanes - 1) / (32 / lanes);
  hadamard_kernel<T, E><<<blocks_for(warps * 32), kThreads, 0, stream>>>(x, y, rows, lanes, norm);
}

template <typename T>
cudaError_t launch_hadamard(const T* x, T* y, int64_t rows, int64_t d, float norm, cudaStream_t stream) {
  if (d < 32) {
    launch_hadamard_e<T, 1>(x, y, rows, static_cast<int>(d), norm, stream);
    return cudaGetLastError();
  }
  switch (d / 32) {
    case 1: launch_hadamard_e<T, 1>(x, y, rows, 32, norm, stream); break;
    case 2: launch_hadamard_e<T, 2>(x, y, rows, 32, norm, stream); break;
    case 4: launch_hadamard_e<T, 4>(x, y, rows, 32, norm, stream); break;
    case 8: launch_hadamard_e<T, 8>(x, y, rows, 32, norm, stream); break;
    case 16: launch_hadamard_e<T, 16>(x, y, rows, 32, norm, stream); break;
    case 32: launch_hadamard_e<T, 32>(x, y, rows, 32, norm, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t hc_sinkhorn(const float* mixes, const float* scale, const float* base, float* pre, float* post,
                        float* comb, int64_t tokens, int n, int iters, float eps, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  if (n < 1 || n > kSinkhornMaxStreams || iters < 1) return cudaErrorInvalidValue;
  switch (n) {
    case 2:
      sinkhorn_lanes_kernel<2><<<blocks_for(tokens * 4, 128), 128, 0, stream>>>(mixes, scale, base, pre, post, comb,
                                                                                tokens, iters, eps);
      break;
    case 4:
      sinkhorn_lanes_kernel<4><<<blocks_for(tokens * 16, 128), 128, 0, stream>>>(mixes, scale, base, pre, post,
                                                                                 comb, tokens, iters, eps);
      break;
    case 1: launch_sinkhorn_row<1>(mixes, scale, base, pre, post, comb, tokens, iters, eps, stream); break;
    case 3: launch_sinkhorn_row<3>(mixes, scale, base, pre, post, comb, tokens, iters, eps, stream); break;
    case 5: launch_sinkhorn_row<5>(mixes, scale, base, pre, post, comb, tokens, iters, eps, stream); break;
    case 6: launch_sinkhorn_row<6>(mixes, scale, base, pre, post, comb, tokens, iters, eps, stream); break;
    case 7: launch_sinkhorn_row<7>(mixes, scale, base, pre, post, comb, tokens, iters, eps, stream); break;
    default: launch_sinkhorn_row<8>(mixes, scale, base, pre, post, comb, tokens, iters, eps, stream); break;
  }
  return cudaGetLastError();
}

cudaError_t rope(const void* x, const float* cos, const float* sin, void* y, int64_t rows, int64_t per_row,
                 int64_t width, int64_t half, bool inverse, bool bf16, cudaStream_t stream) {
  if (rows * per_row * width == 0) return cudaSuccess;
  if (2 * half > width) return cudaErrorInvalidValue;
  if (bf16) {
    return launch_rope(static_cast<const __nv_bfloat16*>(x), cos, sin, static_cast<__nv_bfloat16*>(y), rows,
                       per_row, width, half, inverse, stream);
  }
  return launch_rope(static_cast<const float*>(x), cos, sin, static_cast<float*>(y), rows, per_row, width, half,
                     inverse, stream);
}

cudaError_t hadamard(const void* x, void* y, int64_t rows, int64_t d, bool bf16, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (d < 1 || d > kHadamardMaxDim || (d & (d - 1)) != 0 || !aligned(x, 16) || !aligned(y, 16)) {
    return cudaErrorInvalidValue;
  }
  const float norm = static_cast<float>(pow(static_cast<double>(d), -0.5));  // the twin's d**-0.5, as a float
  if (bf16) {
    return launch_hadamard(static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y), rows, d, norm,
                           stream);
  }
  return launch_hadamard(static_cast<const float*>(x), static_cast<float*>(y), rows, d, norm, stream);
}

}  // namespace v4cli::cuda
