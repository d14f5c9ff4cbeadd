// Dense linear layers (float32 or bfloat16 weights) whose result for an input row does not depend on the
// other rows: the output head, the mHC mixing products, the router, the float compressor projections.
// The head keeps its stored bfloat16 weight and gets float32 inputs and logits: widening is exact, so
// its logits are those of the float32 upcast product, at half the bytes read per token.
//
// torch.mm is not row-invariant on the CPU: BLAS picks a GEMV for one row and differently blocked GEMMs
// for more, so row i of an M-row product changes with M (bitwise, by an ulp or two). With the model's
// FP8 rounding on, an ulp in one row flips a rounding and cascades into another token, so a request in a
// batch would not generate what it generates alone. Here every output y[m, n] is one dot product of
// x[m] and W[n] summed in one fixed order (L lanes, each lane k = j, j+L, ... in turn with FMAs, then a
// fixed tree over the lanes; L = 16, or 8 with AVX2; with a bfloat16 W and float32 x on AVX2/AVX-512 the
// lanes take the even and then the odd inputs of each block of 2L), whatever M, the tile the output falls
// in, or the thread that runs it. Register tiles of 4 input rows x 4 weight rows (2 x 4 with AVX2) read W
// once for every tile of input rows (once for a decode batch that fits one, from cache after that).

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../ops.h"
#include "parallel.h"

namespace v4cli {
namespace {

// One accumulator vector per output: 16 lanes with AVX-512 (and the portable build), 8 with AVX2, where a
// 16-lane vector would be split in two and its tile would not fit the 16 registers.
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#define V4_DENSE_AVX2 1
constexpr int64_t kLanes = 8;
constexpr int kTileRows = 2;     // 2 input rows x 4 weight rows: 8 accumulators + 2 inputs + 4 weights
#else
constexpr int64_t kLanes = 16;
constexpr int kTileRows = 4;     // input rows per register tile
#endif
constexpr int kTileCols = 4;     // weight rows (outputs) per register tile
#if defined(V4_DENSE_AVX2)
constexpr int kSingleRowCols = 8;  // one input row (decode): 8 weight rows at a time, more loads in flight
#elif defined(__AVX512F__)
constexpr int kSingleRowCols = 1;  // measured on Zen 4: one weight row at a time streams the head ~1.5x faster than 4
#else
constexpr int kSingleRowCols = kTileCols;
#endif
constexpr int64_t kBlockRows = 64;  // input rows per task (their x stays in L2 across the task's weight rows)
constexpr int64_t kBlockCols = 64;  // weight rows per task

typedef float vec16 __attribute__((vector_size(64)));
typedef float vec8 __attribute__((vector_size(32)));
typedef float vec4 __attribute__((vector_size(16)));
typedef float vecN __attribute__((vector_size(kLanes * 4)));
typedef uint16_t u16xN __attribute__((vector_size(kLanes * 2)));
typedef uint32_t u32xN __attribute__((vector_size(kLanes * 4)));

inline vecN load(const float* p) {
  vecN v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// bfloat16 -> float32 is exact: the 16 bits are the float's upper half.
inline vecN load(const uint16_t* p) {
#if defined(V4_DENSE_AVX2)
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return (vecN)_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#else
  u16xN h;
  std::memcpy(&h, p, sizeof h);
  const u32xN w = __builtin_convertvector(h, u32xN) << 16;
  vecN v;
  std::memcpy(&v, &w, sizeof v);
  return v;
#endif
}

// The last len < kLanes values, zero beyond: their lanes then add fma(0, 0, acc) = acc.
inline vecN load_tail(const float* p, int64_t len) {
#if defined(__AVX512F__)
  return (vecN)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << len) - 1), p);
#else
  float buf[kLanes] = {};
  for (int64_t i = 0; i < len; ++i) buf[i] = p[i];
  return load(buf);
#endif
}

inline vecN load_tail(const uint16_t* p, int64_t len) {
  uint16_t buf[kLanes] = {};
  for (int64_t i = 0; i < len; ++i) buf[i] = p[i];
  return load(buf);
}

