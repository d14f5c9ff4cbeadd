// Sparse attention on tensor cores (the twin: ops_ref.sparse_attention), bfloat16 q/kv/dense, H % 16 == 0,
// D % 64 == 0; the path choice, the split count and the launch of either kernel.
//
// A block takes one query row s, 16 * MT heads and one split of the row's candidate list (its idx entries, then
// the dense entries below limit[s]). Its warps form an MT x DS grid: warp (mt, ds) owns heads mt*16..+16 and the
// D slice ds*DSL..+DSL. Candidates stream through shared memory in tiles of 32 rows (cp.async, double-buffered;
// a skipped candidate is a zero row whose logit is masked): each kv row is loaded once per block and read by
// every head of it. Per tile, each warp computes its slice's part of the 16 x 32 logits (mma.sync m16n8k16, q's
// fragments held in registers all along), the DS parts are summed in shared memory in a fixed order (so every
// warp of a head tile sees the same logits), then an online softmax (running max started at the sink's logit,
// log2 units) and the 16 x DSL output slice += P V, P rounded to bfloat16 as the A operand straight from the
// logits' accumulators. Without splits the block normalizes and stores; with them it leaves (m, l, o) partials.

#include <cuda_bf16.h>

#include <cstdint>

#include "attention.cuh"
#include "launch.h"

namespace v4cli::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kMaxWarps = 8;

// (DSL, MT) for an MMA-able shape, or DSL = 0.
struct MmaShape {
  int dsl, mt, ds;
};
MmaShape mma_shape(const AttnArgs& a) {
  MmaShape m{0, 0, 0};
  if (!a.bf16 || a.H % 16 != 0 || a.D % 64 != 0 || a.D > kAttnMaxD) return m;
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (!aligned(a.q) || !aligned(a.kv) || (a.N > 0 && !aligned(a.dense))) return m;
  m.dsl = (a.D > 256 && a.D % 128 == 0) ? 128 : 64;
  m.ds = static_cast<int>(a.D / m.dsl);
  if (m.ds > kMaxWarps) return MmaShape{0, 0, 0};
  m.mt = (a.H % 32 == 0 && 2 * m.ds <= kMaxWarps) ? 2 : 1;
  return m;
}

size_t mma_smem_bytes(const MmaShape& m, int64_t D) {
  const size_t rowb = static_cast<size_t>(D) * 2 + 16;  // +16 bytes: ldmatrix rows land in distinct banks
  return 2 * kAttnTile * rowb + (m.ds > 1 ? static_cast<size_t>(m.mt) * m.ds * 32 * 16 * sizeof(float) : 0) +
         2 * kAttnTile * sizeof(int);
}

