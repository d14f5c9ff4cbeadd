// fp8_linear, fp4_linear and dense_linear on the GPU (the twins: ops_ref.*_linear): y = x W^T, float32 sums, y in
// the output dtype. A call runs up to three kernels:
//   1. prep: the input as the products read it -- rounded to e4m3 per 1x128 block with act_quant (bit for bit
//      quant.act_quant), then as bfloat16 planes for the tensor cores (one plane, or three for float32: exact)
//      or as float32 for the SIMT path. Skipped when x already is what the product reads.
//   2. the product: linear_tc.cu on tensor cores when K is a whole number of the format's steps, else the SIMT
//      kernel below (a warp per weight row, any shape, any format).
//   3. with split-K, the partials summed in split order into y.
// Every choice that shapes an output's sum (path, splits, the order within) depends on the format, N and K,
// never on M: a row's result is the same whatever rows come with it. Rows run in chunks that keep the partials
// under kPartBudget.
#include <algorithm>
#include <cstddef>

#include "linear.cuh"

namespace v4cli::cuda {
namespace {

constexpr size_t kPartBudget = size_t(64) << 20;  // bytes of split-K partials per chunk of rows
constexpr int kMaxGridY = 65535;

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

__device__ inline float load_x(const void* x, bool bf16, size_t i) {
  return bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(x)[i]) : static_cast<const float*>(x)[i];
}

// A max that keeps NaN, as torch's amax does.
__device__ inline float nan_max(float a, float b) { return (a != a || b != b) ? a + b : fmaxf(a, b); }

// One warp per (row, 128-block of K; the last block may be shorter): the block's values, e4m3-rounded with the
// block's scale when `act`, stored as float32 (planes == 0) or as `planes` bfloat16 parts summing to them.
__global__ void linear_prep(const void* x, int64_t ldx, bool x_bf16, int64_t M, int K, bool act, int planes,
                            void* out, int64_t plane) {
  const int nb = (K + kActBlock - 1) / kActBlock, lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t wi = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); wi < M * nb;
       wi += warps) {
    const int64_t m = wi / nb;
    const int k0 = static_cast<int>(wi % nb) * kActBlock;
    float v[kActBlock / 32];
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < kActBlock / 32; ++i) {
      const int k = k0 + lane + 32 * i;
      v[i] = k < K ? load_x(x, x_bf16, static_cast<size_t>(m) * ldx + k) : 0.f;
      amax = nan_max(amax, fabsf(v[i]));
    }
    if (act) {
      for (int off = 16; off > 0; off >>= 1) amax = nan_max(amax, __shfl_xor_sync(0xffffffffu, amax, off));
      const float s = amax != amax ? amax : fp8_block_scale(amax);  // a NaN in the block: all NaN, as torch
#pragma unroll
      for (int i = 0; i < kActBlock / 32; ++i) v[i] = fp8_round_scaled(v[i], s);
    }
#pragma unroll
    for (int i = 0; i < kActBlock / 32; ++i) {
      const int k = k0 + lane + 32 * i;
      if (k >= K) continue;
      const size_t o = static_cast<size_t>(m) * K + k;
      if (planes == 0) {
        static_cast<float*>(out)[o] = v[i];
        continue;
      }
      auto* q = static_cast<__nv_bfloat16*>(out);
      const __nv_bfloat16 hi = __float2bfloat16_rn(v[i]);
      q[o] = hi;
      if (planes == 3) {  // v - hi and what is left of it are exact in float32; three bf16 hold all 24 bits
        const float r = v[i] - __bfloat162float(hi);
        const __nv_bfloat16 mid = __float2bfloat16_rn(r);
        q[plane + o] = mid;
        q[2 * plane + o] = __float2bfloat16_rn(r - __bfloat162float(mid));
      }
    }
  }
}