// acc + a * b with one rounding, written out on AVX-512 and AVX2 so no compiler choice can change the result;
// elsewhere the compiler contracts it to an FMA where the target has one (GCC's default for C++).
inline vecN fmadd(vecN a, vecN b, vecN acc) {
#if defined(__AVX512F__)
  return (vecN)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
#elif defined(V4_DENSE_AVX2)
  return (vecN)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)acc);
#else
  return a * b + acc;
#endif
}

// A loaded vector kept in a register: GCC otherwise folds the load into each FMA that uses it, and a
// 4x4 tile then issues 20 loads for its 16 FMAs instead of 8.
template <typename V>
inline V in_register(V v) {
#if (defined(__AVX512F__) || defined(V4_DENSE_AVX2)) && defined(__GNUC__)
  asm("" : "+x"(v));
#endif
  return v;
}

// Lanes summed in a fixed tree: l + (l+8) (16 lanes), then + (l+4), + (l+2), + (l+1), as vector halves.
inline float hsum4(vec4 c) { return (c[0] + c[2]) + (c[1] + c[3]); }
inline float hsum(vec8 a) {
  vec4 c, d;
  std::memcpy(&c, &a, sizeof c);
  std::memcpy(&d, reinterpret_cast<const char*>(&a) + sizeof c, sizeof d);
  return hsum4(c + d);
}
inline float hsum(vec16 v) {
  vec8 a, b;
  std::memcpy(&a, &v, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof a, sizeof b);
  return hsum(a + b);
}

inline void widen_rows(const float*, int64_t, float*) {}
inline void widen_rows(const uint16_t* w, int64_t len, float* out) {
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    const vecN v = load(w + i);
    std::memcpy(out + i, &v, sizeof v);
  }
  for (; i < len; ++i) out[i] = c10::BFloat16(w[i], c10::BFloat16::from_bits());
}

inline void store(float* p, float v) { *p = v; }
inline void store(uint16_t* p, float v) { *p = c10::BFloat16(v).x; }  // round to nearest even, as torch

// y[r, c] = x[r] . w[c] for RM input rows and RN weight rows (strides ldx, ldw, ldy).
template <int RM, int RN, typename TW, typename TY>
void tile(const float* x, int64_t ldx, const TW* w, int64_t ldw, int64_t k, TY* y, int64_t ldy) {
  vecN acc[RM][RN];
  for (int r = 0; r < RM; ++r)
    for (int c = 0; c < RN; ++c) acc[r][c] = vecN{};
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    vecN xv[RM], wv[RN];
    for (int r = 0; r < RM; ++r) xv[r] = in_register(load(x + r * ldx + i));
    for (int c = 0; c < RN; ++c) wv[c] = in_register(load(w + c * ldw + i));
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) acc[r][c] = fmadd(xv[r], wv[c], acc[r][c]);
  }
  if (i < k) {
    vecN xv[RM], wv[RN];
    for (int r = 0; r < RM; ++r) xv[r] = load_tail(x + r * ldx + i, k - i);
    for (int c = 0; c < RN; ++c) wv[c] = load_tail(w + c * ldw + i, k - i);
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) acc[r][c] = fmadd(xv[r], wv[c], acc[r][c]);
  }
  for (int r = 0; r < RM; ++r)
    for (int c = 0; c < RN; ++c) store(y + r * ldy + c, hsum(acc[r][c]));
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
constexpr int64_t kPairs = 2 * kLanes;  // bfloat16 inputs per vdpbf16ps: a pair per float32 lane

