// moe_experts on the GPU (the twin: ops_ref.moe_experts): every token's k experts' SwiGLU MLPs, summed in float32
// in ascending expert order. This file routes and runs the steps; the expert GEMMs are moe_gemv.cu (decode),
// moe_gemm.cu (prefill) and moe_simt.cu (float32 and odd shapes).
//
// One chunk of tokens (all of them unless the intermediates would pass kBudget) runs as:
//   1. route (one block of 1024 threads): count the T*k picks per expert (shared-memory histogram, integer
//      atomics), scan the counts into offsets, list the tiles (up to bm positions of one expert each), and
//      order each token's slots by expert; with few picks the same block also places them (expert-major,
//      ascending token). Past kSmallPicks, one block per expert places its picks (ballot scan, in order).
//   2. act_quant(x) into xq when the linears' inputs are rounded (one warp per row and 128-block).
//   3. step 1 over the tile list: h[p] = weight * silu(w1 x) * (w3 x) per position, in x's dtype.
//   4. act_quant(h) in place for positions whose w2 is quantized.
//   5. step 2: ys[pick] = w2 h, in x's dtype, one row per (token, slot).
//   6. out[t] = the sum of ys over t's slots in ascending expert order (float32, a fixed order: deterministic).
// Tiles are listed on the device and the expert grids are sized by the most tiles T*k picks can make
// (P / bm + min(E, P)), so a decode step reads only the weights of the experts it picked.
#include <algorithm>
#include <cstddef>

#include "launch.h"
#include "moe.cuh"

namespace v4cli::cuda {
namespace {

constexpr int kRouteThreads = 1024;
constexpr int kSmallPicks = 1024;              // up to this many picks, the routing block places them too
constexpr size_t kBudget = size_t(256) << 20;  // bytes of intermediates per chunk of tokens

// Exclusive prefix sum of one int per thread over a block of kRouteThreads; *total gets the sum.
__device__ int block_exclusive_scan(int v, int* total, int* warp_sums) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int incl = v;
  for (int d = 1; d < 32; d <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, incl, d);
    if (lane >= d) incl += n;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {  // kRouteThreads / 32 == 32 warps: one lane each
    int w = warp_sums[lane];
    for (int d = 1; d < 32; d <<= 1) {
      const int n = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += n;
    }
    warp_sums[lane] = w;
  }
  __syncthreads();
  const int before = warp > 0 ? warp_sums[warp - 1] : 0;
  *total = warp_sums[31];
  __syncthreads();  // warp_sums is reused by the next scan
  return before + incl - v;
}

struct RouteOut {
  int* counts;    // [E]
  int* offsets;   // [E + 1]
  int* n_tiles;   // [1]
  int* tile_e;    // [max_tiles]
  int* tile_p;    // [max_tiles]
  int* pick32;    // [P] expert of each pick, -1 if out of range
  int* pair_src;  // [P] by position: the pick (t * k + j)
  int* pair_e;    // [P] by position: its expert
  int* order;     // [T * k] per token, its slots by ascending expert, then -1
};

__global__ void __launch_bounds__(kRouteThreads) moe_route(const int64_t* picks, int T, int k, int E, int bm,
                                                           bool place, RouteOut r) {
  extern __shared__ int smem[];
  int* cnt = smem;          // [E] counts, then offsets
  int* spick = smem + E;    // [P] when placing here
  __shared__ int warp_sums[32];
  const int P = T * k;
  for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < P; i += blockDim.x) {
    const int64_t v = picks[i];
    const int e = v >= 0 && v < E ? static_cast<int>(v) : -1;
    r.pick32[i] = e;
    if (place) spick[i] = e;
    if (e >= 0) atomicAdd(&cnt[e], 1);
  }
  __syncthreads();
  // each thread owns a run of `per` experts: its sums go through two block scans (positions, tiles)
  const int per = (E + kRouteThreads - 1) / kRouteThreads;
  const int e0 = min(E, static_cast<int>(threadIdx.x) * per), e1 = min(E, e0 + per);
  int mine = 0, my_tiles = 0;
  for (int e = e0; e < e1; ++e) {
    mine += cnt[e];
    my_tiles += (cnt[e] + bm - 1) / bm;
  }
  int total, total_tiles;
  int pos = block_exclusive_scan(mine, &total, warp_sums);
  int tile = block_exclusive_scan(my_tiles, &total_tiles, warp_sums);
  for (int e = e0; e < e1; ++e) {
    const int n = cnt[e];
    r.counts[e] = n;
    r.offsets[e] = pos;
    for (int i = 0; i < n; i += bm, ++tile) {
      r.tile_e[tile] = e;
      r.tile_p[tile] = pos + i;
    }
    cnt[e] = pos;  // the thread's own entries: no other thread reads them before the barrier below
    pos += n;
  }
  if (threadIdx.x == 0) {
    r.offsets[E] = total;
    *r.n_tiles = total_tiles;
  }
  // per token, its slots sorted by expert (insertion sort of at most kMoeMaxPicks; stable)
  for (int t = threadIdx.x; t < T; t += blockDim.x) {
    int key[kMoeMaxPicks], slot[kMoeMaxPicks], n = 0;
    for (int j = 0; j < k; ++j) {
      const int64_t v = picks[t * k + j];
      if (v < 0 || v >= E) continue;
      int i = n++;
      for (; i > 0 && key[i - 1] > v; --i) {
        key[i] = key[i - 1];
        slot[i] = slot[i - 1];
      }
      key[i] = static_cast<int>(v);
      slot[i] = j;
    }
    for (int j = 0; j < k; ++j) r.order[t * k + j] = j < n ? slot[j] : -1;
  }
  if (!place) return;
  __syncthreads();
  // a pick's position: its expert's offset plus the earlier picks of that expert (P <= kSmallPicks: cheap)
  for (int i = threadIdx.x; i < P; i += blockDim.x) {
    const int e = spick[i];
    if (e < 0) continue;
    int rank = 0;
    for (int j = 0; j < i; ++j) rank += spick[j] == e;
    r.pair_src[cnt[e] + rank] = i;
    r.pair_e[cnt[e] + rank] = e;
  }
}