// y[m, n] = sum over splits z in order of part[z, m, n].
__global__ void linear_sum(const float* part, int splits, int64_t count, void* y, bool y_bf16) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = part[i];
    for (int z = 1; z < splits; ++z) s += part[z * count + i];
    if (y_bf16) {
      static_cast<__nv_bfloat16*>(y)[i] = __float2bfloat16_rn(s);
    } else {
      static_cast<float*>(y)[i] = s;
    }
  }
}

// W[n, k] as float32, exactly: e4m3 or e2m1 times its UE8M0 scale (as the twin's dequantization), or the weight.
template <int FMT>
__device__ inline float weight_at(const void* w, const uint8_t* s, int n, int k, int K) {
  if constexpr (FMT == kMoeFormatFp8) {
    const uint8_t b = static_cast<const uint8_t*>(w)[static_cast<size_t>(n) * K + k];
    const int tiles = (K + kFp8Tile - 1) / kFp8Tile;
    return e4m3_to_float(b) * ue8m0_to_float(s[static_cast<size_t>(n / kFp8Tile) * tiles + k / kFp8Tile]);
  } else if constexpr (FMT == kMoeFormatFp4) {
    const uint8_t b = static_cast<const uint8_t*>(w)[static_cast<size_t>(n) * (K / 2) + k / 2];
    const uint32_t code = (k & 1) ? b >> 4 : b & 15;  // element 2i in the low nibble (quant.pack_fp4)
    return e2m1_to_float(code) * ue8m0_to_float(s[static_cast<size_t>(n) * (K / kFp4Block) + k / kFp4Block]);
  } else if constexpr (FMT == kMoeFormatBf16) {
    return __bfloat162float(static_cast<const __nv_bfloat16*>(w)[static_cast<size_t>(n) * K + k]);
  } else {
    return static_cast<const float*>(w)[static_cast<size_t>(n) * K + k];
  }
}

// SIMT: WPR warps per (R weight rows, TOK tokens); thread i of the 32 WPR sums k = i, i + 32 WPR, ... of each
// output with FMAs, then a fixed butterfly in each warp and the warps' sums in order. x is float32 [M, K]. The
// order is that of a row alone, whatever TOK and R (which only say what a thread shares: R = 4 reuses each x load
// for 4 rows when there are many tokens); WPR (8 for few weight rows, so that they still fill the GPU) follows
// from N.
template <int FMT, int TOK, int WPR, int R>
__global__ void __launch_bounds__(32 * kLinSimtWarps) linear_simt(const float* x, const void* w, const uint8_t* s,
                                                                 void* y, bool y_bf16, int64_t M, int N, int K) {
  constexpr int kGroups = kLinSimtWarps / WPR;  // row groups per block
  __shared__ float sums[kLinSimtWarps][R * TOK];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, i = threadIdx.x % (32 * WPR);
  const int n0 = (blockIdx.x * kGroups + warp / WPR) * R;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * TOK;
  const float* xr[TOK];
#pragma unroll
  for (int j = 0; j < TOK; ++j) xr[j] = x + (m0 + j < M ? m0 + j : m0) * K;  // missing tokens: never stored
  int rows[R];
#pragma unroll
  for (int r = 0; r < R; ++r) rows[r] = min(n0 + r, N - 1);  // missing rows repeat the last: never stored
  float acc[R][TOK];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < TOK; ++j) acc[r][j] = 0.f;
  if (n0 < N) {
#pragma unroll 2
    for (int k = i; k < K; k += 32 * WPR) {
      float xv[TOK];
#pragma unroll
      for (int j = 0; j < TOK; ++j) xv[j] = xr[j][k];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float wv = weight_at<FMT>(w, s, rows[r], k, K);
#pragma unroll
        for (int j = 0; j < TOK; ++j) acc[r][j] = fmaf(wv, xv[j], acc[r][j]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < TOK; ++j) {
      float v = acc[r][j];
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      acc[r][j] = v;
    }
  if constexpr (WPR > 1) {
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int j = 0; j < TOK; ++j) sums[warp][r * TOK + j] = acc[r][j];
    }
    __syncthreads();
    if (i != 0) return;
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int j = 0; j < TOK; ++j) {
        float v = sums[warp][r * TOK + j];
        for (int q = 1; q < WPR; ++q) v += sums[warp + q][r * TOK + j];
        acc[r][j] = v;
      }
  }
  if (lane != 0) return;
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < TOK; ++j) {
      if (m0 + j >= M || n0 + r >= N) continue;
      const size_t o = static_cast<size_t>(m0 + j) * N + n0 + r;
      if (y_bf16) {
        static_cast<__nv_bfloat16*>(y)[o] = __float2bfloat16_rn(acc[r][j]);
      } else {
        static_cast<float*>(y)[o] = acc[r][j];
      }
    }
}