// The same tile for bfloat16 x and W with vdpbf16ps: lane j adds x[k]w[k] + x[k+1]w[k+1] for k = 2j,
// 2j+32, ... in turn (products exact, float32 sums), at twice the float32 FMA rate.
template <int RM, int RN>
void tile(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t ldw, int64_t k, uint16_t* y, int64_t ldy) {
  __m512 acc[RM][RN];
  for (int r = 0; r < RM; ++r)
    for (int c = 0; c < RN; ++c) acc[r][c] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + kPairs <= k; i += kPairs) {
    __m512i xv[RM], wv[RN];
    for (int r = 0; r < RM; ++r) xv[r] = in_register(_mm512_loadu_si512(x + r * ldx + i));
    for (int c = 0; c < RN; ++c) wv[c] = in_register(_mm512_loadu_si512(w + c * ldw + i));
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)xv[r], (__m512bh)wv[c]);
  }
  if (i < k) {  // zeros past the end add nothing
    const __mmask32 mask = static_cast<__mmask32>((1ull << (k - i)) - 1);
    __m512i xv[RM], wv[RN];
    for (int r = 0; r < RM; ++r) xv[r] = _mm512_maskz_loadu_epi16(mask, x + r * ldx + i);
    for (int c = 0; c < RN; ++c) wv[c] = _mm512_maskz_loadu_epi16(mask, w + c * ldw + i);
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)xv[r], (__m512bh)wv[c]);
  }
  for (int r = 0; r < RM; ++r)
    for (int c = 0; c < RN; ++c) store(y + r * ldy + c, hsum((vec16)acc[r][c]));
}
#endif

#if defined(__AVX512F__) || defined(V4_DENSE_AVX2)
#define V4_DENSE_SPLIT 1
constexpr int64_t kPairBlock = 2 * kLanes;  // bfloat16 weights per vector load: kLanes even and kLanes odd ones

// float32 x with bfloat16 W widens W without a shuffle: a 32-bit lane holding the pair (w[2j], w[2j+1]) gives
// w[2j] by a shift and w[2j+1] by a mask, two cheap ops for 2 kLanes weights (vpmovzxwd per kLanes made the head
// compute-bound, at a fifth of the bandwidth with AVX2 and half of it with AVX-512). The input comes split the
// same way (`split_pairs`), and each output adds its even then its odd products lane by lane, block by block:
// the order of the float32 tile over the split input and weights (`widen_split`), so both give the same sums.
template <int RM, int RN, typename TY>
void tile(const float* x, int64_t ldx, const uint16_t* w, int64_t ldw, int64_t k, TY* y, int64_t ldy) {
  const u32xN high = u32xN{} + 0xFFFF0000u;
  vecN acc[RM][RN];
  for (int r = 0; r < RM; ++r)
    for (int c = 0; c < RN; ++c) acc[r][c] = vecN{};
  auto step = [&](const u32xN* wv, int64_t i) {
    vecN xe[RM], xo[RM];
    for (int r = 0; r < RM; ++r) {
      xe[r] = in_register(load(x + r * ldx + i));
      xo[r] = in_register(load(x + r * ldx + i + kLanes));
    }
    for (int c = 0; c < RN; ++c) {
      const vecN we = (vecN)(wv[c] << 16), wo = (vecN)(wv[c] & high);
      for (int r = 0; r < RM; ++r) acc[r][c] = fmadd(xo[r], wo, fmadd(xe[r], we, acc[r][c]));
    }
  };
  int64_t i = 0;
  for (; i + kPairBlock <= k; i += kPairBlock) {
    u32xN wv[RN];
    for (int c = 0; c < RN; ++c) std::memcpy(&wv[c], w + c * ldw + i, sizeof wv[c]);
    step(wv, i);
  }
  if (i < k) {  // zeros past the end (in the weights here, in the split input) add nothing
    u32xN wv[RN];
    for (int c = 0; c < RN; ++c) {
      uint16_t buf[kPairBlock] = {};
      std::memcpy(buf, w + c * ldw + i, (k - i) * sizeof(uint16_t));
      std::memcpy(&wv[c], buf, sizeof wv[c]);
    }
    step(wv, i);
  }
  for (int r = 0; r < RM; ++r)
    for (int c = 0; c < RN; ++c) store(y + r * ldy + c, hsum(acc[r][c]));
}