// Many picks: block e walks all picks in order, 256 at a time, and places its own (ballot prefix counts).
__global__ void __launch_bounds__(256) moe_place(int P, RouteOut r) {
  const int e = blockIdx.x;
  const int end = r.offsets[e + 1];
  int base = r.offsets[e];
  __shared__ int warp_count[8];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int i0 = 0; i0 < P && base < end; i0 += 256) {  // base is the same in every thread: a uniform loop
    const int i = i0 + threadIdx.x;
    const bool ours = i < P && r.pick32[i] == e;
    const unsigned ballot = __ballot_sync(0xffffffffu, ours);
    if (lane == 0) warp_count[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, all = 0;
    for (int w = 0; w < 8; ++w) {
      before += w < warp ? warp_count[w] : 0;
      all += warp_count[w];
    }
    if (ours) {
      const int at = base + before + __popc(ballot & ((1u << lane) - 1u));
      r.pair_src[at] = i;
      r.pair_e[at] = e;
    }
    base += all;
    __syncthreads();
  }
}

// act_quant of rows [rows, K] (quant.act_quant: e4m3 per 1x128 block, a tail block if K % 128), out of or in
// place. One warp per (row, block), 8 blocks per CUDA block. With row_e, only rows below *n_rows whose expert's
// matrix m is quantized (step 2's input: a float w2 takes h as it is).
template <typename AT>
__global__ void __launch_bounds__(256) moe_act_quant(const AT* in, AT* out, int K, const int* n_rows,
                                                     const int* row_e, const int64_t* table, int E, int m) {
  const int row = blockIdx.x, lane = threadIdx.x & 31;
  const int k0 = (blockIdx.y * 8 + (threadIdx.x >> 5)) * kActBlock;
  if (k0 >= K) return;
  if (row_e != nullptr && (row >= *n_rows || !moe_quantized(moe_format(table, E, m, row_e[row])))) return;
  const int width = min(kActBlock, K - k0);
  const size_t base = static_cast<size_t>(row) * K + k0;
  float v[4], amax = 0.f;
  for (int i = 0; i < 4; ++i) {
    const int c = lane + 32 * i;
    v[i] = c < width ? moe_ld(in + base + c) : 0.f;
    amax = fmaxf(amax, fabsf(v[i]));
  }
  for (int d = 16; d > 0; d >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, d));
  const float s = fp8_block_scale(amax);
  for (int i = 0; i < 4; ++i) {
    const int c = lane + 32 * i;
    if (c < width) moe_st(out + base + c, fp8_round_scaled(v[i], s), false);  // e4m3 * 2^k: exact in bf16
  }
}