template <int FMT, int TOK, int WPR, int R>
void simt_launch(const float* x, const LinearArgs& a, int64_t rows, void* y, cudaStream_t stream) {
  constexpr int kRows = kLinSimtWarps / WPR * R;
  const dim3 grid((a.N + kRows - 1) / kRows, static_cast<unsigned>((rows + TOK - 1) / TOK));
  linear_simt<FMT, TOK, WPR, R><<<grid, 32 * kLinSimtWarps, 0, stream>>>(x, a.w, a.scale, y, a.y_bf16, rows, a.N,
                                                                         a.K);
}

template <int FMT, int TOK>
void simt_wpr(const float* x, const LinearArgs& a, int64_t rows, void* y, cudaStream_t stream) {
  constexpr int R = TOK == 8 ? 4 : 1;  // past 8 tokens x is the traffic: each load serves 4 weight rows
  if (a.N < kLinSimtFewRows) {
    if (rows > kLinSimtManyTokens) return simt_launch<FMT, TOK, kLinSimtWarps, R>(x, a, rows, y, stream);
    return simt_launch<FMT, TOK, kLinSimtWarps, 1>(x, a, rows, y, stream);
  }
  if (rows > kLinSimtManyTokens) return simt_launch<FMT, TOK, 1, R>(x, a, rows, y, stream);
  simt_launch<FMT, TOK, 1, 1>(x, a, rows, y, stream);
}

template <int FMT>
void simt_rows(const float* x, const LinearArgs& a, int64_t rows, void* y, cudaStream_t stream) {
  if (rows >= 8) return simt_wpr<FMT, 8>(x, a, rows, y, stream);
  if (rows >= 4) return simt_wpr<FMT, 4>(x, a, rows, y, stream);
  if (rows >= 2) return simt_wpr<FMT, 2>(x, a, rows, y, stream);
  simt_wpr<FMT, 1>(x, a, rows, y, stream);
}

void simt(const float* x, const LinearArgs& a, int64_t rows, void* y, cudaStream_t stream) {
  switch (a.fmt) {
    case kMoeFormatFp8: return simt_rows<kMoeFormatFp8>(x, a, rows, y, stream);
    case kMoeFormatFp4: return simt_rows<kMoeFormatFp4>(x, a, rows, y, stream);
    case kMoeFormatBf16: return simt_rows<kMoeFormatBf16>(x, a, rows, y, stream);
    default: return simt_rows<kMoeFormatF32>(x, a, rows, y, stream);
  }
}

// What a call does, from the arguments alone (linear_workspace_bytes and linear agree on it).
struct Plan {
  bool tc;        // tensor cores, else SIMT
  int planes;     // tc: bfloat16 planes of x (1 or 3)
  bool prep;      // x is rewritten into the workspace first
  LinSplit split;
  bool serial;    // tc: the splits summed within each block (no partials)
  int64_t chunk;  // rows per pass
  size_t prep_bytes, part_bytes;
};

