// The lightning indexer's scores on the GPU (the twin: ops_ref.indexer_scores): out[s, t] = sum_h w[s,h] *
// relu(q[s,h] . k[t]), a GEMM [S*H, D] x [D, T] fused with the weighted sum over heads, so the [S, H, T] products
// never reach memory.
//
// Tensor cores (bfloat16, H % 16 == 0, D = 64 or 128): a block owns 256 keys (32 per warp), held all along as the
// B fragments of mma.sync m16n8k16 in registers (D = 128: 64 registers), and walks its block of query rows; each
// row's q, 16 * MT heads at a time, is staged in shared memory (cp.async, double-buffered) and read by all eight
// warps as A fragments. A warp's 16*MT x 32 products are rounded to bfloat16 (the twin's bfloat16 GEMM output),
// relu'd, weighted by the bfloat16-rounded w and summed over heads in float32, then over the rows of the fragment
// by shuffles; the row's sum is rounded to bfloat16, as the twin's bfloat16 bmm leaves it.
//
// SIMT (float32, or shapes the MMA kernel does not take): a block per (32 keys, query row), q's row and the keys
// widened to float32 in shared memory, 4 warps over the heads, their sums added in a fixed order.

#include <cuda_bf16.h>

#include <cstdint>

#include "attention.cuh"
#include "launch.h"

namespace v4cli::cuda {
namespace {

constexpr int kWarps = 8, kKeys = 32 * kWarps;  // the MMA kernel's block: 8 warps of 32 keys
constexpr int kSimtKeys = 32, kSimtGroups = 4;

__device__ inline float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
__device__ inline float relu(float x) { return x < 0.f ? 0.f : x; }  // NaN stays NaN, as torch's relu

template <int MT, int KS>
__global__ void __launch_bounds__(32 * kWarps) index_mma_kernel(const uint16_t* q, const float* w, const uint16_t* keys,
                                                              float* out, int64_t S, int H, int64_t T, int qb) {
  constexpr int D = KS * 16, rowb = D * 2 + 16, chunks = D / 8, HT = 16 * MT;
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tq = lane & 3;
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kKeys;
  const int64_t s0 = static_cast<int64_t>(blockIdx.y) * qb, s1 = s0 + qb < S ? s0 + qb : S;
  const int G = H / HT;
  const int64_t stages = (s1 - s0) * G;

  // the keys, through shared memory, into registers (rows past T are zeros)
  for (int i = tid; i < kKeys * chunks; i += 32 * kWarps) {
    const int r = i / chunks, c = i % chunks;
    const bool ok = k0 + r < T;
    attn_cp16(smem + r * rowb + c * 16, ok ? keys + (k0 + r) * D + c * 8 : keys, ok);
  }
  attn_cp_commit();
  attn_cp_wait<0>();
  __syncthreads();
  uint32_t kb[4][KS][2];
#pragma unroll
  for (int jp = 0; jp < 2; ++jp) {
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      uint32_t b[4];
      attn_ldm_x4(b, smem + (warp * 32 + jp * 16 + attn_ldm_b_row(lane)) * rowb + (kk * 16 + attn_ldm_b_col(lane)) * 2);
      kb[2 * jp][kk][0] = b[0];
      kb[2 * jp][kk][1] = b[1];
      kb[2 * jp + 1][kk][0] = b[2];
      kb[2 * jp + 1][kk][1] = b[3];
    }
  }
  __syncthreads();

