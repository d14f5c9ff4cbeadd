// The SIMD pieces of the FP8/FP4 linears (linear.cpp): decoding a 64-input group of a weight row into float32
// vectors, the multiply-accumulate over input rows, and the input rounding. One build uses one of three paths,
// chosen by the compiler's target flags (-march=native): AVX-512 (F + BW), AVX2 (+ FMA, F16C), or a portable one
// (GCC/Clang vector extensions, any CPU). No torch dependency beyond c10's header-only e4m3 type.
//
// Buffer order: a group's decoded values come out as kVecs vectors of kLanes whose order inside the group is the
// format's and the path's own (`perm`: vector position -> input); the input is permuted the same way once per call.
// Every output sums its products lane by lane in that order along K, so the order depends on K and the build only.
#pragma once

#include <c10/util/Float8_e4m3fn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define V4_SIMD_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define V4_SIMD_AVX2 1
#include <immintrin.h>
#endif

namespace v4cli::simd {

constexpr int64_t kFp8Tile = 128;  // FP8 scales cover 128x128 tiles
constexpr int64_t kFp4Block = 32;  // FP4 scales cover 32 inputs of one row
constexpr int64_t kActBlock = 128; // the input rounding's block along K
constexpr float kFp8Max = 448.f;
constexpr int64_t kGroup = 64;     // inputs decoded at a time; K is padded with zeros to a multiple of it
constexpr int64_t kTileRows = 4;   // rows of W a step covers (the buffered path loads an input vector once for all)

#if defined(V4_SIMD_AVX512)
using Vec = __m512;
constexpr int64_t kLanes = 16;
constexpr int kRowBlock = 6;   // buffered: 6 input rows x 4 rows of W accumulators + 4 weights + 1 input
constexpr int kFusedRows = 6;  // fused: 6 input rows x 2 accumulators + 4 weights + 1 input + tables
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
// An input vector is loaded once into a register and used by all the FMAs that need it (not folded into each as
// a memory operand: a load per FMA halves the buffered path's multiply rate, measured on Zen 4).
inline Vec vreg(Vec v) {
  __asm__("" : "+v"(v));
  return v;
}
#elif defined(V4_SIMD_AVX2)
using Vec = __m256;
constexpr int64_t kLanes = 8;
constexpr int kRowBlock = 2;   // buffered: 2 x 4 accumulators + 4 weights + 1 input of 16 registers
constexpr int kFusedRows = 2;  // fused: 2 x 2 accumulators + 8 weights (a group) + 1 input + tables
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec vreg(Vec v) {
  __asm__("" : "+x"(v));
  return v;
}
#else
#pragma GCC diagnostic ignored "-Wpsabi"  // a 64-byte vector passed by value: inline code, no ABI crosses here
constexpr int64_t kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
constexpr int kRowBlock = 1;   // one row at a time: the same code, so the same rounding, for every row
constexpr int kFusedRows = 0;  // through the buffer only
inline Vec vzero() { return Vec{}; }
inline Vec vload(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void vstore(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return a * b + c; }
inline Vec vreg(Vec v) { return v; }
#endif
constexpr int64_t kVecs = kGroup / kLanes;  // vectors per group
// Accumulators per output: the j-th vector along K adds into accumulator j % kAccs (independent FMA chains for a
// single row of W); at the end they are added in a fixed tree, then the lanes.
constexpr int kAccs = 2;
static_assert(kGroup % (kAccs * kLanes) == 0, "a group holds whole rounds of the accumulators");

// ---- scalar reference decodes ----------------------------------------------------------------------------------

inline float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// UE8M0: 2^(b - 127); 255 is NaN as in torch.float8_e8m0fnu; 0 is the subnormal 2^-127.
inline float e8m0(uint8_t b) {
  if (b == 255) return NAN;
  return b ? from_bits(uint32_t(b) << 23) : 0x1p-127f;
}

// e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is subnormal (m * 2^-9);
// 0x7F and 0xFF are NaN (a corrupt weight must not pass as 480). A subnormal code is decoded as the normal
// code one exponent up with the same mantissa, minus that exponent's implicit one.
inline float e4m3(uint8_t b) {
  const uint32_t em = b & 0x7F;
  const uint32_t sub = (em & 0x78) == 0;
  const uint32_t nan = (em == 0x7F) * 0x7FC00000u;
  const float v = from_bits(((em | (sub << 3)) << 20) + (120u << 23)) - from_bits(sub * to_bits(0x1p-6f));
  return from_bits(to_bits(v) | nan | (uint32_t(b & 0x80) << 24));
}

// e2m1 nibble: sign in bit 3, 2 exponent bits (bias 1), 1 mantissa bit; exponent 0 is subnormal (m * 0.5).
// Integer operations and one exact subtraction, no branches or table, so that a loop of them vectorizes.
inline float e2m1(uint32_t c) {
  const uint32_t em = c & 7;
  const uint32_t sub = (em & 6) == 0;
  const float v = from_bits(((em | (sub << 1)) << 22) + (126u << 23)) - from_bits(sub * to_bits(1.0f));
  return from_bits(to_bits(v) | ((c & 8) << 28));
}

// The same 16 values: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives.
alignas(64) inline constexpr float kE2m1[16] = {0.f,  .5f,  1.f,  1.5f,  2.f,  3.f,  4.f,  6.f,
                                                -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};

struct Tables {
  float e8m0[256];  // 2^(b-127), NaN for 255
  Tables() {
    for (int b = 0; b < 256; ++b) e8m0[b] = simd::e8m0(uint8_t(b));
  }
};
inline const Tables kTables;

// ---- the input rounding ----------------------------------------------------------------------------------------

// 2^ceil(log2(v)) for v > 0, exactly (frexp, not a rounded log2): the reference's UE8M0 scale.
inline float pow2_ceil(float v) {
  int e;
  const float mant = std::frexp(v, &e);  // v = mant * 2^e, mant in [0.5, 1)
  return std::ldexp(1.f, mant == 0.5f ? e - 1 : e);
}

#if defined(V4_SIMD_AVX512)
// c10's float -> e4m3fn -> float for v in [-448, 448] or NaN (the input rounding clamps first), bit for bit:
// round to nearest even on 3 mantissa bits in the normal range, on multiples of 2^-9 below 2^-6.
inline __m512 round_e4m3(__m512 v) {
  const __m512i u = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFFFFFF));
  const __m512i sign = _mm512_xor_si512(_mm512_castps_si512(v), u);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 20), _mm512_set1_epi32(1));
  __m512i r = _mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFFF)), odd),
                               _mm512_set1_epi32(int(0xFFF00000u)));
  const __m512 a = _mm512_castsi512_ps(u), magic = _mm512_set1_ps(16384.f);
  const __m512 small = _mm512_sub_ps(_mm512_add_ps(a, magic), magic);
  r = _mm512_mask_mov_epi32(r, _mm512_cmplt_epi32_mask(u, _mm512_set1_epi32(121 << 23)), _mm512_castps_si512(small));
  r = _mm512_mask_mov_epi32(r, _mm512_cmpgt_epi32_mask(u, _mm512_set1_epi32(0x7F800000)),
                            _mm512_set1_epi32(0x7FC00000));
  return _mm512_castsi512_ps(_mm512_or_si512(r, sign));
}
#elif defined(V4_SIMD_AVX2)
inline __m256 round_e4m3(__m256 v) {
  const __m256i u = _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i sign = _mm256_xor_si256(_mm256_castps_si256(v), u);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 20), _mm256_set1_epi32(1));
  __m256i r = _mm256_and_si256(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFFF)), odd),
                               _mm256_set1_epi32(int(0xFFF00000u)));
  const __m256 a = _mm256_castsi256_ps(u), magic = _mm256_set1_ps(16384.f);
  const __m256i small = _mm256_castps_si256(_mm256_sub_ps(_mm256_add_ps(a, magic), magic));
  r = _mm256_blendv_epi8(r, small, _mm256_cmpgt_epi32(_mm256_set1_epi32(121 << 23), u));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC00000), _mm256_cmpgt_epi32(u, _mm256_set1_epi32(0x7F800000)));
  return _mm256_castsi256_ps(_mm256_or_si256(r, sign));
}
#endif