// The position of input i of a row in the split order: blocks of kPairBlock, kLanes even inputs, then the odd.
inline int64_t split_at(int64_t i) {
  const int64_t b = i / kPairBlock * kPairBlock, j = i - b;
  return b + (j % 2) * kLanes + j / 2;
}

// Rows of x [m, k] in the split order, zeros to a whole block; *ld is the padded row length.
std::vector<float> split_pairs(const float* x, int64_t m_rows, int64_t k, int64_t* ld) {
  *ld = (k + kPairBlock - 1) / kPairBlock * kPairBlock;
  std::vector<float> out(m_rows * *ld, 0.f);
  for (int64_t m = 0; m < m_rows; ++m)
    for (int64_t i = 0; i < k; ++i) out[m * *ld + split_at(i)] = x[m * k + i];
  return out;
}

// rn rows of bfloat16 W widened to float32 in the split order (rows of ld, zeros past k): the float32 tile over
// them and the split input sums exactly as the bfloat16 tile above.
void widen_split(const uint16_t* w, int rn, int64_t k, int64_t ld, float* out) {
  std::fill(out, out + rn * ld, 0.f);
  for (int r = 0; r < rn; ++r)
    for (int64_t i = 0; i < k; ++i) out[r * ld + split_at(i)] = c10::BFloat16(w[r * k + i], c10::BFloat16::from_bits());
}
#endif

template <int RM, typename TX, typename TW, typename TY>
void tile_cols(int rn, const TX* x, int64_t ldx, const TW* w, int64_t ldw, int64_t k, TY* y, int64_t ldy) {
  if constexpr (kSingleRowCols > kTileCols && RM == 1) {
    if (rn == kSingleRowCols) return tile<1, kSingleRowCols>(x, ldx, w, ldw, k, y, ldy);
    if (rn > kTileCols) {
      tile<1, kTileCols>(x, ldx, w, ldw, k, y, ldy);
      return tile_cols<1>(rn - kTileCols, x, ldx, w + kTileCols * ldw, ldw, k, y + kTileCols, ldy);
    }
  }
  switch (rn) {
    case 4: return tile<RM, 4>(x, ldx, w, ldw, k, y, ldy);
    case 3: return tile<RM, 3>(x, ldx, w, ldw, k, y, ldy);
    case 2: return tile<RM, 2>(x, ldx, w, ldw, k, y, ldy);
    default: return tile<RM, 1>(x, ldx, w, ldw, k, y, ldy);
  }
}

template <typename TX, typename TW, typename TY>
void any_tile(int rm, int rn, const TX* x, int64_t ldx, const TW* w, int64_t ldw, int64_t k, TY* y,
              int64_t ldy) {
  switch (rm) {
    case 4: return tile_cols<4>(rn, x, ldx, w, ldw, k, y, ldy);
    case 3: return tile_cols<3>(rn, x, ldx, w, ldw, k, y, ldy);
    case 2: return tile_cols<2>(rn, x, ldx, w, ldw, k, y, ldy);
    default: return tile_cols<1>(rn, x, ldx, w, ldw, k, y, ldy);
  }
}

// Tasks are (block of input rows, block of weight rows); which task or thread computes an output, and
// whether a bfloat16 weight is widened on the fly or first into a buffer (exact either way), changes
// nothing in how it is summed.
template <typename TX, typename T, typename TY>
void dense_rows(const TX* x, const T* w, TY* y, int64_t m_rows, int64_t n_out, int64_t k) {
  const int64_t row_blocks = (m_rows + kBlockRows - 1) / kBlockRows;
  const int64_t col_blocks = (n_out + kBlockCols - 1) / kBlockCols;
  // Enough tasks per thread that a task is worth its scheduling: ~32K multiply-adds at the least.
  const int64_t task = kBlockCols * k * std::min(m_rows, kBlockRows);
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(1, task));
  // bfloat16 weights serving several row tiles are widened once per weight tile, not once per row tile.
  // (Not with vdpbf16ps, which reads bfloat16 as it is, nor with AVX2, whose tile widens for free.)
  constexpr bool split_w = std::is_same<TX, float>::value && std::is_same<T, uint16_t>::value;
  int64_t ldx = k;
  std::vector<float> split;