  const auto load_stage = [&](int64_t i, int buf) {
    const int64_t s = s0 + i / G, h = (i % G) * HT;
    unsigned char* dst = smem + buf * HT * rowb;
    for (int j = tid; j < HT * chunks; j += 32 * kWarps) {
      const int r = j / chunks, c = j % chunks;
      attn_cp16(dst + r * rowb + c * 16, q + (s * H + h + r) * D + c * 8, true);
    }
  };
  float part[4][2];
#pragma unroll
  for (int j = 0; j < 4; ++j) part[j][0] = part[j][1] = 0.f;
  if (stages > 0) load_stage(0, 0);
  attn_cp_commit();
  for (int64_t i = 0; i < stages; ++i) {
    const int buf = static_cast<int>(i & 1);
    if (i + 1 < stages) load_stage(i + 1, buf ^ 1);
    attn_cp_commit();
    attn_cp_wait<1>();
    __syncthreads();
    const unsigned char* sq = smem + buf * HT * rowb;
    float acc[MT][4][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] = acc[mt][j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        uint32_t a[4];
        attn_ldm_x4(a, sq + (mt * 16 + attn_ldm_a_row(lane)) * rowb + (kk * 16 + attn_ldm_a_col(lane)) * 2);
#pragma unroll
        for (int j = 0; j < 4; ++j) attn_mma(acc[mt][j], a, kb[j][kk][0], kb[j][kk][1]);
      }
    }
    const int64_t s = s0 + i / G;
    const int hg = static_cast<int>(i % G);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const float* ws = w + s * H + hg * HT + mt * 16 + g;
      const float w0 = round_bf16(ws[0]), w1 = round_bf16(ws[8]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          part[j][e] = fmaf(w0, relu(round_bf16(acc[mt][j][e])), part[j][e]);
          part[j][e] = fmaf(w1, relu(round_bf16(acc[mt][j][2 + e])), part[j][e]);
        }
      }
    }
    if (hg == G - 1) {  // row s done: the sum over the fragment's rows (lanes of one tq), stored by lanes 0..3
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float v = part[j][e];
          v += __shfl_xor_sync(0xffffffffu, v, 4);
          v += __shfl_xor_sync(0xffffffffu, v, 8);
          v += __shfl_xor_sync(0xffffffffu, v, 16);
          const int64_t key = k0 + warp * 32 + j * 8 + 2 * tq + e;
          if (g == 0 && key < T) out[s * T + key] = round_bf16(v);
          part[j][e] = 0.f;
        }
      }
    }
    __syncthreads();  // the stage's buffer is refilled next step
  }
}

template <typename T>
__device__ inline float ldf(const T* p, int64_t i);
template <>
__device__ inline float ldf<float>(const float* p, int64_t i) { return p[i]; }
template <>
__device__ inline float ldf<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }

template <typename T>
__global__ void __launch_bounds__(32 * kSimtGroups) index_simt_kernel(const T* q, const float* w, const T* keys,
                                                                    float* out, int H, int D, int64_t T_) {
  constexpr bool kBf16 = sizeof(T) == 2;
  extern __shared__ float fsm[];
  const int stride = D % 2 == 0 ? D + 1 : D;
  float* sq = fsm;
  float* sk = sq + H * D;
  float* red = sk + kSimtKeys * stride;
  const int tid = threadIdx.x, kl = tid % kSimtKeys, grp = tid / kSimtKeys;
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kSimtKeys, s = blockIdx.y;
  for (int i = tid; i < H * D; i += blockDim.x) sq[i] = ldf(q, s * H * D + i);
  for (int i = tid; i < kSimtKeys * D; i += blockDim.x) {
    const int r = i / D, c = i % D;
    sk[r * stride + c] = k0 + r < T_ ? ldf(keys, (k0 + r) * D + c) : 0.f;
  }
  __syncthreads();
  float part = 0.f;
  const float* kr = sk + kl * stride;
  for (int h = grp; h < H; h += kSimtGroups) {
    const float* qh = sq + h * D;
    float dot = 0.f;
    for (int d = 0; d < D; ++d) dot = fmaf(qh[d], kr[d], dot);
    float wh = w[s * H + h];
    if (kBf16) {
      dot = round_bf16(dot);
      wh = round_bf16(wh);
    }
    part = fmaf(wh, relu(dot), part);
  }
  red[grp * kSimtKeys + kl] = part;
  __syncthreads();
  if (grp != 0 || k0 + kl >= T_) return;
  float v = 0.f;
  for (int i = 0; i < kSimtGroups; ++i) v += red[i * kSimtKeys + kl];
  out[s * T_ + k0 + kl] = kBf16 ? round_bf16(v) : v;
}