// The reference's rounding of an FP8 GEMM input, one 1x128 block along K (or the shorter block at the end):
// scaled by 2^ceil(log2(max(amax, 1e-4) / 448)), rounded to e4m3 (nearest even, saturating), scaled back.
// The SIMD lanes compute exactly what the scalar tail does (max/min keep a NaN where std::max/min do).
inline void act_quant_block(const float* xb, float* ob, int64_t len) {
  float amax = 0.f;
  int64_t j = 0;
#if defined(V4_SIMD_AVX512)
  __m512 vmax = _mm512_setzero_ps();
  for (; j + 16 <= len; j += 16) vmax = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb + j)), vmax);
  amax = _mm512_reduce_max_ps(vmax);
#elif defined(V4_SIMD_AVX2)
  __m256 vmax = _mm256_setzero_ps();
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (; j + 8 <= len; j += 8) vmax = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(xb + j), absmask), vmax);
  alignas(32) float t[8];
  _mm256_store_ps(t, vmax);
  for (float v : t) amax = std::max(amax, v);
#endif
  for (; j < len; ++j) amax = std::max(amax, std::abs(xb[j]));
  const float s = pow2_ceil(std::max(amax, 1e-4f) / kFp8Max);
  j = 0;
#if defined(V4_SIMD_AVX512)
  const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(-kFp8Max), hi = _mm512_set1_ps(kFp8Max);
  for (; j + 16 <= len; j += 16) {
    const __m512 v = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_div_ps(_mm512_loadu_ps(xb + j), vs)));
    _mm512_storeu_ps(ob + j, _mm512_mul_ps(round_e4m3(v), vs));
  }