Plan plan_of(const LinearArgs& a) {
  Plan p{};
  const bool w_aligned = reinterpret_cast<uintptr_t>(a.w) % 16 == 0;
  p.tc = lin_tc_format(a.fmt) && a.K % lin_step_elems(a.fmt) == 0 && w_aligned &&
         a.N <= int64_t(kMaxGridY) * kLinBlockRows;
  p.split = {1, a.K};
  if (p.tc) {
    p.planes = a.x_bf16 || a.act_quant ? 1 : 3;  // e4m3-rounded values are exact in bfloat16
    const bool direct = a.x_bf16 && !a.act_quant && a.ldx == a.K && reinterpret_cast<uintptr_t>(a.x) % 16 == 0;
    p.prep = !direct;
    p.split = lin_split(a.fmt, a.N, a.K);
    p.prep_bytes = p.prep ? align256(size_t(p.planes) * a.M * a.K * 2) : 0;
  } else {
    p.prep = a.x_bf16 || a.act_quant || a.ldx != a.K;
    p.prep_bytes = p.prep ? align256(size_t(a.M) * a.K * 4) : 0;
  }
  p.chunk = a.M;
  p.serial = p.tc && lin_serial(a.fmt, a.M, a.N, p.planes);
  if (p.split.splits > 1 && !p.serial) {
    const size_t row = size_t(p.split.splits) * a.N * sizeof(float);
    p.chunk = std::max<int64_t>(1, std::min<int64_t>(a.M, static_cast<int64_t>(kPartBudget / row)));
    p.part_bytes = align256(row * p.chunk);
  }
  if (!p.tc) p.chunk = std::min<int64_t>(p.chunk, int64_t(kMaxGridY) * 8);  // SIMT: token groups in grid.y
  return p;
}

}  // namespace

size_t linear_workspace_bytes(const LinearArgs& a) {
  if (a.M == 0 || a.N == 0 || a.K == 0) return 0;
  const Plan p = plan_of(a);
  return p.prep_bytes + p.part_bytes;
}

cudaError_t linear(const LinearArgs& a, void* workspace, cudaStream_t stream) {
  if (a.M == 0 || a.N == 0) return cudaSuccess;
  const size_t y_elem = a.y_bf16 ? 2 : 4;
  if (a.K == 0) return cudaMemsetAsync(a.y, 0, size_t(a.M) * a.N * y_elem, stream);  // an empty sum
  const Plan p = plan_of(a);
  auto* ws = static_cast<uint8_t*>(workspace);
  const void* xin = a.x;
  const int64_t plane = a.M * a.K;
  if (p.prep) {
    const int64_t warps = a.M * ((a.K + kActBlock - 1) / kActBlock);
    const int blocks = static_cast<int>(std::min<int64_t>((warps + 7) / 8, 4096));
    linear_prep<<<blocks, 256, 0, stream>>>(a.x, a.ldx, a.x_bf16, a.M, a.K, a.act_quant, p.tc ? p.planes : 0, ws,
                                            plane);
    xin = ws;
  }
  float* part = reinterpret_cast<float*>(ws + p.prep_bytes);
  for (int64_t r0 = 0; r0 < a.M; r0 += p.chunk) {
    const int64_t rows = std::min(p.chunk, a.M - r0);
    void* y = static_cast<uint8_t*>(a.y) + size_t(r0) * a.N * y_elem;
    if (p.tc) {
      LinTc t{};
      t.w = static_cast<const uint8_t*>(a.w);
      t.s = a.scale;
      t.xq = static_cast<const __nv_bfloat16*>(xin) + r0 * (p.prep ? a.K : a.ldx);
      t.plane = plane;
      t.y = y;
      t.y_bf16 = a.y_bf16;
      t.part = part;
      t.M = rows;
      t.N = a.N;
      t.K = a.K;
      t.splits = p.split.splits;
      t.per = p.split.steps_per_split;
      t.serial = p.serial;
      linear_tc_launch(t, a.fmt, p.planes, stream);
      if (t.splits > 1 && !t.serial) {
        const int64_t count = rows * a.N;
        const int blocks = static_cast<int>(std::min<int64_t>((count + 255) / 256, 8192));
        linear_sum<<<blocks, 256, 0, stream>>>(part, t.splits, count, y, a.y_bf16);
      }
    } else {
      simt(static_cast<const float*>(xin) + r0 * a.K, a, rows, y, stream);
    }
  }
  return cudaGetLastError();
}

}  // namespace v4cli::cuda
