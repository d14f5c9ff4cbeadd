// What the attention kernels share (attention.cu, attention_simt.cu, indexer.cu): a query row's candidate list,
// the split-softmax partials and their combination, and thin wrappers of the PTX they use (cp.async, ldmatrix,
// mma.sync m16n8k16 bf16 -> f32). The fragment index math is __host__ __device__ so that tests/cuda/attn_host.cu
// checks it, through an emulated MMA, without a GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <cmath>
#include <cstdint>

#include "launch.h"

namespace v4cli::cuda {

// A query row's candidates in order: its idx entries (rows of kv; negative or past kv's rows: skipped), then the
// dense entries j < clamp(limit[s], 0, N). Position c of the list maps to a row pointer or null (skipped).
struct AttnRow {
  const int64_t* idx;  // this row's K entries
  int64_t K, n_vis;
  int64_t T;
};

__device__ inline AttnRow attn_row(const AttnArgs& a, int64_t s) {
  int64_t n_vis = 0;
  if (a.N > 0) {
    const int64_t lim = a.limit[s];
    n_vis = lim < 0 ? 0 : (lim > a.N ? a.N : lim);
  }
  return AttnRow{a.idx + s * a.K, a.K, n_vis, a.T};
}

// Element offset of candidate c's row, in kv (*dense = false) or dense (*dense = true), or -1 when skipped.
__device__ inline int64_t attn_cand(const AttnArgs& a, const AttnRow& r, int64_t c, bool* dense) {
  *dense = false;
  if (c < r.K) {
    const int64_t i = r.idx[c];
    return (i >= 0 && i < r.T) ? i * a.D : -1;
  }
  c -= r.K;
  if (c < r.n_vis) {
    *dense = true;
    return c * a.D;
  }
  return -1;
}

// The tiles [t0, t1) of `ncand` candidates in tiles of `nc` that split z of `splits` takes (an even share).
__host__ __device__ inline void attn_split_range(int64_t ncand, int nc, int z, int splits, int64_t* t0, int64_t* t1) {
  const int64_t tiles = (ncand + nc - 1) / nc;
  const int64_t per = (tiles + splits - 1) / splits;
  *t0 = z * per < tiles ? z * per : tiles;
  *t1 = *t0 + per < tiles ? *t0 + per : tiles;
}

// The partials of split z for (s, h): running max m (natural log units, started at the sink's logit so it is
// always finite), the sum l of e^(logit - m) over the split's candidates (the sink not counted), and the
// unnormalized output o[D]. Layout: m and l [splits, S, H], then o [splits, S, H, D].
struct AttnPartial {
  float* m;
  float* l;
  float* o;
};
__host__ __device__ inline AttnPartial attn_partial(float* ws, int64_t S, int64_t H, int64_t D, int z, int64_t s,
                                                    int64_t h, int splits) {
  const int64_t rows = static_cast<int64_t>(splits) * S * H, r = (static_cast<int64_t>(z) * S + s) * H + h;
  return AttnPartial{ws + r, ws + rows + r, ws + 2 * rows + r * D};
}

// The combination's factors for (s, h): M = max_z m_z (>= the sink: every split starts there) and 1 / L for
// L = sum_z e^(m_z - M) l_z + e^(sink - M); split z's output is then weighted by e^(m_z - M) / L.
struct AttnMerge {
  float M, inv;
};
__host__ __device__ inline AttnMerge attn_merge(const float* ws, int64_t S, int64_t H, int64_t D, int64_t s,
                                                int64_t h, int splits, float sink) {
  float M = sink;
  for (int z = 0; z < splits; ++z) M = fmaxf(M, *attn_partial(const_cast<float*>(ws), S, H, D, z, s, h, splits).m);
  float L = expf(sink - M);
  for (int z = 0; z < splits; ++z) {
    const AttnPartial p = attn_partial(const_cast<float*>(ws), S, H, D, z, s, h, splits);
    L += *p.l * expf(*p.m - M);
  }
  return AttnMerge{M, 1.f / L};
}

constexpr int kAttnTile = 32;  // candidates per online-softmax step (both kernels: the splits' tile counts agree)

// The SIMT kernel (any dtype, D <= kAttnMaxD) and the combination of every split's partials for all (s, h), the
// sink counted there once (attention_simt.cu).
cudaError_t attn_simt(const AttnArgs& a, int splits, float* ws, cudaStream_t stream);
cudaError_t attn_combine(const AttnArgs& a, const float* ws, int splits, cudaStream_t stream);

// Opts Kernel in to `bytes` of dynamic shared memory on the current device, once per size it grows to (the
// attribute call is not free, and a decode step launches these kernels for every layer).
template <auto Kernel>
cudaError_t attn_smem_opt_in(size_t bytes) {
  constexpr int kDevices = 64;
  static std::atomic<size_t> done[kDevices];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kDevices)
    return cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (done[dev].load(std::memory_order_relaxed) >= bytes) return cudaSuccess;
  const cudaError_t err =
      cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess) done[dev].store(bytes, std::memory_order_relaxed);
  return err;
}

// ---- PTX ----------------------------------------------------------------------------------------------------------

__device__ inline uint32_t attn_smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously; `valid` false fills zeros (src is not read, but must be mapped).
__device__ inline void attn_cp16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(attn_smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ inline void attn_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ inline void attn_cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ldmatrix.x4: lane l gives the address of row l % 8 of 8x8 matrix l / 8; r[i] receives matrix i's (row l / 4,
// columns 2(l % 4), +1), or with .trans (rows 2(l % 4), +1 of column l / 4).
__device__ inline void attn_ldm_x4(uint32_t r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(attn_smem_addr(p)));
}
__device__ inline void attn_ldm_x4_trans(uint32_t r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(attn_smem_addr(p)));
}

// d += a b for a 16x16 (row) and b 16x8 (col) of bfloat16, f32 accumulators. Fragments (g = lane / 4, t = lane % 4):
// a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..); b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g);
// d0, d1 (g, 2t..2t+1), d2, d3 (g+8, 2t..2t+1).
__device__ inline void attn_mma(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bfloat16 pair (lo in the low half), rounded to nearest.
__device__ inline uint32_t attn_pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// ---- ldmatrix addressing (host-checked) --------------------------------------------------------------------------

// Lane l's row and column (elements) for an x4 load of a 16x16 A tile (row-major [m][k]) at (0, 0): matrices
// (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) = a0..a3.
__host__ __device__ inline int attn_ldm_a_row(int lane) { return ((lane >> 3) & 1) * 8 + (lane & 7); }
__host__ __device__ inline int attn_ldm_a_col(int lane) { return (lane >> 4) * 8; }
// B from rows of n ([n][k] row-major, e.g. keys [cand][d]), two n-tiles of 8 by one k-step of 16: matrices
// (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) = b0, b1 of n-tile 0, then of n-tile 1.
__host__ __device__ inline int attn_ldm_b_row(int lane) { return (lane >> 4) * 8 + (lane & 7); }
__host__ __device__ inline int attn_ldm_b_col(int lane) { return ((lane >> 3) & 1) * 8; }
// B from rows of k ([k][n] row-major, e.g. values [cand][d]) with .trans, one k-step of 16 by two n-tiles of 8:
// matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15) = b0, b1 of n-tile 0, then 1.
__host__ __device__ inline int attn_ldm_v_row(int lane) { return ((lane >> 3) & 1) * 8 + (lane & 7); }
__host__ __device__ inline int attn_ldm_v_col(int lane) { return (lane >> 4) * 8; }

}  // namespace v4cli::cuda