#elif defined(V4_SIMD_AVX2)
  const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(-kFp8Max), hi = _mm256_set1_ps(kFp8Max);
  for (; j + 8 <= len; j += 8) {
    const __m256 v = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_div_ps(_mm256_loadu_ps(xb + j), vs)));
    _mm256_storeu_ps(ob + j, _mm256_mul_ps(round_e4m3(v), vs));
  }
#endif
  for (; j < len; ++j) {
    const float v = std::min(std::max(xb[j] / s, -kFp8Max), kFp8Max);
    ob[j] = static_cast<float>(c10::Float8_e4m3fn(v)) * s;
  }
}

inline void act_quant_row(const float* x, float* out, int64_t k) {
  for (int64_t k0 = 0; k0 < k; k0 += kActBlock) act_quant_block(x + k0, out + k0, std::min(kActBlock, k - k0));
}

// ---- the formats -----------------------------------------------------------------------------------------------
//
// Each gives `row(n)`, the pointers of row n of W; `group`, for group g (an input index, a multiple of kGroup),
// the group's bytes (a zero-padded copy in `tmp` for a last group that ends past K, so nothing past the row is
// read) and scale bytes; `special`, whether the group needs the scalar decode; `decode`, the group as kVecs
// vectors; `exact`, the scalar decode of a group in buffer order; `perm`, that order.
//
// FP8 scales cover 128 rows, so the decoded weights are the bare e4m3 values (or e4m3 / 256) and the input takes
// the scale instead (`scale_input`, once per 128 rows of W, per 128 inputs). A product (x * 2^(s-127)) * e4m3 is
// the same real number as the twin's x * (e4m3 * 2^(s-127)), so it rounds the same, as long as x * 2^(s-127)
// neither overflows nor underflows: for scales outside [2^-63, 2^64] (never in a real checkpoint) a call decodes
// e4m3 * 2^(s-127) with the scalar code throughout instead and leaves the input as it is (`exact_all`).

#if defined(V4_SIMD_AVX512) && defined(__AVX512VBMI__)
#define V4_SIMD_FP8_TABLE 1
// e4m3 magnitude (7 bits) -> bfloat16 (exact: 3 mantissa bits), high and low bytes, NaN for 0x7F; vpermi2b looks
// up 64 bytes at once in each 128-byte table.
struct Bf16Tables {
  alignas(64) uint8_t hi[128], lo[128];
  Bf16Tables() {
    for (int b = 0; b < 128; ++b) {
      const uint32_t bits = to_bits(e4m3(uint8_t(b)));
      hi[b] = uint8_t(bits >> 24);
      lo[b] = uint8_t(bits >> 16);
    }
  }
};
inline const Bf16Tables kBf16;
#endif

inline bool fp8_scales_exact_only(const uint8_t* s, int64_t count) {
  return std::any_of(s, s + count, [](uint8_t b) { return b != 255 && (b < 127 - 63 || b > 127 + 64); });
}

struct Fp8 {
  const uint8_t* w;
  const uint8_t* s;
  int64_t k, tiles;
  bool exact_all;  // fp8_scales_exact_only
  static constexpr bool kScalesInput = true;
#if defined(V4_SIMD_FP8_TABLE) || !(defined(V4_SIMD_AVX512) || defined(V4_SIMD_AVX2))
  static constexpr float kDecoded = 1.f;  // decode() yields e4m3 itself
#else
  static constexpr float kDecoded = 0x1p-8f;  // decode() yields e4m3 / 256 (the half-precision route)
#endif