#if defined(V4_DENSE_SPLIT)
  if constexpr (split_w) {
    split = split_pairs(x, m_rows, k, &ldx);
    x = split.data();
  }
#endif
#if defined(V4_DENSE_AVX2)
  constexpr bool widen_any = false;
#else
  constexpr bool widen_any = true;
#endif
  const bool widen =
      widen_any && std::is_same<TX, float>::value && !std::is_same<T, float>::value && m_rows > kTileRows;
  parallel_tasks(row_blocks * col_blocks, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> wide(widen ? kTileCols * ldx : 0);
    for (int64_t t = t0; t < t1; ++t) {
      // Weight blocks outermost: consecutive tasks share the block of input rows and stream W.
      const int64_t m0 = (t % row_blocks) * kBlockRows, n0 = (t / row_blocks) * kBlockCols;
      const int64_t m1 = std::min(m_rows, m0 + kBlockRows), n1 = std::min(n_out, n0 + kBlockCols);
      const int64_t cols = m_rows == 1 ? kSingleRowCols : kTileCols;
      for (int64_t n = n0; n < n1; n += cols) {
        const int rn = static_cast<int>(std::min<int64_t>(cols, n1 - n));
        if (widen) {
#if defined(V4_DENSE_SPLIT)
          if constexpr (split_w) widen_split(w + n * k, rn, k, ldx, wide.data());
#else
          widen_rows(w + n * k, rn * k, wide.data());
#endif
        }
        for (int64_t m = m0; m < m1; m += kTileRows) {
          const int rm = static_cast<int>(std::min<int64_t>(kTileRows, m1 - m));
          if constexpr (std::is_same<TX, float>::value) {
            if (widen) {
              any_tile(rm, rn, x + m * ldx, ldx, wide.data(), ldx, ldx, y + m * n_out + n, n_out);
              continue;
            }
          }
          any_tile(rm, rn, x + m * ldx, ldx, w + n * k, k, k, y + m * n_out + n, n_out);
        }
      }
    }
  });
}

}  // namespace

at::Tensor dense_linear_cpu(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous() &&
                  (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16),
              "dense_linear: weight must be a contiguous float32 or bfloat16 [N, K] tensor");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() &&
                  (x.scalar_type() == weight.scalar_type() || x.scalar_type() == at::kFloat),
              "dense_linear: x must be a contiguous [M, K] tensor of the weight's dtype or float32");
  const int64_t m_rows = x.size(0), k = x.size(1), n_out = weight.size(0);
  TORCH_CHECK(k == weight.size(1), "dense_linear: x has ", k, " inputs, the weight ", weight.size(1));
  at::Tensor y = at::empty({m_rows, n_out}, x.options());
  if (m_rows == 0 || n_out == 0) return y;
  if (x.scalar_type() == at::kFloat && weight.scalar_type() == at::kBFloat16) {  // the head: logits in float32
    dense_rows(x.data_ptr<float>(), static_cast<const uint16_t*>(weight.data_ptr()), y.data_ptr<float>(), m_rows,
               n_out, k);
  } else if (weight.scalar_type() == at::kFloat) {
    dense_rows(x.data_ptr<float>(), weight.data_ptr<float>(), y.data_ptr<float>(), m_rows, n_out, k);
  } else {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
    dense_rows(static_cast<const uint16_t*>(x.data_ptr()), static_cast<const uint16_t*>(weight.data_ptr()),
               static_cast<uint16_t*>(y.data_ptr()), m_rows, n_out, k);
#else
    const at::Tensor xf = x.to(at::kFloat);  // exact; the float32 tiles read float32 inputs
    dense_rows(xf.data_ptr<float>(), static_cast<const uint16_t*>(weight.data_ptr()),
               static_cast<uint16_t*>(y.data_ptr()), m_rows, n_out, k);
#endif
  }
  return y;
}

}  // namespace v4cli
