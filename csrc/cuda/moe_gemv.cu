// The decode path's expert products (moe.cu runs them; T <= 32 tokens, so an expert has a few tokens at most):
// weights streamed once from global memory straight into tensor-core MMAs (m16n8k16, bf16 in, f32 out), the
// weights as the A operand (16 rows per warp), the tile's tokens as B (8 per n8 tile, NT tiles).
//
// Grid: (tile slots, N / 64); a block is 4 warps, warp w owning rows n0 = 64 * blockIdx.y + 16 * w of N (step 1:
// those rows of w1 and of w3, N = inter; step 2: of w2, N = D). Tile slots past the list's end exit at once, so
// only the picked experts' weights are read. Per step of K each lane loads 16 bytes of each of its rows
// (ld.global.nc, no L1 allocation: weights are read once; the next step's are loaded before this step's MMAs)
// and its tokens' activations for those elements (16-byte loads through L1, where a block's warps share them),
// decodes FP4/FP8 with a few integer ops and one bfloat16 multiply per pair (moe.cuh), and issues G/4 MMAs per
// tile. The epilogue writes h (SwiGLU, bfloat16) or the down projection's rows of ys.
// Needs: bfloat16 x, K % 128 == 0 and N % 64 == 0, 16-byte aligned weight rows (the binding checks).
#include "moe.cuh"

namespace v4cli::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kBlockRows = 16 * kWarps;

__device__ inline uint4 ld_stream(const uint8_t* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// One step's MMAs: pieces w[m][r] (matrix m, row g / g+8) with their scales, activations x[j][*] for tile j.
template <int FMT, int NT, int NM, bool TWO>
__device__ inline void gemv_step(const uint4 (&w)[NM][2], const MoeScale (&s)[NM][2], const uint4 (&x)[NT][4],
                                 float (&acc)[NM][NT][4]) {
  constexpr int kMmas = MoeGemvFmt<FMT>::G / 4;
#pragma unroll
  for (int i = 0; i < kMmas; ++i) {
    uint32_t a[NM][4];
#pragma unroll
    for (int m = 0; m < NM; ++m) moe_gemv_a<FMT, TWO>(w[m][0], w[m][1], s[m][0], s[m][1], i, a[m]);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      uint32_t b[2];
      moe_gemv_b<FMT>(x[j][i >> 1], i, b);
#pragma unroll
      for (int m = 0; m < NM; ++m) moe_mma(acc[m][j], a[m][0], a[m][1], a[m][2], a[m][3], b[0], b[1]);
    }
  }
}

