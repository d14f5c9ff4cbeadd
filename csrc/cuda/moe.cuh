// What the moe_experts kernels share (moe.cu, moe_gemv.cu, moe_gemm.cu, moe_simt.cu): the expert table, the
// per-step buffers, the SwiGLU step, and the bit-level decoding of FP4/FP8 weights into bfloat16 pairs for the
// tensor-core paths. Plain CUDA C++; the decoders are __host__ __device__ so tests/cuda/moe_host.cu checks them
// (and the MMA fragment layout they feed) against runtime/quant.py without a GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "launch.h"
#include "quant.cuh"

namespace v4cli::cuda {

__host__ __device__ inline bool moe_quantized(int fmt) { return fmt == kMoeFormatFp8 || fmt == kMoeFormatFp4; }

// The expert table, one device array of 9E int64: weight pointers of w1, w3, w2 (matrix m = 0, 1, 2; E each),
// then their scale pointers, then their format codes. Matrix m of expert e is entry m * E + e of each third.
__device__ inline const uint8_t* moe_weight(const int64_t* table, int E, int m, int e) {
  return reinterpret_cast<const uint8_t*>(table[m * E + e]);
}
__device__ inline const uint8_t* moe_scale(const int64_t* table, int E, int m, int e) {
  return reinterpret_cast<const uint8_t*>(table[3 * E + m * E + e]);
}
__device__ inline int moe_format(const int64_t* table, int E, int m, int e) {
  return static_cast<int>(table[6 * E + m * E + e]);
}

// One step's buffers and arguments, as every expert kernel sees them. Positions p index the picks sorted by
// expert (ascending token within an expert); pair_src[p] = t * k + j names the pick (token t, slot j).
struct MoePhase {
  const int64_t* table;
  const int* n_tiles;   // [1] tiles in the list
  const int* tile_e;    // a tile: up to the kernel's bm consecutive positions of one expert
  const int* tile_p;    // its first position
  const int* offsets;   // [E + 1] each expert's first position
  const int* pair_src;  // [P]
  const float* weights; // [T, k] routing weights (by pick)
  const void* x;        // [T, D] step 1 input, x's storage type
  const void* xq;       // [T, D] act_quant(x) or null (used for quantized w1/w3 when act_quant)
  void* h;              // [P, inter] step 1 output, step 2 input
  void* ys;             // [T * k, D] step 2 output by pick
  int E, D, inter, k;
  float limit;
  bool act_quant;
  bool round_bf16;      // round to bfloat16 between steps (float32 storage with bf16 values)
};

// Storage-type loads and stores (x's dtype: float32 or bfloat16).
__device__ inline float moe_ld(const float* p) { return *p; }
__device__ inline float moe_ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ inline void moe_st(float* p, float v, bool round) { *p = round ? bf16_round(v) : v; }
__device__ inline void moe_st(__nv_bfloat16* p, float v, bool) { *p = __float2bfloat16_rn(v); }

// The SwiGLU step of one (token, expert, row) from the two linears' float32 sums: each rounded to the model's
// dtype first (the twin's `_linear` returns x's dtype), the V4 clamp, SiLU as pointwise.silu (x / (e^-x + 1)),
// and the routing weight applied last, as the twin's `weights * (silu(gate) * up)`.
__device__ inline float moe_swiglu(float gate, float up, float weight, float limit, bool round) {
  if (round) {
    gate = bf16_round(gate);
    up = bf16_round(up);
  }
  if (limit > 0.f) {  // comparisons, not fminf: a NaN stays NaN as in torch.clamp
    up = up < -limit ? -limit : (up > limit ? limit : up);
    gate = gate > limit ? limit : gate;
  }
  const float silu = gate / (expf(-gate) + 1.f);
  return weight * (silu * up);
}

// ---- weights to bfloat16 pairs (the tensor-core paths) ---------------------------------------------------------

// PTX prmt / __byte_perm, also as host code: byte i of the result is byte (s >> 4i) & 7 of {hi:lo}.
__host__ __device__ inline uint32_t moe_perm(uint32_t lo, uint32_t hi, uint32_t s) {
#ifdef __CUDA_ARCH__
  return __byte_perm(lo, hi, s);
#else
  const uint64_t v = (static_cast<uint64_t>(hi) << 32) | lo;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<uint32_t>((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
#endif
}

// Two bfloat16 products a * b, rounded to nearest (exact here: every multiplier is a power of two). Subnormal
// inputs are kept (the hardware's default for bf16 arithmetic), which the FP4 code 0.5 relies on.
__host__ __device__ inline uint32_t moe_bf16x2_mul(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  uint32_t d;
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
#else
  uint32_t d = 0;
  for (int i = 0; i < 2; ++i) {
    const float x = bits_float((a >> (16 * i)) << 16), y = bits_float((b >> (16 * i)) << 16);
    const __nv_bfloat16 r = __float2bfloat16_rn(x * y);
    uint16_t u;
    __builtin_memcpy(&u, &r, 2);
    d |= static_cast<uint32_t>(u) << (16 * i);
  }
  return d;
#endif
}

// 2^(field - 127) as bfloat16 in both halves (field 1..254), and a NaN pair.
__host__ __device__ inline uint32_t moe_pow2x2(uint32_t field) { return (field << 7) | (field << 23); }
constexpr uint32_t kMoeNaNx2 = 0x7fc07fc0u;

// A weight chunk's multiplier: the decoders below leave the value times 2^-bias (bias 126 for e2m1, 120 for
// e4m3); times the UE8M0 scale 2^(b-127) that is 2^(b + bias - 127) in one bfloat16 when it fits (every real
// checkpoint: m2 = 1), else two factors (2^bias, then the scale, NaN for b = 255) and `two` is set.
struct MoeScale {
  uint32_t m1, m2;
  bool two;
};
constexpr uint32_t kMoeOnex2 = 0x3f803f80u;
__host__ __device__ inline MoeScale moe_chunk_scale(uint32_t b, uint32_t bias) {
  if (b + bias <= 254) return {moe_pow2x2(b + bias), kMoeOnex2, false};
  return {moe_pow2x2(bias + 127), b == 255 ? kMoeNaNx2 : moe_pow2x2(b), true};
}
// TWO: apply m2 as well (always right; without it, right when no `two` was set).
template <bool TWO>
__host__ __device__ inline uint32_t moe_scaled(uint32_t v, const MoeScale& s) {
  v = moe_bf16x2_mul(v, s.m1);
  return TWO ? moe_bf16x2_mul(v, s.m2) : v;
}

// Pair j (0..3) of eight e2m1 codes in a word (element i in bits 4i..4i+3): elements (3 - j, 7 - j) as the low
// and high bfloat16, each times 2^-126: the code's 3 magnitude bits go under the bfloat16 exponent's two low bits
// and the mantissa's top bit, giving 2^(e-127) (1 + m/2), and m/2 * 2^-126 for e = 0 (a subnormal).
__host__ __device__ inline uint32_t moe_fp4_pair(uint32_t q, int j) {
  const uint32_t v = q << (4 * j);  // elements 3-j and 7-j now at bits 12..15 and 28..31
  return (v & 0x80008000u) | ((v & 0x70007000u) >> 6);
}
__host__ __device__ inline void moe_fp4_pairs(uint32_t q, uint32_t out[4]) {
  for (int j = 0; j < 4; ++j) out[j] = moe_fp4_pair(q, j);
}

// Pair j (0, 1) of four e4m3 bytes in a word: bytes (1, 3) for j = 0, (0, 2) for j = 1, each times 2^-120: the
// sign to bit 15, the 7 exponent-mantissa bits to the bfloat16's bits 4..10 (subnormals included).
__host__ __device__ inline uint32_t moe_fp8_pair(uint32_t q, int j) {
  const uint32_t v = q << (8 * j);
  return (v & 0x80008000u) | ((v & 0x7f007f00u) >> 4);
}
__host__ __device__ inline void moe_fp8_pairs(uint32_t q, uint32_t out[2]) {
  out[0] = moe_fp8_pair(q, 0);
  out[1] = moe_fp8_pair(q, 1);
}

// The same words decoded and scaled into natural order (element pairs (0,1), (2,3), ...): what the prefill
// path stores in shared memory. FP4: 8 elements -> 4 words; FP8: 4 elements -> 2 words.
__host__ __device__ inline void moe_fp4_natural(uint32_t q, const MoeScale& s, uint32_t out[4]) {
  uint32_t p[4];
  moe_fp4_pairs(q, p);
  for (int j = 0; j < 4; ++j) p[j] = moe_scaled<true>(p[j], s);
  out[0] = moe_perm(p[3], p[2], 0x5410);  // (e0, e1)
  out[1] = moe_perm(p[1], p[0], 0x5410);  // (e2, e3)
  out[2] = moe_perm(p[3], p[2], 0x7632);  // (e4, e5)
  out[3] = moe_perm(p[1], p[0], 0x7632);  // (e6, e7)
}
__host__ __device__ inline void moe_fp8_natural(uint32_t q, const MoeScale& s, uint32_t out[2]) {
  uint32_t p[2];
  moe_fp8_pairs(q, p);
  p[0] = moe_scaled<true>(p[0], s);
  p[1] = moe_scaled<true>(p[1], s);
  out[0] = moe_perm(p[1], p[0], 0x5410);  // (b0, b1)
  out[1] = moe_perm(p[1], p[0], 0x7632);  // (b2, b3)
}

// ---- the decode path's MMA operands (moe_gemv.cu) ---------------------------------------------------------------
// Lane (g = lane / 4, t = lane % 4) of a warp owning 16 weight rows reads 16 bytes of rows n0 + g and n0 + g + 8
// per step; the 4 lanes t of a row read 4 consecutive 16-byte pieces. A piece holds G elements (32 FP4, 16 FP8,
// 8 BF16) and feeds G/4 MMAs (m16n8k16, weights as A, 8 tokens as B), 4 of its elements each: MMA i takes 2 A
// pairs per row and the 2 B pairs of the same elements from the token's activations (in each format's own k
// order: the MMA sums over k, so each element need only meet its own activation). B comes from activation words
// x[i / 2] (8 bfloat16 each) of the lane's G elements.
template <int FMT>
struct MoeGemvFmt;
template <>
struct MoeGemvFmt<kMoeFormatFp4> {
  static constexpr int G = 32, bias = 126;
};
template <>
struct MoeGemvFmt<kMoeFormatFp8> {
  static constexpr int G = 16, bias = 120;
};
template <>
struct MoeGemvFmt<kMoeFormatBf16> {
  static constexpr int G = 8, bias = 0;
};

__host__ __device__ inline uint32_t moe_word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// A operand of MMA i: {row g pair, row g+8 pair, row g second pair, row g+8 second pair}.
template <int FMT, bool TWO>
__host__ __device__ inline void moe_gemv_a(const uint4& r0, const uint4& r1, const MoeScale& s0, const MoeScale& s1,
                                           int i, uint32_t a[4]) {
  if constexpr (FMT == kMoeFormatFp4) {  // word i/2, pairs 0,1 (elements 3,7 and 2,6) or 2,3 (1,5 and 0,4)
    const uint32_t q0 = moe_word(r0, i >> 1), q1 = moe_word(r1, i >> 1);
    const int j = 2 * (i & 1);
    a[0] = moe_scaled<TWO>(moe_fp4_pair(q0, j), s0);
    a[1] = moe_scaled<TWO>(moe_fp4_pair(q1, j), s1);
    a[2] = moe_scaled<TWO>(moe_fp4_pair(q0, j + 1), s0);
    a[3] = moe_scaled<TWO>(moe_fp4_pair(q1, j + 1), s1);
  } else if constexpr (FMT == kMoeFormatFp8) {  // word i: bytes 1,3 then 0,2
    const uint32_t q0 = moe_word(r0, i), q1 = moe_word(r1, i);
    a[0] = moe_scaled<TWO>(moe_fp8_pair(q0, 0), s0);
    a[1] = moe_scaled<TWO>(moe_fp8_pair(q1, 0), s1);
    a[2] = moe_scaled<TWO>(moe_fp8_pair(q0, 1), s0);
    a[3] = moe_scaled<TWO>(moe_fp8_pair(q1, 1), s1);
  } else {  // bfloat16 weights in natural order: pairs 2i and 2i+1
    a[0] = moe_word(r0, 2 * i);
    a[1] = moe_word(r1, 2 * i);
    a[2] = moe_word(r0, 2 * i + 1);
    a[3] = moe_word(r1, 2 * i + 1);
  }
}

// B operand of MMA i from x = activation word i / 2 (its 8 bfloat16 as 4 natural pairs X0..X3).
template <int FMT>
__host__ __device__ inline void moe_gemv_b(const uint4& x, int i, uint32_t b[2]) {
  if constexpr (FMT == kMoeFormatFp4) {  // (3,7), (2,6) or (1,5), (0,4) of the word's 8 elements
    const uint32_t lo = (i & 1) ? x.x : x.y, hi = (i & 1) ? x.z : x.w;
    b[0] = moe_perm(lo, hi, 0x7632);
    b[1] = moe_perm(lo, hi, 0x5410);
  } else if constexpr (FMT == kMoeFormatFp8) {  // elements 4h..4h+3 of the word: (1,3), (0,2)
    const uint32_t lo = moe_word(x, 2 * (i & 1)), hi = moe_word(x, 2 * (i & 1) + 1);
    b[0] = moe_perm(lo, hi, 0x7632);
    b[1] = moe_perm(lo, hi, 0x5410);
  } else {
    b[0] = moe_word(x, 2 * (i & 1));
    b[1] = moe_word(x, 2 * (i & 1) + 1);
  }
}

// ---- the prefill path's shared-memory fragments (moe_gemm.cu) -------------------------------------------------
// ldmatrix.x4: lane l gives the address of row l % 8 of 8x8 matrix l / 8 and receives, of each matrix, row
// lane / 4, columns 2 (lane % 4) and +1. Tiles are [row][k] in shared memory. The A fragment of rows r0..r0+15
// at k0: matrices (rows +0, k +0), (+8, +0), (+0, +8), (+8, +8) -> a0..a3. Two B fragments (n8 tiles at rows
// r0 and r0 + 8): matrices (rows +0, k +0), (+0, +8), (+8, +0), (+8, +8) -> b0, b1 of the first, b0, b1 of the
// second. Offsets of lane's row and k from (r0, k0):
__host__ __device__ inline int moe_ldm_a_row(int lane) { return (lane & 7) + 8 * ((lane >> 3) & 1); }
__host__ __device__ inline int moe_ldm_a_k(int lane) { return 8 * (lane >> 4); }
__host__ __device__ inline int moe_ldm_b_row(int lane) { return (lane & 7) + 8 * (lane >> 4); }
__host__ __device__ inline int moe_ldm_b_k(int lane) { return 8 * ((lane >> 3) & 1); }

// One m16n8k16 tensor-core product, bfloat16 in, float32 accumulated in place. a: the 16x16 A fragment (rows
// g, g+8; k 2t.., 2t+8..), b: the 16x8 B fragment (k 2t.., 2t+8..; column g), c: rows g, g+8 x columns 2t, 2t+1.
__device__ inline void moe_mma(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                               uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// ---- the expert kernels' launchers (moe.cu calls them once per step) -------------------------------------------
// Each covers every tile of the list; `up` selects step 1 (gate/up and SwiGLU into h) or step 2 (down into ys).
// max_tiles bounds the list (the grid's size; tiles past *n_tiles exit at once).
constexpr int kMoeGemvTokens = 8;   // decode path: tokens per n8 tile
constexpr int kMoeGemmTokens = 128; // prefill path: positions per tile
constexpr int kMoeSimtTokens = 4;   // fallback: positions per tile
void moe_gemv_launch(const MoePhase& a, bool up, int nt, int max_tiles, cudaStream_t stream);
void moe_gemm_launch(const MoePhase& a, bool up, int max_tiles, cudaStream_t stream);
void moe_simt_launch(const MoePhase& a, bool up, bool x_bf16, int max_tiles, cudaStream_t stream);

}  // namespace v4cli::cuda
