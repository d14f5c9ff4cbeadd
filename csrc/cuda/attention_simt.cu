// Sparse attention without tensor cores: float32 (or bfloat16 of a shape the MMA kernel does not take), any D up
// to kAttnMaxD; and the combination of split partials for both kernels.
//
// A block takes one query row, up to 8 heads (a warp each) and one split of the row's candidates. Tiles of 32
// candidates are widened to float32 in shared memory (rows padded to an odd stride, so a warp reading one element
// of 32 rows hits 32 banks) and read by every warp: lane j takes candidate j's logit (a dot product along D in
// order), the warp's online softmax (natural units, running max started at the sink's logit), then each lane
// updates its own elements d = lane + 32i of the head's float32 accumulator (kept in shared memory, so D is free).

#include <cuda_bf16.h>

#include <cstdint>

#include "attention.cuh"
#include "launch.h"

namespace v4cli::cuda {
namespace {

constexpr int kSimtHeads = 8;

__device__ inline float ld(const float* p, int64_t i) { return p[i]; }
__device__ inline float ld(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ inline void st(float* p, int64_t i, float v) { p[i] = v; }
__device__ inline void st(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

__device__ inline float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}
__device__ inline float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

inline int simt_stride(int64_t D) { return static_cast<int>(D % 2 == 0 ? D + 1 : D); }

inline size_t simt_smem_bytes(int64_t D, int hb) {
  return (static_cast<size_t>(kAttnTile) * simt_stride(D) + 2 * static_cast<size_t>(hb) * D +
          static_cast<size_t>(hb) * kAttnTile + kAttnTile) * sizeof(float);
}

template <typename T>
__global__ void __launch_bounds__(32 * kSimtHeads) attn_simt_kernel(AttnArgs a, int splits, float* ws, int hb) {
  constexpr int NC = kAttnTile;
  extern __shared__ float fsm[];
  const int D = static_cast<int>(a.D), stride = D % 2 == 0 ? D + 1 : D;
  float* tile = fsm;
  float* sq = tile + NC * stride;
  float* sacc = sq + hb * D;
  float* sp = sacc + hb * D;
  int* valid = reinterpret_cast<int*>(sp + hb * NC);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x / 32;
  const int64_t s = blockIdx.x;
  const int64_t h0 = static_cast<int64_t>(blockIdx.y) * hb, h = h0 + warp;
  const int z = blockIdx.z;
  const bool active = h < a.H;
  const T* q = static_cast<const T*>(a.q);
  const T* kv = static_cast<const T*>(a.kv);
  const T* dense = static_cast<const T*>(a.dense);

  for (int i = tid; i < hb * D; i += blockDim.x) {
    const int64_t hh = h0 + i / D;
    sq[i] = hh < a.H ? ld(q, (s * a.H + hh) * D + i % D) : 0.f;
    sacc[i] = 0.f;
  }
  const AttnRow row = attn_row(a, s);
  int64_t t0, t1;
  attn_split_range(row.K + row.n_vis, NC, z, splits, &t0, &t1);
  const float sink = active ? a.sink[h] : 0.f;
  float m = sink, l = 0.f;
  float* myq = sq + warp * D;
  float* myacc = sacc + warp * D;
  float* myp = sp + warp * NC;

  for (int64_t t = t0; t < t1; ++t) {
    __syncthreads();  // the previous tile is consumed (and q is in place, the first time)
    for (int r = warp; r < NC; r += nwarps) {
      bool dn;
      const int64_t off = attn_cand(a, row, t * NC + r, &dn);
      const T* src = dn ? dense : kv;
      for (int c = lane; c < D; c += 32) tile[r * stride + c] = off < 0 ? 0.f : ld(src, off + c);
      if (lane == 0) valid[r] = off >= 0;
    }
    __syncthreads();
    if (!active) continue;
    float x = -INFINITY;
    if (valid[lane]) {
      const float* kr = tile + lane * stride;
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot = fmaf(myq[d], kr[d], dot);
      x = dot * a.scale;
    }
    const float mx = fmaxf(m, warp_max(x));
    const float alpha = expf(m - mx);
    const float p = expf(x - mx);
    l = l * alpha + warp_sum(p);
    m = mx;
    myp[lane] = p;
    __syncwarp();
    for (int d = lane; d < D; d += 32) {
      float acc = myacc[d] * alpha;
      for (int j = 0; j < NC; ++j) acc = fmaf(myp[j], tile[j * stride + d], acc);
      myacc[d] = acc;
    }
    __syncwarp();
  }
  __syncthreads();  // with no tile at all, the accumulators' zeros are in place
  if (!active) return;
  if (splits == 1) {
    const float inv = 1.f / (l + expf(sink - m));
    T* out = static_cast<T*>(a.out) + (s * a.H + h) * D;
    for (int d = lane; d < D; d += 32) st(out, d, myacc[d] * inv);
    return;
  }
  const AttnPartial p = attn_partial(ws, a.S, a.H, a.D, z, s, h, splits);
  for (int d = lane; d < D; d += 32) p.o[d] = myacc[d];
  if (lane == 0) {
    *p.m = m;
    *p.l = l;
  }
}

// out[s, h] = sum_z e^(m_z - M) o_z / (sum_z e^(m_z - M) l_z + e^(sink_h - M)), M = max_z m_z (>= sink_h).
template <typename T>
__global__ void attn_combine_kernel(AttnArgs a, const float* ws, int splits) {
  const int64_t r = blockIdx.x, s = r / a.H, h = r % a.H;
  const AttnMerge mg = attn_merge(ws, a.S, a.H, a.D, s, h, splits, a.sink[h]);
  const float M = mg.M, inv = mg.inv;
  T* out = static_cast<T*>(a.out) + r * a.D;
  for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x) {
    float acc = 0.f;
    for (int z = 0; z < splits; ++z) {
      const AttnPartial p = attn_partial(const_cast<float*>(ws), a.S, a.H, a.D, z, s, h, splits);
      acc = fmaf(expf(*p.m - M), p.o[d], acc);
    }
    st(out, d, acc * inv);
  }
}

template <typename T>
cudaError_t launch_simt(const AttnArgs& a, int splits, float* ws, cudaStream_t stream) {
  const int hb = static_cast<int>(a.H < kSimtHeads ? a.H : kSimtHeads);
  const size_t smem = simt_smem_bytes(a.D, hb);
  const cudaError_t err =
      attn_smem_opt_in<attn_simt_kernel<T>>(smem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(a.S), static_cast<unsigned>((a.H + hb - 1) / hb), static_cast<unsigned>(splits));
  attn_simt_kernel<T><<<grid, 32 * hb, smem, stream>>>(a, splits, ws, hb);
  return cudaGetLastError();
}

}  // namespace

cudaError_t attn_simt(const AttnArgs& a, int splits, float* ws, cudaStream_t stream) {
  if (a.D > kAttnMaxD) return cudaErrorInvalidValue;
  return a.bf16 ? launch_simt<__nv_bfloat16>(a, splits, ws, stream) : launch_simt<float>(a, splits, ws, stream);
}

cudaError_t attn_combine(const AttnArgs& a, const float* ws, int splits, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(a.S * a.H);
  if (a.bf16) {
    attn_combine_kernel<__nv_bfloat16><<<blocks, 128, 0, stream>>>(a, ws, splits);
  } else {
    attn_combine_kernel<float><<<blocks, 128, 0, stream>>>(a, ws, splits);
  }
  return cudaGetLastError();
}

}  // namespace v4cli::cuda