// out[t, n] = sum over t's valid slots, in ascending expert order, of ys[t * k + slot, n].
template <typename AT>
__global__ void __launch_bounds__(256) moe_sum(const AT* ys, const int* order, float* out, int T, int D, int k) {
  const size_t total = static_cast<size_t>(T) * D;
  for (size_t i = blockIdx.x * size_t(256) + threadIdx.x; i < total; i += size_t(gridDim.x) * 256) {
    const size_t t = i / D, n = i % D;
    float acc = 0.f;
    for (int j = 0; j < k; ++j) {
      const int s = order[t * k + j];
      if (s < 0) break;
      acc += moe_ld(ys + (t * k + s) * D + n);
    }
    out[i] = acc;
  }
}

size_t storage_bytes(const MoeArgs& a) { return a.x_bf16 ? 2 : 4; }

int gemv_tiles(int T) { return T <= 8 ? 1 : T <= 16 ? 2 : 4; }  // n8 token tiles per warp

struct Layout {
  int chunk, bm, nt, max_tiles;
  size_t counts, offsets, n_tiles, tile_e, tile_p, pick32, pair_src, pair_e, order, xq, h, ys, total;
};

Layout layout(const MoeArgs& a) {
  Layout L{};
  const size_t es = storage_bytes(a);
  const size_t per_token = es * (static_cast<size_t>(a.k) * (a.inter + a.D) + a.D) + 24 * static_cast<size_t>(a.k);
  L.chunk = static_cast<int>(std::min<int64_t>(a.T, std::max<size_t>(kBudget / per_token, 1)));
  L.nt = gemv_tiles(L.chunk);
  L.bm = a.path == MoePath::kGemv ? kMoeGemvTokens * L.nt : a.path == MoePath::kGemm ? kMoeGemmTokens : kMoeSimtTokens;
  const int P = L.chunk * a.k;
  L.max_tiles = P / L.bm + std::min(a.E, P) + 1;  // sum over experts of ceil(n_e / bm) < P / bm + active experts
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t here = at;
    at += (bytes + 255) / 256 * 256;
    return here;
  };
  L.counts = take(4 * size_t(a.E));
  L.offsets = take(4 * (size_t(a.E) + 1));
  L.n_tiles = take(4);
  L.tile_e = take(4 * size_t(L.max_tiles));
  L.tile_p = take(4 * size_t(L.max_tiles));
  L.pick32 = take(4 * size_t(P));
  L.pair_src = take(4 * size_t(P));
  L.pair_e = take(4 * size_t(P));
  L.order = take(4 * size_t(P));
  L.xq = a.act_quant && a.quant_w13 ? take(es * L.chunk * a.D) : 0;
  L.h = take(es * P * a.inter);
  L.ys = take(es * P * a.D);
  L.total = at;
  return L;
}

template <typename AT>
void launch_act_quant(const void* in, void* out, int rows, int K, const int* n_rows, const int* row_e,
                      const MoeArgs& a, int m, cudaStream_t stream) {
  const int blocks = (K + kActBlock - 1) / kActBlock;
  const dim3 grid(rows, (blocks + 7) / 8);
  moe_act_quant<AT><<<grid, 256, 0, stream>>>(static_cast<const AT*>(in), static_cast<AT*>(out), K, n_rows, row_e,
                                              a.table, a.E, m);
}