template <int DSL, int MT>
__global__ void __launch_bounds__(32 * kMaxWarps) attn_mma_kernel(AttnArgs a, int splits, float* ws) {
  constexpr int NC = kAttnTile, NT = NC / 8, KQ = DSL / 16, ND = DSL / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  const int D = static_cast<int>(a.D), DS = D / DSL, rowb = D * 2 + 16, chunks = D / 8;
  unsigned char* sbuf = smem;
  float* sS = reinterpret_cast<float*>(smem + 2 * NC * rowb);
  int* sValid = reinterpret_cast<int*>(sS + (DS > 1 ? MT * DS * 32 * 16 : 0));
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nthreads = blockDim.x;
  const int mt = warp / DS, ds = warp % DS, g = lane >> 2, tq = lane & 3;
  const int64_t s = blockIdx.x;
  const int h0 = blockIdx.y * 16 * MT, z = blockIdx.z;
  const uint16_t* q = static_cast<const uint16_t*>(a.q);
  const uint16_t* kv = static_cast<const uint16_t*>(a.kv);
  const uint16_t* dense = static_cast<const uint16_t*>(a.dense);

  // q's rows of this block through the first buffer into registers (A fragments of every k-step of the slice)
  for (int i = tid; i < MT * 16 * chunks; i += nthreads) {
    const int r = i / chunks, c = i % chunks;
    attn_cp16(sbuf + r * rowb + c * 16, q + ((s * a.H + h0 + r) * D + c * 8), true);
  }
  attn_cp_commit();
  attn_cp_wait<0>();
  __syncthreads();
  uint32_t qf[KQ][4];
#pragma unroll
  for (int kk = 0; kk < KQ; ++kk)
    attn_ldm_x4(qf[kk], sbuf + (mt * 16 + attn_ldm_a_row(lane)) * rowb + (ds * DSL + kk * 16 + attn_ldm_a_col(lane)) * 2);
  __syncthreads();

  const AttnRow row = attn_row(a, s);
  int64_t t0, t1;
  attn_split_range(row.K + row.n_vis, NC, z, splits, &t0, &t1);
  // A tile's NC * D / 8 pieces of 16 bytes are PER per thread exactly (nthreads = 32 * MT * D / DSL): their
  // candidates' idx entries are all read before the first copy is issued, so the reads overlap.
  constexpr int PER = DSL / (8 * MT);
  const auto load_tile = [&](int64_t t, int buf) {
    unsigned char* dst = sbuf + buf * NC * rowb;
    const uint16_t* src[PER];
#pragma unroll
    for (int k = 0; k < PER; ++k) {
      const int i = tid + k * nthreads, r = i / chunks, c = i % chunks;
      bool dn;
      const int64_t off = attn_cand(a, row, t * NC + r, &dn);
      src[k] = off < 0 ? nullptr : (dn ? dense : kv) + off + c * 8;
    }
#pragma unroll
    for (int k = 0; k < PER; ++k) {
      const int i = tid + k * nthreads, r = i / chunks, c = i % chunks;
      attn_cp16(dst + r * rowb + c * 16, src[k] ? src[k] : q, src[k] != nullptr);  // q: mapped, not read
      if (c == 0) sValid[buf * NC + r] = src[k] != nullptr;
    }
  };

  const float sl2 = a.scale * kLog2e;
  const int head0 = h0 + mt * 16 + g, head1 = head0 + 8;
  const float sink0 = a.sink[head0] * kLog2e, sink1 = a.sink[head1] * kLog2e;
  float m0 = sink0, m1 = sink1, l0 = 0.f, l1 = 0.f;
  float o[ND][4];
#pragma unroll
  for (int n = 0; n < ND; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  if (t0 < t1) load_tile(t0, 0);
  attn_cp_commit();
  for (int64_t t = t0; t < t1; ++t) {
    const int buf = static_cast<int>((t - t0) & 1);
    if (t + 1 < t1) load_tile(t + 1, buf ^ 1);
    attn_cp_commit();
    attn_cp_wait<1>();
    __syncthreads();
    const unsigned char* tile = sbuf + buf * NC * rowb;

    float sc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KQ; ++kk) {
#pragma unroll
      for (int jp = 0; jp < NT / 2; ++jp) {
        uint32_t b[4];
        attn_ldm_x4(b, tile + (jp * 16 + attn_ldm_b_row(lane)) * rowb + (ds * DSL + kk * 16 + attn_ldm_b_col(lane)) * 2);
        attn_mma(sc[2 * jp], qf[kk], b[0], b[1]);
        attn_mma(sc[2 * jp + 1], qf[kk], b[2], b[3]);
      }
    }
    if (DS > 1) {  // the slices' parts, summed in slice order by every warp of the head tile
      float4* mine = reinterpret_cast<float4*>(sS + ((mt * DS + ds) * 32 + lane) * 16);
#pragma unroll
      for (int j = 0; j < NT; ++j) mine[j] = make_float4(sc[j][0], sc[j][1], sc[j][2], sc[j][3]);
      __syncthreads();
#pragma unroll
      for (int j = 0; j < NT; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
      for (int d2 = 0; d2 < DS; ++d2) {
        const float4* part = reinterpret_cast<const float4*>(sS + ((mt * DS + d2) * 32 + lane) * 16);
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const float4 v = part[j];
          sc[j][0] += v.x;
          sc[j][1] += v.y;
          sc[j][2] += v.z;
          sc[j][3] += v.w;
        }
      }
    }

    // online softmax over the tile, rows g (head0) and g + 8 (head1); lanes of a row: the 4 of one g
    float mx0 = m0, mx1 = m1;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const bool ok = sValid[buf * NC + j * 8 + 2 * tq + e] != 0;
        sc[j][e] = ok ? sc[j][e] * sl2 : -INFINITY;
        sc[j][2 + e] = ok ? sc[j][2 + e] * sl2 : -INFINITY;
        mx0 = fmaxf(mx0, sc[j][e]);
        mx1 = fmaxf(mx1, sc[j][2 + e]);
      }
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float al0 = exp2f(m0 - mx0), al1 = exp2f(m1 - mx1);
    m0 = mx0;
    m1 = mx1;
    float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        sc[j][e] = exp2f(sc[j][e] - mx0);
        sc[j][2 + e] = exp2f(sc[j][2 + e] - mx1);
        ps0 += sc[j][e];
        ps1 += sc[j][2 + e];
      }
    }
    l0 = l0 * al0 + ps0;  // per lane: the row's sum is taken over its 4 lanes at the end
    l1 = l1 * al1 + ps1;
#pragma unroll
    for (int n = 0; n < ND; ++n) {
      o[n][0] *= al0;
      o[n][1] *= al0;
      o[n][2] *= al1;
      o[n][3] *= al1;
    }