  struct Row {
    const uint8_t* w;
    const uint8_t* s;
  };
  Row row(int64_t n) const { return {w + n * k, s + (n / kFp8Tile) * tiles}; }

  void group(const Row& r, int64_t g, const uint8_t*& src, uint8_t& s0, uint8_t& s1, uint8_t* tmp) const {
    src = r.w + g;
    if (g + kGroup > k) [[unlikely]] {
      std::memset(tmp, 0, kGroup);
      std::memcpy(tmp, src, k - g);
      src = tmp;
    }
    s0 = r.s[uint64_t(g) / kFp8Tile];
    s1 = 0;
  }

  // The input's factor for a scale byte: 2^(s-127) over what decode() yields, or 1 when exact_all.
  float input_factor(uint8_t b) const { return exact_all ? 1.f : kTables.e8m0[b] / kDecoded; }

  // xs [m_rows][kp] = xq times the input factors of the scale row of W's row n.
  void scale_input(int64_t n, const float* xq, float* xs, int64_t m_rows, int64_t kp) const {
    const uint8_t* srow = s + (n / kFp8Tile) * tiles;
    for (int64_t m = 0; m < m_rows; ++m)
      for (int64_t t = 0; t * kFp8Tile < kp; ++t) {
        const float f = input_factor(srow[std::min(t, tiles - 1)]);
        const int64_t j0 = m * kp + t * kFp8Tile, j1 = m * kp + std::min(kp, (t + 1) * kFp8Tile);
        for (int64_t j = j0; j < j1; ++j) xs[j] = xq[j] * f;  // the padding past K stays zero
      }
  }

  // What a decoded value is multiplied by to be the weight itself (exact).
  float weight_factor(const Row& r, int64_t i) const { return exact_all ? 1.f : input_factor(r.s[i / kFp8Tile]); }

  static void perm(int* p) {
#if defined(V4_SIMD_FP8_TABLE)
    // vector q: bytes 4q..4q+3 of each 128-bit lane (two unpacks of the looked-up bytes)
    for (int q = 0; q < 4; ++q)
      for (int j = 0; j < 16; ++j) p[q * 16 + j] = (j / 4) * 16 + q * 4 + j % 4;
#elif defined(V4_SIMD_AVX512)
    // half u: 32 bytes; vector q: unpack q (bytes 0-7 or 8-15 of each 128-bit lane) of them
    for (int u = 0; u < 2; ++u)
      for (int q = 0; q < 2; ++q)
        for (int j = 0; j < 16; ++j) p[(u * 2 + q) * 16 + j] = u * 32 + (j / 8) * 16 + q * 8 + j % 8;
#elif defined(V4_SIMD_AVX2)
    // half u: 32 bytes; vector (q, c): unpack q of them, 128-bit lane c
    for (int u = 0; u < 2; ++u)
      for (int q = 0; q < 2; ++q)
        for (int c = 0; c < 2; ++c)
          for (int j = 0; j < 8; ++j) p[u * 32 + (q * 2 + c) * 8 + j] = u * 32 + c * 16 + q * 8 + j;
#else
    for (int j = 0; j < kGroup; ++j) p[j] = j;
#endif
  }

  // A group with an e4m3 NaN code takes the scalar decode (the half-precision route would pass it as 480).
  bool special(const uint8_t* src) const {
    if (exact_all) [[unlikely]]
      return true;
#if defined(V4_SIMD_FP8_TABLE)
    (void)src;
    return false;  // the table holds NaN for it
#elif defined(V4_SIMD_AVX512)
    const __m512i v = _mm512_loadu_si512(src);
    return _mm512_cmpeq_epi8_mask(_mm512_or_si512(v, _mm512_set1_epi8(char(0x80))), _mm512_set1_epi8(char(0xFF)));
#elif defined(V4_SIMD_AVX2)
    const __m256i c80 = _mm256_set1_epi8(char(0x80)), cff = _mm256_set1_epi8(char(0xFF));
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32));
    return _mm256_movemask_epi8(_mm256_or_si256(_mm256_cmpeq_epi8(_mm256_or_si256(a, c80), cff),
                                                _mm256_cmpeq_epi8(_mm256_or_si256(b, c80), cff)));
#else
    (void)src;
    return false;  // the portable decode() is the scalar one, NaN included
