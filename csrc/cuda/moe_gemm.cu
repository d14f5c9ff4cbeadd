// The prefill path's expert products (moe.cu runs them; T > 32): a grouped GEMM over the tile list, each tile
// up to 128 positions of one expert, on tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulated).
//
// Grid: (tile slots, N blocks); a block (256 threads, 8 warps) computes 128 positions x 128 weight rows: step 1,
// 64 rows of inter from w1 and the same 64 from w3 (N block = 64 rows of inter), step 2, 128 rows of w2 (of D).
// K runs in tiles of 32, double-buffered in shared memory (A 128 x 32 and B 128 x 32 bfloat16 per stage, rows
// padded to 40 elements so ldmatrix reads are conflict-free): each thread loads its share of the next K tile
// into registers (A: two 16-byte pieces of activation rows, gathered by token in step 1; B: 16 bytes of weights
// -- 32 FP4, 16 FP8 or 8 bf16 elements), the warps run the current tile's MMAs, then the loaded tile is decoded
// to bfloat16 (exact: e2m1/e4m3 times a power of two) and stored, one barrier per K tile. Warps sit 4 (M, 32
// positions) x 2 (N, 64 rows); in step 1 a warp's 64 rows are 32 of w1 and the same 32 of w3, so a thread holds
// the gate and up of the same (position, row) for the SwiGLU epilogue.
// Needs: bfloat16 x, D and inter multiples of 128, 16-byte aligned weight rows (the binding checks).
#include "moe.cuh"

namespace v4cli::cuda {
namespace {

constexpr int BM = kMoeGemmTokens, BN = 128, BK = 32;
constexpr int LDS = BK + 8;  // shared row stride in bfloat16: 80 bytes, 8 rows hit distinct 16-byte bank groups

__device__ inline uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ inline void ldmatrix_x4(uint32_t r[4], const uint16_t* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ inline void st_shared(uint16_t* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }

template <int FMT, bool UP>
__device__ void gemm_block(const MoePhase& a, int e, int p0, int np, int nblock, uint16_t (*As)[BM * LDS],
                           uint16_t (*Bs)[BN * LDS]) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp & 3, wn = warp >> 2;
  const int K = UP ? a.D : a.inter;
  const int ktiles = K / BK;
  constexpr bool kQuant = FMT != kMoeFormatBf16;

  // A: thread loads pieces tid and tid + 256 of the 128 x 4 sixteen-byte pieces (row = piece / 4)
  const __nv_bfloat16* arow[2];
  const __nv_bfloat16* xin = static_cast<const __nv_bfloat16*>(kQuant && a.act_quant ? a.xq : a.x);
  for (int i = 0; i < 2; ++i) {
    const int piece = tid + 256 * i, row = piece >> 2;
    arow[i] = nullptr;
    if (row < np) {
      const int p = p0 + row;
      arow[i] = UP ? xin + static_cast<size_t>(a.pair_src[p] / a.k) * a.D
                   : static_cast<const __nv_bfloat16*>(a.h) + static_cast<size_t>(p) * a.inter;
      arow[i] += 8 * (piece & 3);
    }
  }
  // B: shared row r holds weight row brow[r] of matrix bmat[r]; FP4 rows take 1 piece (threads 0..127), FP8 2,
  // bf16 4 (two per thread)
  constexpr int kPieces = FMT == kMoeFormatFp4 ? 1 : FMT == kMoeFormatFp8 ? 2 : 4;  // per row per K tile
  constexpr int kLoads = kPieces == 4 ? 2 : 1;
  const bool bload = kPieces * BN > tid;  // FP4: half the threads
  const uint8_t* bp[kLoads];
  const uint8_t* sp = nullptr;
  int bsmem[kLoads];
  const size_t row_bytes = FMT == kMoeFormatFp4 ? K / 2 : FMT == kMoeFormatFp8 ? K : 2 * static_cast<size_t>(K);
  for (int i = 0; i < kLoads; ++i) {
    const int piece = tid + 256 * i, r = piece / kPieces, part = piece % kPieces;
    int mat = 2, row = nblock * BN + r;
    if (UP) {  // smem rows 64 wn' + [0, 32): w1 rows 64 nblock + 32 wn' + [0, 32); + 32: the same rows of w3
      mat = (r & 63) < 32 ? 0 : 1;
      row = nblock * 64 + 32 * (r >> 6) + (r & 31);
    }
    bp[i] = moe_weight(a.table, a.E, mat, e) + row * row_bytes + 16 * part;
    bsmem[i] = r * LDS + part * (BK / kPieces);
    if (i == 0 && kQuant) {
      const uint8_t* S = moe_scale(a.table, a.E, mat, e);
      sp = FMT == kMoeFormatFp4 ? S + static_cast<size_t>(row) * (K / kFp4Block)
                                : S + static_cast<size_t>(row / kFp8Tile) * ((K + kFp8Tile - 1) / kFp8Tile);
    }
  }

  uint4 areg[2], breg[kLoads];
  uint8_t sreg = 0;
  auto load = [&](int kt) {
    for (int i = 0; i < 2; ++i)
      areg[i] = arow[i] != nullptr ? __ldg(reinterpret_cast<const uint4*>(arow[i] + kt * BK))
                                   : make_uint4(0u, 0u, 0u, 0u);
    if (bload) {
      for (int i = 0; i < kLoads; ++i) breg[i] = __ldg(reinterpret_cast<const uint4*>(bp[i] + kt * (16 * kPieces)));
      if constexpr (FMT == kMoeFormatFp4) sreg = sp[kt];                   // K tile = one 32-element block
      if constexpr (FMT == kMoeFormatFp8) sreg = sp[kt * BK / kFp8Tile];  // inside one 128-column tile
    }
  };
  auto store = [&](int buf) {
    for (int i = 0; i < 2; ++i) st_shared(&As[buf][((tid + 256 * i) >> 2) * LDS + 8 * ((tid + 256 * i) & 3)], areg[i]);
    if (!bload) return;
    if constexpr (FMT == kMoeFormatFp4) {
      const MoeScale s = moe_chunk_scale(sreg, 126);
      for (int wd = 0; wd < 4; ++wd) {
        uint32_t o[4];
        moe_fp4_natural(moe_word(breg[0], wd), s, o);
        st_shared(&Bs[buf][bsmem[0] + 8 * wd], make_uint4(o[0], o[1], o[2], o[3]));
      }
    } else if constexpr (FMT == kMoeFormatFp8) {
      const MoeScale s = moe_chunk_scale(sreg, 120);
      uint32_t o[8];
      for (int wd = 0; wd < 4; ++wd) moe_fp8_natural(moe_word(breg[0], wd), s, o + 2 * wd);
      st_shared(&Bs[buf][bsmem[0]], make_uint4(o[0], o[1], o[2], o[3]));
      st_shared(&Bs[buf][bsmem[0] + 8], make_uint4(o[4], o[5], o[6], o[7]));
    } else {
      for (int i = 0; i < kLoads; ++i) st_shared(&Bs[buf][bsmem[i]], breg[i]);
    }
  };

  float acc[2][8][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[mi][j][c] = 0.f;

  load(0);
  store(0);
  __syncthreads();
  for (int kt = 0; kt < ktiles; ++kt) {
    const int buf = kt & 1;
    if (kt + 1 < ktiles) load(kt + 1);
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
      uint32_t af[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const int row = 32 * wm + 16 * mi + moe_ldm_a_row(lane);
        ldmatrix_x4(af[mi], &As[buf][row * LDS + ks + moe_ldm_a_k(lane)]);
      }
#pragma unroll
      for (int jp = 0; jp < 4; ++jp) {  // n8 tiles 2jp, 2jp+1
        uint32_t bf[4];
        const int row = 64 * wn + 16 * jp + moe_ldm_b_row(lane);
        ldmatrix_x4(bf, &Bs[buf][row * LDS + ks + moe_ldm_b_k(lane)]);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          moe_mma(acc[mi][2 * jp], af[mi][0], af[mi][1], af[mi][2], af[mi][3], bf[0], bf[1]);
          moe_mma(acc[mi][2 * jp + 1], af[mi][0], af[mi][1], af[mi][2], af[mi][3], bf[2], bf[3]);
        }
      }
    }
    if (kt + 1 < ktiles) store(buf ^ 1);  // its last readers passed the barrier ending the previous K tile
    __syncthreads();
  }

