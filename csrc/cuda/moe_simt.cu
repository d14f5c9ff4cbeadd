// The expert products for every input the tensor-core paths do not take (moe.cu runs them): float32 x (parity
// tests: float32 FMAs keep the twin's 1e-5), float32/float16 weights, D or inter not multiples of 128, unaligned
// rows. Simple by design: one warp per (tile of up to 4 positions of one expert, output row), lanes striding
// over K one element at a time (each weight decoded once with quant.cuh's exact decoders and used for the
// tile's positions), a fixed shuffle tree for the lanes' sums, lane 0 writing the tile's results.
// Grid: (tile slots, ceil(N / 8)), 8 warps per block.
#include "moe.cuh"

namespace v4cli::cuda {
namespace {

constexpr int kRowsPerBlock = 8;

// Element (n, k) of matrix [N, K] in format fmt, as float32 (the twin's dequantized weight: exact).
__device__ inline float weight_at(int fmt, const uint8_t* W, const uint8_t* S, int n, int k, int K) {
  const size_t at = static_cast<size_t>(n) * K + k;
  switch (fmt) {
    case kMoeFormatFp8:
      return e4m3_to_float(W[at]) *
             ue8m0_to_float(S[static_cast<size_t>(n / kFp8Tile) * ((K + kFp8Tile - 1) / kFp8Tile) + k / kFp8Tile]);
    case kMoeFormatFp4: {
      const uint8_t b = W[at >> 1];  // K is even: row n starts at byte n * K / 2
      const uint8_t s = S[static_cast<size_t>(n) * (K / kFp4Block) + k / kFp4Block];
      return e2m1_to_float((k & 1) ? b >> 4 : b & 15) * ue8m0_to_float(s);
    }
    case kMoeFormatF32: return reinterpret_cast<const float*>(W)[at];
    case kMoeFormatBf16: return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(W)[at]);
    default: return __half2float(reinterpret_cast<const __half*>(W)[at]);
  }
}

template <typename AT, bool UP>
__global__ void __launch_bounds__(32 * kRowsPerBlock) moe_simt(MoePhase a) {
  constexpr int TP = kMoeSimtTokens;
  const int tile = blockIdx.x;
  if (tile >= *a.n_tiles) return;
  const int e = a.tile_e[tile], p0 = a.tile_p[tile];
  const int np = min(TP, a.offsets[e + 1] - p0);
  const int n = blockIdx.y * kRowsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (n >= (UP ? a.inter : a.D)) return;
  const int K = UP ? a.D : a.inter;
  const int m0 = UP ? 0 : 2, fmt = moe_format(a.table, a.E, m0, e);
  const uint8_t* W0 = moe_weight(a.table, a.E, m0, e);
  const uint8_t* S0 = moe_scale(a.table, a.E, m0, e);
  const uint8_t* W1 = UP ? moe_weight(a.table, a.E, 1, e) : nullptr;  // w3: the binding checks it shares w1's format
  const uint8_t* S1 = UP ? moe_scale(a.table, a.E, 1, e) : nullptr;
  const AT* xin = static_cast<const AT*>(a.act_quant && moe_quantized(fmt) ? a.xq : a.x);
  const AT* rows[TP];
  for (int j = 0; j < TP; ++j) {
    const int p = p0 + (j < np ? j : 0);
    rows[j] = UP ? xin + static_cast<size_t>(a.pair_src[p] / a.k) * a.D
                 : static_cast<const AT*>(a.h) + static_cast<size_t>(p) * a.inter;
  }
  float acc0[TP] = {}, acc1[TP] = {};
  for (int k = lane; k < K; k += 32) {
    const float w0 = weight_at(fmt, W0, S0, n, k, K);
    const float w1 = UP ? weight_at(fmt, W1, S1, n, k, K) : 0.f;
#pragma unroll
    for (int j = 0; j < TP; ++j) {
      if (j < np) {
        const float v = moe_ld(rows[j] + k);
        acc0[j] += v * w0;
        if (UP) acc1[j] += v * w1;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < TP; ++j)
    for (int d = 16; d > 0; d >>= 1) {
      acc0[j] += __shfl_xor_sync(0xffffffffu, acc0[j], d);
      if (UP) acc1[j] += __shfl_xor_sync(0xffffffffu, acc1[j], d);
    }
  if (lane != 0) return;
#pragma unroll
  for (int j = 0; j < TP; ++j) {
    if (j >= np) continue;
    const int p = p0 + j, src = a.pair_src[p];
    if (UP) {
      const float h = moe_swiglu(acc0[j], acc1[j], a.weights[src], a.limit, a.round_bf16);
      moe_st(static_cast<AT*>(a.h) + static_cast<size_t>(p) * a.inter + n, h, a.round_bf16);
    } else {
      moe_st(static_cast<AT*>(a.ys) + static_cast<size_t>(src) * a.D + n, acc0[j], a.round_bf16);
    }
  }
}

template <typename AT>
void launch(const MoePhase& a, bool up, int max_tiles, cudaStream_t stream) {
  const int N = up ? a.inter : a.D;
  const dim3 grid(max_tiles, (N + kRowsPerBlock - 1) / kRowsPerBlock);
  if (up) {
    moe_simt<AT, true><<<grid, 32 * kRowsPerBlock, 0, stream>>>(a);
  } else {
    moe_simt<AT, false><<<grid, 32 * kRowsPerBlock, 0, stream>>>(a);
  }
}

}  // namespace

void moe_simt_launch(const MoePhase& a, bool up, bool x_bf16, int max_tiles, cudaStream_t stream) {
  if (x_bf16) {
    launch<__nv_bfloat16>(a, up, max_tiles, stream);
  } else {
    launch<float>(a, up, max_tiles, stream);
  }
}

}  // namespace v4cli::cuda