template <int MT, int KS>
cudaError_t launch_mma(const uint16_t* q, const float* w, const uint16_t* keys, float* out, int64_t S, int64_t H,
                       int64_t T, cudaStream_t stream) {
  constexpr int rowb = KS * 16 * 2 + 16;
  const size_t smem = static_cast<size_t>(kKeys) * rowb;  // the keys' tile; later the two q stages (fewer rows)
  cudaError_t err = attn_smem_opt_in<index_mma_kernel<MT, KS>>(smem);
  if (err != cudaSuccess) return err;
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  // query rows per block: enough blocks to fill the GPU a few times over, each block's keys read once
  const int64_t key_blocks = (T + kKeys - 1) / kKeys, want = 4 * static_cast<int64_t>(sms > 0 ? sms : 132);
  int64_t qb = S * key_blocks / want;
  qb = qb < 1 ? 1 : (qb > S ? S : qb);
  const int64_t q_blocks = (S + qb - 1) / qb;
  if (q_blocks > 65535) qb = (S + 65534) / 65535;
  const dim3 grid(static_cast<unsigned>(key_blocks), static_cast<unsigned>((S + qb - 1) / qb));
  index_mma_kernel<MT, KS><<<grid, 32 * kWarps, smem, stream>>>(q, w, keys, out, S, static_cast<int>(H), T,
                                                                static_cast<int>(qb));
  return cudaGetLastError();
}

template <int KS>
cudaError_t launch_mma_heads(const void* q, const float* w, const void* keys, float* out, int64_t S, int64_t H,
                             int64_t T, cudaStream_t stream) {
  const auto* qp = static_cast<const uint16_t*>(q);
  const auto* kp = static_cast<const uint16_t*>(keys);
  if (H % 64 == 0) return launch_mma<4, KS>(qp, w, kp, out, S, H, T, stream);
  if (H % 32 == 0) return launch_mma<2, KS>(qp, w, kp, out, S, H, T, stream);
  return launch_mma<1, KS>(qp, w, kp, out, S, H, T, stream);
}

template <typename T>
cudaError_t launch_simt(const void* q, const float* w, const void* keys, float* out, int64_t S, int64_t H, int64_t D,
                        int64_t T_, cudaStream_t stream) {
  const int64_t stride = D % 2 == 0 ? D + 1 : D;
  const size_t smem = (H * D + kSimtKeys * stride + kSimtGroups * kSimtKeys) * sizeof(float);
  const cudaError_t err = attn_smem_opt_in<index_simt_kernel<T>>(smem);
  if (err != cudaSuccess) return err;
  for (int64_t s0 = 0; s0 < S; s0 += 65535) {  // grid.y's limit
    const int64_t n = S - s0 < 65535 ? S - s0 : 65535;
    const dim3 grid(static_cast<unsigned>((T_ + kSimtKeys - 1) / kSimtKeys), static_cast<unsigned>(n));
    index_simt_kernel<T><<<grid, 32 * kSimtGroups, smem, stream>>>(
        static_cast<const T*>(q) + s0 * H * D, w + s0 * H, static_cast<const T*>(keys), out + s0 * T_,
        static_cast<int>(H), static_cast<int>(D), T_);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t indexer_scores(const void* q, const float* w, const void* keys, float* out, int64_t S, int64_t H,
                           int64_t D, int64_t T, bool bf16, cudaStream_t stream) {
  if (S == 0 || T == 0) return cudaSuccess;
  if (H == 0 || D == 0) return cudaMemsetAsync(out, 0, static_cast<size_t>(S * T) * sizeof(float), stream);
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (bf16 && H % 16 == 0 && aligned(q) && aligned(keys)) {
    if (D == 128) return launch_mma_heads<8>(q, w, keys, out, S, H, T, stream);
    if (D == 64) return launch_mma_heads<4>(q, w, keys, out, S, H, T, stream);
  }
  if (D > kIndexMaxD || H * D > kIndexMaxHD) return cudaErrorInvalidValue;
  return bf16 ? launch_simt<__nv_bfloat16>(q, w, keys, out, S, H, D, T, stream)
              : launch_simt<float>(q, w, keys, out, S, H, D, T, stream);
}

}  // namespace v4cli::cuda