  // acc[mi][j][c]: position 32 wm + 16 mi + g + 8 (c >> 1), shared row 64 wn + 8 j + 2t + (c & 1)
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = 32 * wm + 16 * mi + g + 8 * half;
      if (m >= np) continue;
      const int p = p0 + m, src = a.pair_src[p];
      if constexpr (UP) {  // tiles 0..3 gate, 4..7 up, of inter rows 64 nblock + 32 wn + 8 j + 2t (+1)
        const float wt = a.weights[src];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int row = nblock * 64 + 32 * wn + 8 * j + 2 * t;
          const float h0 = moe_swiglu(acc[mi][j][2 * half], acc[mi][j + 4][2 * half], wt, a.limit, true);
          const float h1 = moe_swiglu(acc[mi][j][2 * half + 1], acc[mi][j + 4][2 * half + 1], wt, a.limit, true);
          *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(a.h) + static_cast<size_t>(p) * a.inter +
                                             row) = __floats2bfloat162_rn(h0, h1);
        }
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int row = nblock * BN + 64 * wn + 8 * j + 2 * t;
          const float y0 = acc[mi][j][2 * half], y1 = acc[mi][j][2 * half + 1];
          *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(a.ys) + static_cast<size_t>(src) * a.D +
                                             row) = __floats2bfloat162_rn(y0, y1);
        }
      }
    }
}

template <bool UP>
__global__ void __launch_bounds__(256) moe_gemm(MoePhase a) {
  __shared__ alignas(16) uint16_t As[2][BM * LDS];
  __shared__ alignas(16) uint16_t Bs[2][BN * LDS];
  const int tile = blockIdx.x;
  if (tile >= *a.n_tiles) return;
  const int e = a.tile_e[tile], p0 = a.tile_p[tile];
  const int np = min(BM, a.offsets[e + 1] - p0);
  switch (moe_format(a.table, a.E, UP ? 0 : 2, e)) {
    case kMoeFormatFp4: gemm_block<kMoeFormatFp4, UP>(a, e, p0, np, blockIdx.y, As, Bs); break;
    case kMoeFormatFp8: gemm_block<kMoeFormatFp8, UP>(a, e, p0, np, blockIdx.y, As, Bs); break;
    case kMoeFormatBf16: gemm_block<kMoeFormatBf16, UP>(a, e, p0, np, blockIdx.y, As, Bs); break;
    default: break;  // the binding sends other formats to the SIMT path
  }
}

}  // namespace

void moe_gemm_launch(const MoePhase& a, bool up, int max_tiles, cudaStream_t stream) {
  if (up) {
    moe_gemm<true><<<dim3(max_tiles, a.inter / 64), 256, 0, stream>>>(a);
  } else {
    moe_gemm<false><<<dim3(max_tiles, a.D / BN), 256, 0, stream>>>(a);
  }
}

}  // namespace v4cli::cuda