#pragma unroll
    for (int kk = 0; kk < NC / 16; ++kk) {
      const uint32_t pa[4] = {attn_pack_bf16(sc[2 * kk][0], sc[2 * kk][1]), attn_pack_bf16(sc[2 * kk][2], sc[2 * kk][3]),
                              attn_pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                              attn_pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
      for (int np = 0; np < ND / 2; ++np) {
        uint32_t b[4];
        attn_ldm_x4_trans(b, tile + (kk * 16 + attn_ldm_v_row(lane)) * rowb + (ds * DSL + np * 16 + attn_ldm_v_col(lane)) * 2);
        attn_mma(o[2 * np], pa, b[0], b[1]);
        attn_mma(o[2 * np + 1], pa, b[2], b[3]);
      }
    }
    __syncthreads();  // the buffer and the logits' scratch are rewritten next step
  }

  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const int dcol = ds * DSL + 2 * tq;
  if (splits == 1) {
    const float inv0 = 1.f / (l0 + exp2f(sink0 - m0)), inv1 = 1.f / (l1 + exp2f(sink1 - m1));
    uint32_t* out0 = reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(a.out) + (s * a.H + head0) * D + dcol);
    uint32_t* out1 = reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(a.out) + (s * a.H + head1) * D + dcol);
#pragma unroll
    for (int n = 0; n < ND; ++n) {
      out0[n * 4] = attn_pack_bf16(o[n][0] * inv0, o[n][1] * inv0);
      out1[n * 4] = attn_pack_bf16(o[n][2] * inv1, o[n][3] * inv1);
    }
    return;
  }
  const AttnPartial p0 = attn_partial(ws, a.S, a.H, a.D, z, s, head0, splits);
  const AttnPartial p1 = attn_partial(ws, a.S, a.H, a.D, z, s, head1, splits);
#pragma unroll
  for (int n = 0; n < ND; ++n) {
    *reinterpret_cast<float2*>(p0.o + dcol + n * 8) = make_float2(o[n][0], o[n][1]);
    *reinterpret_cast<float2*>(p1.o + dcol + n * 8) = make_float2(o[n][2], o[n][3]);
  }
  if (ds == 0 && tq == 0) {
    *p0.m = m0 / kLog2e;
    *p0.l = l0;
    *p1.m = m1 / kLog2e;
    *p1.l = l1;
  }
}

template <int DSL, int MT>
cudaError_t launch_mma(const AttnArgs& a, const MmaShape& m, int splits, float* ws, cudaStream_t stream) {
  const size_t smem = mma_smem_bytes(m, a.D);
  const cudaError_t err =
      attn_smem_opt_in<attn_mma_kernel<DSL, MT>>(smem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(a.S), static_cast<unsigned>(a.H / (16 * MT)), static_cast<unsigned>(splits));
  attn_mma_kernel<DSL, MT><<<grid, 32 * MT * m.ds, smem, stream>>>(a, splits, ws);
  return cudaGetLastError();
}

int device_sms() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return 132;
  return sms > 0 ? sms : 132;
}

}  // namespace

int sparse_attention_splits(const AttnArgs& a) {
  if (a.S == 0 || a.H == 0 || a.D == 0) return 1;
  const MmaShape m = mma_shape(a);
  const int64_t heads = m.dsl ? 16 * m.mt : (a.H < 8 ? a.H : 8);  // heads per block on either path
  const int64_t blocks = a.S * ((a.H + heads - 1) / heads);
  static const int sms = device_sms();
  const int64_t target = 2 * static_cast<int64_t>(sms);
  if (blocks >= target) return 1;
  const int64_t tiles = (a.K + a.N + kAttnTile - 1) / kAttnTile;
  int64_t splits = (target + blocks - 1) / blocks;
  splits = splits < tiles ? splits : tiles;
  splits = splits < 64 ? splits : 64;
  return splits > 1 ? static_cast<int>(splits) : 1;
}

size_t sparse_attention_workspace_bytes(const AttnArgs& a, int splits) {
  if (splits <= 1) return 0;
  return static_cast<size_t>(splits) * a.S * a.H * (a.D + 2) * sizeof(float);
}

cudaError_t sparse_attention(const AttnArgs& a, int splits, float* workspace, cudaStream_t stream) {
  if (a.S == 0 || a.H == 0 || a.D == 0) return cudaSuccess;
  const MmaShape m = mma_shape(a);
  cudaError_t err;
  if (m.dsl == 128) {
    err = m.mt == 2 ? launch_mma<128, 2>(a, m, splits, workspace, stream)
                    : launch_mma<128, 1>(a, m, splits, workspace, stream);
  } else if (m.dsl == 64) {
    err = m.mt == 2 ? launch_mma<64, 2>(a, m, splits, workspace, stream)
                    : launch_mma<64, 1>(a, m, splits, workspace, stream);
  } else {
    err = attn_simt(a, splits, workspace, stream);
  }
  if (err != cudaSuccess || splits <= 1) return err;
  return attn_combine(a, workspace, splits, stream);
}

}  // namespace v4cli::cuda