#endif
  }

  static void decode(const uint8_t* src, uint8_t, uint8_t, Vec* out) {
#if defined(V4_SIMD_FP8_TABLE)
    // bfloat16 high and low bytes by table (sign copied in from the byte), placed in the top half of 32-bit lanes
    const __m512i v = _mm512_loadu_si512(src), z = _mm512_setzero_si512();
    const __m512i hi0 = _mm512_load_si512(kBf16.hi), hi1 = _mm512_load_si512(kBf16.hi + 64);
    const __m512i lo0 = _mm512_load_si512(kBf16.lo), lo1 = _mm512_load_si512(kBf16.lo + 64);
    const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(hi0, v, hi1), v,
                                                 _mm512_set1_epi8(char(0x80)), 0xD8);  // C ? B : A
    const __m512i lo = _mm512_permutex2var_epi8(lo0, v, lo1);
    const __m512i w0 = _mm512_unpacklo_epi8(lo, hi), w1 = _mm512_unpackhi_epi8(lo, hi);
    out[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, w0));
    out[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, w0));
    out[2] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, w1));
    out[3] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, w1));
#elif defined(V4_SIMD_AVX512)
    // An e4m3 byte in the high half of a 16-bit lane, shifted right one place (the sign copied into bit 14, then
    // cleared), is the half-precision value of e4m3 / 256, subnormals included.
    const __m256i z = _mm256_setzero_si256(), mask = _mm256_set1_epi16(int16_t(0xBFFF));
    for (int u = 0; u < 2; ++u) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32 * u));
      out[2 * u] = _mm512_cvtph_ps(_mm256_and_si256(_mm256_srai_epi16(_mm256_unpacklo_epi8(z, v), 1), mask));
      out[2 * u + 1] = _mm512_cvtph_ps(_mm256_and_si256(_mm256_srai_epi16(_mm256_unpackhi_epi8(z, v), 1), mask));
    }
#elif defined(V4_SIMD_AVX2)
    const __m256i z = _mm256_setzero_si256(), mask = _mm256_set1_epi16(int16_t(0xBFFF));
    for (int u = 0; u < 2; ++u) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32 * u));
      for (int q = 0; q < 2; ++q) {
        const __m256i h =
            _mm256_and_si256(_mm256_srai_epi16(q ? _mm256_unpackhi_epi8(z, v) : _mm256_unpacklo_epi8(z, v), 1), mask);
        out[u * 4 + 2 * q] = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
        out[u * 4 + 2 * q + 1] = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
      }
    }
#else
    alignas(64) float t[kGroup];
    for (int j = 0; j < kGroup; ++j) t[j] = e4m3(src[j]);
    for (int j = 0; j < kVecs; ++j) out[j] = vload(t + j * kLanes);
#endif
  }

  void exact(const uint8_t* src, uint8_t s0, uint8_t, const int* p, float* dst) const {
    const float sc = exact_all ? kTables.e8m0[s0] : kDecoded;
    for (int j = 0; j < kGroup; ++j) dst[j] = e4m3(src[p[j]]) * sc;
  }
};

struct Fp4 {
  const uint8_t* w;
  const uint8_t* s;
  int64_t k;
  static constexpr bool kScalesInput = false;

  struct Row {
    const uint8_t* w;
    const uint8_t* s;
  };
  Row row(int64_t n) const { return {w + n * (k / 2), s + n * (k / kFp4Block)}; }

  void group(const Row& r, int64_t g, const uint8_t*& src, uint8_t& s0, uint8_t& s1, uint8_t* tmp) const {
    src = r.w + uint64_t(g) / 2;
    s0 = r.s[uint64_t(g) / kFp4Block];
    if (g + kGroup > k) [[unlikely]] {  // K is a multiple of 32: the group's second block is past K
      std::memset(tmp, 0, kGroup / 2);
      std::memcpy(tmp, src, (k - g) / 2);
      src = tmp;
      s1 = 127;  // zeros times 1
    } else {
      s1 = r.s[uint64_t(g) / kFp4Block + 1];
    }
  }

  void scale_input(int64_t, const float*, float*, int64_t, int64_t) const {}
  float weight_factor(const Row&, int64_t) const { return 1.f; }

  static void perm(int* p) {
#if !defined(V4_SIMD_AVX2)
    // block u: its 16 even inputs (low nibbles), then its 16 odd ones
    for (int u = 0; u < 2; ++u)
      for (int j = 0; j < 32; ++j) p[32 * u + j] = 32 * u + (j < 16 ? 2 * j : 2 * (j - 16) + 1);
#else
    // nibble q of the group's 32 bytes; vector (b, c): byte unpack b, word unpack c; lane l (= scale block l),
    // dword i
    for (int q = 0; q < 2; ++q)
      for (int b = 0; b < 2; ++b)
        for (int c = 0; c < 2; ++c)
          for (int l = 0; l < 2; ++l)
            for (int i = 0; i < 4; ++i) p[((q * 2 + b) * 2 + c) * 8 + l * 4 + i] = 2 * (l * 16 + b * 8 + c * 4 + i) + q;
#endif
  }