template <int FMT, int NT, bool UP>
__device__ void gemv_warp(const MoePhase& a, int e, int p0, int np, int n0) {
  constexpr int NM = UP ? 2 : 1;                 // step 1: w1 and w3 over the same rows and tokens
  constexpr int G = MoeGemvFmt<FMT>::G;          // elements per lane per row per step
  constexpr int kWords = G / 8;                  // 16-byte activation words per lane per step
  constexpr bool kQuant = FMT != kMoeFormatBf16;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int K = UP ? a.D : a.inter;
  const size_t row_bytes = static_cast<size_t>(K) * 16 / G;
  const int steps = K / (4 * G);

  const uint8_t* wp[NM][2];
  const uint8_t* sp[NM][2];
  for (int m = 0; m < NM; ++m) {
    const int mat = UP ? m : 2;
    const uint8_t* W = moe_weight(a.table, a.E, mat, e);
    const uint8_t* S = moe_scale(a.table, a.E, mat, e);
    for (int r = 0; r < 2; ++r) {
      const int row = n0 + g + 8 * r;
      wp[m][r] = W + row * row_bytes + 16 * t;
      if constexpr (FMT == kMoeFormatFp4) sp[m][r] = S + static_cast<size_t>(row) * (K / kFp4Block) + t;
      if constexpr (FMT == kMoeFormatFp8) {
        sp[m][r] = S + static_cast<size_t>(row / kFp8Tile) * ((K + kFp8Tile - 1) / kFp8Tile);
      }
      if constexpr (FMT == kMoeFormatBf16) sp[m][r] = S;
    }
  }
  // the activation rows of this lane's tokens (token 8j + g of the tile), at its own elements of a step
  const __nv_bfloat16* xp[NT];
  const __nv_bfloat16* xin = static_cast<const __nv_bfloat16*>(kQuant && a.act_quant ? a.xq : a.x);
  for (int j = 0; j < NT; ++j) {
    const int q = 8 * j + g;
    xp[j] = nullptr;
    if (q < np) {
      const int p = p0 + q;
      xp[j] = UP ? xin + static_cast<size_t>(a.pair_src[p] / a.k) * a.D
                 : static_cast<const __nv_bfloat16*>(a.h) + static_cast<size_t>(p) * a.inter;
      xp[j] += G * t;
    }
  }

  float acc[NM][NT][4];
#pragma unroll
  for (int m = 0; m < NM; ++m)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[m][j][c] = 0.f;

  uint4 w[NM][2];
  uint8_t sb[NM][2];
  auto load = [&](int step, uint4 (&wv)[NM][2], uint8_t (&sv)[NM][2]) {
    for (int m = 0; m < NM; ++m)
      for (int r = 0; r < 2; ++r) {
        wv[m][r] = ld_stream(wp[m][r] + static_cast<size_t>(step) * 64);
        if constexpr (FMT == kMoeFormatFp4) sv[m][r] = sp[m][r][4 * step];    // one scale per 32 elements
        if constexpr (FMT == kMoeFormatFp8) sv[m][r] = sp[m][r][step >> 1];   // a step: 64 elements of a tile
      }
  };
  load(0, w, sb);
  for (int step = 0; step < steps; ++step) {
    uint4 wn[NM][2];
    uint8_t sn[NM][2] = {};
    if (step + 1 < steps) load(step + 1, wn, sn);
    uint4 x[NT][4];
    for (int j = 0; j < NT; ++j)
      for (int v = 0; v < kWords; ++v)
        x[j][v] = xp[j] != nullptr ? __ldg(reinterpret_cast<const uint4*>(xp[j] + step * 4 * G) + v)
                                   : make_uint4(0u, 0u, 0u, 0u);
    MoeScale s[NM][2];
    bool two = false;
    for (int m = 0; m < NM; ++m)
      for (int r = 0; r < 2; ++r) {
        s[m][r] = kQuant ? moe_chunk_scale(sb[m][r], MoeGemvFmt<FMT>::bias) : MoeScale{kMoeOnex2, kMoeOnex2, false};
        two |= s[m][r].two;
      }
    if (__any_sync(0xffffffffu, two)) {  // a scale past 2^(127 - bias) somewhere in the warp: never in a checkpoint
      gemv_step<FMT, NT, NM, true>(w, s, x, acc);
    } else {
      gemv_step<FMT, NT, NM, false>(w, s, x, acc);
    }
    if (step + 1 < steps) {
      for (int m = 0; m < NM; ++m)
        for (int r = 0; r < 2; ++r) {
          w[m][r] = wn[m][r];
          sb[m][r] = sn[m][r];
        }
    }
  }

  // acc[m][j][c]: row n0 + g + 8 (c >> 1), token 8j + 2t + (c & 1) of the tile
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int q = 8 * j + 2 * t + (c & 1);
      if (q >= np) continue;
      const int p = p0 + q, src = a.pair_src[p], row = n0 + g + 8 * (c >> 1);
      if constexpr (UP) {
        const float h = moe_swiglu(acc[0][j][c], acc[NM - 1][j][c], a.weights[src], a.limit, true);
        static_cast<__nv_bfloat16*>(a.h)[static_cast<size_t>(p) * a.inter + row] = __float2bfloat16_rn(h);
      } else {
        static_cast<__nv_bfloat16*>(a.ys)[static_cast<size_t>(src) * a.D + row] = __float2bfloat16_rn(acc[0][j][c]);
      }
    }
}

template <int NT, bool UP>
__global__ void __launch_bounds__(32 * kWarps) moe_gemv(MoePhase a) {
  const int tile = blockIdx.x;
  if (tile >= *a.n_tiles) return;
  const int e = a.tile_e[tile], p0 = a.tile_p[tile];
  const int np = min(kMoeGemvTokens * NT, a.offsets[e + 1] - p0);
  const int n0 = blockIdx.y * kBlockRows + (threadIdx.x >> 5) * 16;
  if (n0 >= (UP ? a.inter : a.D)) return;  // whole warps
  switch (moe_format(a.table, a.E, UP ? 0 : 2, e)) {
    case kMoeFormatFp4: gemv_warp<kMoeFormatFp4, NT, UP>(a, e, p0, np, n0); break;
    case kMoeFormatFp8: gemv_warp<kMoeFormatFp8, NT, UP>(a, e, p0, np, n0); break;
    case kMoeFormatBf16: gemv_warp<kMoeFormatBf16, NT, UP>(a, e, p0, np, n0); break;
    default: break;  // the binding sends other formats to the SIMT path
  }
}

template <int NT>
void launch(const MoePhase& a, bool up, int max_tiles, cudaStream_t stream) {
  const int N = up ? a.inter : a.D;
  const dim3 grid(max_tiles, (N + kBlockRows - 1) / kBlockRows);
  if (up) {
    moe_gemv<NT, true><<<grid, 32 * kWarps, 0, stream>>>(a);
  } else {
    moe_gemv<NT, false><<<grid, 32 * kWarps, 0, stream>>>(a);
  }
}

}  // namespace

void moe_gemv_launch(const MoePhase& a, bool up, int nt, int max_tiles, cudaStream_t stream) {
  if (nt == 1) {
    launch<1>(a, up, max_tiles, stream);
  } else if (nt == 2) {
    launch<2>(a, up, max_tiles, stream);
  } else {
    launch<4>(a, up, max_tiles, stream);
  }
}

}  // namespace v4cli::cuda