template <typename AT>
void launch_sum(const void* ys, const int* order, float* out, int T, const MoeArgs& a, cudaStream_t stream) {
  const size_t total = static_cast<size_t>(T) * a.D;
  const int blocks = static_cast<int>(std::min<size_t>((total + 255) / 256, 8192));
  moe_sum<AT><<<blocks, 256, 0, stream>>>(static_cast<const AT*>(ys), order, out, T, a.D, a.k);
}

}  // namespace

size_t moe_workspace_bytes(const MoeArgs& a) { return layout(a).total; }

cudaError_t moe_experts(const MoeArgs& a, void* workspace, cudaStream_t stream) {
  const Layout L = layout(a);
  char* ws = static_cast<char*>(workspace);
  auto ints = [ws](size_t off) { return reinterpret_cast<int*>(ws + off); };
  const RouteOut r{ints(L.counts), ints(L.offsets), ints(L.n_tiles), ints(L.tile_e), ints(L.tile_p),
                   ints(L.pick32), ints(L.pair_src), ints(L.pair_e), ints(L.order)};
  const size_t es = storage_bytes(a);
  void* xq = a.act_quant && a.quant_w13 ? ws + L.xq : nullptr;
  cudaError_t err = cudaSuccess;
  auto failed = [&err]() { return (err = cudaGetLastError()) != cudaSuccess; };
  for (int64_t t0 = 0; t0 < a.T; t0 += L.chunk) {
    const int T = static_cast<int>(std::min<int64_t>(L.chunk, a.T - t0));
    const int P = T * a.k;
    const char* x = static_cast<const char*>(a.x) + t0 * a.D * es;
    const int64_t* picks = a.picks + t0 * a.k;
    const bool place = P <= kSmallPicks;
    const size_t smem = sizeof(int) * (a.E + (place ? P : 0));
    moe_route<<<1, kRouteThreads, smem, stream>>>(picks, T, a.k, a.E, L.bm, place, r);
    if (failed()) return err;
    if (!place) {
      moe_place<<<a.E, 256, 0, stream>>>(P, r);
      if (failed()) return err;
    }
    if (xq != nullptr) {
      (a.x_bf16 ? launch_act_quant<__nv_bfloat16> : launch_act_quant<float>)(x, xq, T, a.D, nullptr, nullptr, a, 0,
                                                                              stream);
      if (failed()) return err;
    }
    const MoePhase ph{a.table, r.n_tiles, r.tile_e, r.tile_p, r.offsets, r.pair_src, a.weights + t0 * a.k, x, xq,
                      ws + L.h, ws + L.ys, a.E, a.D, a.inter, a.k, a.limit, a.act_quant, a.round_bf16};
    for (const bool up : {true, false}) {
      if (a.path == MoePath::kGemv) {
        moe_gemv_launch(ph, up, L.nt, L.max_tiles, stream);
      } else if (a.path == MoePath::kGemm) {
        moe_gemm_launch(ph, up, L.max_tiles, stream);
      } else {
        moe_simt_launch(ph, up, a.x_bf16, L.max_tiles, stream);
      }
      if (failed()) return err;
      if (up && a.act_quant && a.quant_w2) {
        (a.x_bf16 ? launch_act_quant<__nv_bfloat16> : launch_act_quant<float>)(ws + L.h, ws + L.h, P, a.inter,
                                                                                r.offsets + a.E, r.pair_e, a, 2,
                                                                                stream);
        if (failed()) return err;
      }
    }
    (a.x_bf16 ? launch_sum<__nv_bfloat16> : launch_sum<float>)(ws + L.ys, r.order, a.out + t0 * a.D, T, a, stream);
    if (failed()) return err;
  }
  return err;
}

}  // namespace v4cli::cuda