  static bool special(const uint8_t*) { return false; }

  static void decode(const uint8_t* src, uint8_t s0, uint8_t s1, Vec* out) {
#if defined(V4_SIMD_AVX512)
    // vpermps picks from the 16 e2m1 values times the block's scale by the low 4 bits of each 32-bit lane
    for (int u = 0; u < 2; ++u) {
      const __m512 table = _mm512_mul_ps(_mm512_load_ps(kE2m1), _mm512_set1_ps(kTables.e8m0[u ? s1 : s0]));
      const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16 * u)));
      out[2 * u] = _mm512_permutexvar_ps(d, table);
      out[2 * u + 1] = _mm512_permutexvar_ps(_mm512_srli_epi32(d, 4), table);
    }
#elif defined(V4_SIMD_AVX2)
    // pshufb looks up the high and the low byte of each nibble's bfloat16 value (sign included); two unpacks
    // place them in the top half of a 32-bit lane; each 128-bit lane holds one scale block
    const __m256i hi_t = _mm256_setr_epi8(
        0x00, 0x3F, 0x3F, 0x3F, 0x40, 0x40, 0x40, 0x40, char(0x80), char(0xBF), char(0xBF), char(0xBF), char(0xC0),
        char(0xC0), char(0xC0), char(0xC0), 0x00, 0x3F, 0x3F, 0x3F, 0x40, 0x40, 0x40, 0x40, char(0x80), char(0xBF),
        char(0xBF), char(0xBF), char(0xC0), char(0xC0), char(0xC0), char(0xC0));
    const __m256i lo_t = _mm256_setr_epi8(
        0x00, 0x00, char(0x80), char(0xC0), 0x00, 0x40, char(0x80), char(0xC0), 0x00, 0x00, char(0x80), char(0xC0),
        0x00, 0x40, char(0x80), char(0xC0), 0x00, 0x00, char(0x80), char(0xC0), 0x00, 0x40, char(0x80), char(0xC0),
        0x00, 0x00, char(0x80), char(0xC0), 0x00, 0x40, char(0x80), char(0xC0));
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    const __m256i nib = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
    const __m256 sc = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_set1_ps(kTables.e8m0[s0])),
                                           _mm_set1_ps(kTables.e8m0[s1]), 1);
    for (int q = 0; q < 2; ++q) {
      const __m256i codes = _mm256_and_si256(q ? _mm256_srli_epi16(v, 4) : v, nib);
      const __m256i hb = _mm256_shuffle_epi8(hi_t, codes), lb = _mm256_shuffle_epi8(lo_t, codes);
      for (int b = 0; b < 2; ++b) {
        const __m256i words = b ? _mm256_unpackhi_epi8(lb, hb) : _mm256_unpacklo_epi8(lb, hb);
        out[q * 4 + 2 * b] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, words)), sc);
        out[q * 4 + 2 * b + 1] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, words)), sc);
      }
    }
#else
    alignas(64) float t[kGroup];
    for (int b = 0; b < 2; ++b) {  // block b: its low nibbles (even inputs), then its high ones (odd inputs)
      const float sc = kTables.e8m0[b ? s1 : s0];
      for (int j = 0; j < 16; ++j) t[32 * b + j] = e2m1(src[16 * b + j] & 0xF) * sc;
      for (int j = 0; j < 16; ++j) t[32 * b + 16 + j] = e2m1(src[16 * b + j] >> 4) * sc;
    }
    for (int j = 0; j < kVecs; ++j) out[j] = vload(t + j * kLanes);
#endif
  }

  static void exact(const uint8_t* src, uint8_t s0, uint8_t s1, const int* p, float* dst) {
    for (int j = 0; j < kGroup; ++j) {
      const int i = p[j];
      dst[j] = kE2m1[(src[i / 2] >> (4 * (i % 2))) & 0xF] * kTables.e8m0[i < 32 ? s0 : s1];
    }
  }
};

// ---- the multiply ----------------------------------------------------------------------------------------------
//
// Few input rows: one row of W at a time, decoded into registers, so a thread reads W as one sequential stream
// (measured on Zen 4: 2 or 4 rows of W read side by side, as many streams K bytes apart, run at about 3/4 of the
// rate). More input rows: 4 rows of W decoded into an L1 buffer that every block of kRowBlock input rows reads.
// Either way each output adds its products as acc[j % kAccs] += w[j] * x[j] over the vectors j along K.

#ifndef V4_PREFETCH_AHEAD
#define V4_PREFETCH_AHEAD 2048
#endif
constexpr int64_t kAhead = V4_PREFETCH_AHEAD;  // weight bytes a row is prefetched ahead of its decode
constexpr int64_t kChunk = 512;  // inputs of a row decoded into the L1 buffer at a time (a multiple of 128)
constexpr int64_t kAccSize = kAccs * kLanes;  // floats of one output's accumulators

// A group of a row into kVecs vectors: the SIMD decode, or the scalar one of a special group.
template <typename F>
struct GroupDecode {
  const uint8_t* src;
  uint8_t s0, s1;
  bool slow;
  alignas(64) uint8_t tmp[kGroup];
  alignas(64) float ex[kGroup];
  GroupDecode(const F& f, const typename F::Row& row, int64_t g, const int* p) {
    f.group(row, g, src, s0, s1, tmp);
    __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(src) + kAhead));
    slow = f.special(src);
    if (slow) [[unlikely]]
      f.exact(src, s0, s1, p, ex);
  }
  void get(Vec* w) const {
    if (slow) [[unlikely]] {
      for (int h = 0; h < kVecs; ++h) w[h] = vload(ex + h * kLanes);
    } else {
      F::decode(src, s0, s1, w);
    }
  }
};

// Decoding into registers and multiplying there: row `row` of W times R input rows x [R][xs] over inputs [k0, k1)
// (multiples of kGroup) into acc [R][stride] (kAccSize each).
template <int R, typename F>
inline void fused_rows(const F& f, const typename F::Row& row, const int* p, const float* x, int64_t xs, int64_t k0,
                       int64_t k1, float* acc, int64_t stride) {
  Vec a[R][kAccs];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < kAccs; ++j) a[r][j] = vload(acc + r * stride + j * kLanes);
#pragma GCC unroll 2  // two groups' decodes side by side (measured on Zen 4: faster on one row of W)
  for (int64_t g = k0; g < k1; g += kGroup) {
    const GroupDecode<F> gd(f, row, g, p);
    Vec w[kVecs];
    gd.get(w);
#pragma GCC unroll 8
    for (int h = 0; h < kVecs; ++h)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
        a[r][h % kAccs] = vfma(w[h], vreg(vload(x + r * xs + g + h * kLanes)), a[r][h % kAccs]);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < kAccs; ++j) vstore(acc + r * stride + j * kLanes, a[r][j]);
}

// Inputs [k0, k0 + len) of a row into buf (len a multiple of kGroup).
template <typename F>
inline void decode_span(const F& f, const typename F::Row& row, int64_t k0, int64_t len, const int* p, float* buf) {
  for (int64_t g = k0; g < k0 + len; g += kGroup) {
    const GroupDecode<F> gd(f, row, g, p);
    Vec v[kVecs];
    gd.get(v);
    for (int h = 0; h < kVecs; ++h) vstore(buf + (g - k0) + h * kLanes, v[h]);
  }
}

// Through the buffer: acc [R][stride] += w [kTileRows][kChunk] . x [R][xs] over len inputs (a multiple of kGroup),
// accumulator j of every output in turn (they are independent), so that 4 rows of W share each input load.
template <int R>
inline void dot_rows(const float* w, const float* x, int64_t xs, int64_t len, float* acc, int64_t stride) {
  for (int j = 0; j < kAccs; ++j) {
    Vec a[R][kTileRows];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int t = 0; t < kTileRows; ++t) a[r][t] = vload(acc + r * stride + t * kAccSize + j * kLanes);
    for (int64_t i = j * kLanes; i < len; i += kAccSize) {
      Vec wv[kTileRows];
#pragma GCC unroll 4
      for (int t = 0; t < kTileRows; ++t) wv[t] = vload(w + t * kChunk + i);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const Vec xv = vreg(vload(x + r * xs + i));
#pragma GCC unroll 4
        for (int t = 0; t < kTileRows; ++t) a[r][t] = vfma(wv[t], xv, a[r][t]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int t = 0; t < kTileRows; ++t) vstore(acc + r * stride + t * kAccSize + j * kLanes, a[r][t]);
  }
}

// Blocks of up to R rows, by a switch on the last block's size.
template <int R>
inline void dot_block(int r, const float* w, const float* x, int64_t xs, int64_t len, float* acc, int64_t stride) {
  if constexpr (R > 1) {
    if (r < R) return dot_block<R - 1>(r, w, x, xs, len, acc, stride);
  }
  dot_rows<R>(w, x, xs, len, acc, stride);
}

template <int R, typename F>
inline void fused_block(int r, const F& f, const typename F::Row& row, const int* p, const float* x, int64_t xs,
                        int64_t k0, int64_t k1, float* acc, int64_t stride) {
  if constexpr (R > 1) {
    if (r < R) return fused_block<R - 1>(r, f, row, p, x, xs, k0, k1, acc, stride);
  }
  fused_rows<R>(f, row, p, x, xs, k0, k1, acc, stride);
}

// One output from its accumulators: a fixed tree over them, then over the lanes (t[i] += t[i + h] for h = kAccSize
// / 2, ..., 1). With AVX-512 or AVX2 the same adds as vector halves (a scalar tree per output made short rows of W,
// as in a narrow model's experts, cost ~50 ns a row more).
inline float acc_sum(const float* a) {
#if defined(V4_SIMD_AVX512)
  static_assert(kAccSize == 32, "two accumulators of 16 lanes");
  const __m512 v = _mm512_add_ps(_mm512_loadu_ps(a), _mm512_loadu_ps(a + 16));
  const __m256 v8 = _mm256_add_ps(_mm512_castps512_ps256(v),
                                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
#elif defined(V4_SIMD_AVX2)
  static_assert(kAccSize == 16, "two accumulators of 8 lanes");
  const __m256 v8 = _mm256_add_ps(_mm256_loadu_ps(a), _mm256_loadu_ps(a + 8));
#endif
#if defined(V4_SIMD_AVX512) || defined(V4_SIMD_AVX2)
  const __m128 v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps(v8, 1));
  const __m128 v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
  return _mm_cvtss_f32(_mm_add_ss(v2, _mm_shuffle_ps(v2, v2, 1)));
#else
  float t[kAccSize];
  std::memcpy(t, a, sizeof t);
  for (int64_t h = kAccSize / 2; h >= 1; h /= 2)
    for (int64_t i = 0; i < h; ++i) t[i] += t[i + h];
  return t[0];
#endif
}

// Up to this many input rows each row of W is decoded into registers once per block of kFusedRows input rows;
// past it, once into the L1 buffer for all of them.
constexpr int64_t kFusedMax = kFusedRows;

// Rows n[0..rows) of W times the m_rows input rows x [m_rows][kp] (permuted, zero-padded and, for FP8, scaled):
// acc [m_rows][kTileRows][kAccSize], whichever way the rows are blocked (the same products, the same order).
template <typename F>
inline void tile_times_rows(const F& f, const int64_t* n, int64_t rows, const int* p, const float* x, int64_t m_rows,
                            int64_t kp, float* acc, float* buf /* kTileRows * kChunk floats */) {
  const int64_t stride = kTileRows * kAccSize;
  std::fill(acc, acc + m_rows * stride, 0.f);
  if constexpr (kFusedRows > 0) {
    if (m_rows <= kFusedMax) {  // a whole row of W at a time: one sequential stream through W
      for (int64_t t = 0; t < rows; ++t)
        for (int64_t m0 = 0; m0 < m_rows; m0 += kFusedRows)
          fused_block<kFusedRows>(int(std::min<int64_t>(kFusedRows, m_rows - m0)), f, f.row(n[t]), p, x + m0 * kp,
                                  kp, 0, kp, acc + m0 * stride + t * kAccSize, stride);
      return;
    }
  }
  for (int64_t k0 = 0; k0 < kp; k0 += kChunk) {
    const int64_t len = std::min(kChunk, kp - k0);
    for (int64_t t = 0; t < kTileRows; ++t) {
      if (t < rows)
        decode_span(f, f.row(n[t]), k0, len, p, buf + t * kChunk);
      else
        std::fill(buf + t * kChunk, buf + t * kChunk + len, 0.f);
    }
    for (int64_t m0 = 0; m0 < m_rows; m0 += kRowBlock)
      dot_block<kRowBlock>(int(std::min<int64_t>(kRowBlock, m_rows - m0)), buf, x + m0 * kp + k0, kp, len,
                           acc + m0 * stride, stride);
  }
}

}  // namespace v4cli::simd
