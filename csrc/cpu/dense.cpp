// Dense linear layers (float32 or bfloat16 weights) whose result for an input row does not depend on the
// other rows: the output head, the mHC mixing products, the router, the float compressor projections.
// The head keeps its stored bfloat16 weight and gets float32 inputs and logits: widening is exact, so
// its logits are those of the float32 upcast product, at half the bytes read per token.
//
// torch.mm is not row-invariant on the CPU: BLAS picks a GEMV for one row and differently blocked GEMMs
// for more, so row i of an M-row product changes with M (bitwise, by an ulp or two). With the model's
// FP8 rounding on, an ulp in one row flips a rounding and cascades into another token, so a request in a
// batch would not generate what it generates alone. Here every output y[m, n] is one dot product of
// x[m] and W[n] summed in one fixed order (16 lanes, each lane k = j, j+16, ... in turn with FMAs, then
// a fixed tree over the lanes), whatever M, the tile the output falls in, or the thread that runs it.
// Tiles of 4 input rows x 4 weight rows keep 16 accumulators in registers, so W is read once for every
// 4 input rows (once for the whole batch up to 4 rows, from cache after that).

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../ops.h"
#include "parallel.h"

namespace v4cli {
namespace {

constexpr int64_t kLanes = 16;
constexpr int kTileRows = 4;     // input rows per register tile
constexpr int kTileCols = 4;     // weight rows (outputs) per register tile
constexpr int64_t kBlockRows = 64;  // input rows per task (their x stays in L2 across the task's weight rows)
constexpr int64_t kBlockCols = 64;  // weight rows per task

typedef float vec16 __attribute__((vector_size(64)));
typedef float vec8 __attribute__((vector_size(32)));
typedef float vec4 __attribute__((vector_size(16)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

inline vec16 load(const float* p) {
  vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// bfloat16 -> float32 is exact: the 16 bits are the float's upper half.
inline vec16 load(const uint16_t* p) {
  u16x16 h;
  std::memcpy(&h, p, sizeof h);
  const u32x16 w = __builtin_convertvector(h, u32x16) << 16;
  vec16 v;
  std::memcpy(&v, &w, sizeof v);
  return v;
}

// The last len < 16 values, zero beyond: their lanes then add fma(0, 0, acc) = acc.
inline vec16 load_tail(const float* p, int64_t len) {
#if defined(__AVX512F__)
  return (vec16)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << len) - 1), p);
#else
  float buf[kLanes] = {};
  for (int64_t i = 0; i < len; ++i) buf[i] = p[i];
  return load(buf);
#endif
}

inline vec16 load_tail(const uint16_t* p, int64_t len) {
  uint16_t buf[kLanes] = {};
  for (int64_t i = 0; i < len; ++i) buf[i] = p[i];
  return load(buf);
}

// acc + a * b with one rounding, written out on AVX-512 so no compiler choice can change the result;
// elsewhere the compiler contracts it to an FMA where the target has one (GCC's default for C++).
inline vec16 fmadd(vec16 a, vec16 b, vec16 acc) {
#if defined(__AVX512F__)
  return (vec16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
#else
  return a * b + acc;
#endif
}

// A loaded vector kept in a register: GCC otherwise folds the load into each FMA that uses it, and a
// 4x4 tile then issues 20 loads for its 16 FMAs instead of 8.
template <typename V>
inline V in_register(V v) {
#if defined(__AVX512F__) && defined(__GNUC__)
  asm("" : "+v"(v));
#endif
  return v;
}

// Lanes summed in a fixed tree: l + (l+8), then + (l+4), + (l+2), + (l+1), as vector halves.
inline float hsum(vec16 v) {
  vec8 a, b;
  std::memcpy(&a, &v, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof a, sizeof b);
  a += b;
  vec4 c, d;
  std::memcpy(&c, &a, sizeof c);
  std::memcpy(&d, reinterpret_cast<const char*>(&a) + sizeof c, sizeof d);
  c += d;
  return (c[0] + c[2]) + (c[1] + c[3]);
}

inline void widen_rows(const float*, int64_t, float*) {}
inline void widen_rows(const uint16_t* w, int64_t len, float* out) {
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    const vec16 v = load(w + i);
    std::memcpy(out + i, &v, sizeof v);
  }
  for (; i < len; ++i) out[i] = c10::BFloat16(w[i], c10::BFloat16::from_bits());
}

inline void store(float* p, float v) { *p = v; }
inline void store(uint16_t* p, float v) { *p = c10::BFloat16(v).x; }  // round to nearest even, as torch

// y[r, c] = x[r] . w[c] for RM input rows and RN weight rows (strides ldx, ldw, ldy).
template <int RM, int RN, typename TW, typename TY>
void tile(const float* x, int64_t ldx, const TW* w, int64_t ldw, int64_t k, TY* y, int64_t ldy) {
  vec16 acc[RM][RN];
  for (int r = 0; r < RM; ++r)
    for (int c = 0; c < RN; ++c) acc[r][c] = vec16{};
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    vec16 xv[RM], wv[RN];
    for (int r = 0; r < RM; ++r) xv[r] = in_register(load(x + r * ldx + i));
    for (int c = 0; c < RN; ++c) wv[c] = in_register(load(w + c * ldw + i));
    for (int r = 0; r < RM; ++r)
      for (int c = 0; c < RN; ++c) acc[r][c] = fmadd(xv[r], wv[c], acc[r][c]);
  }
  if (i < k) {
    vec16 xv[RM], wv[RN];
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

template <int RM, typename TX, typename TW, typename TY>
void tile_cols(int rn, const TX* x, int64_t ldx, const TW* w, int64_t ldw, int64_t k, TY* y, int64_t ldy) {
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
  // (Not with vdpbf16ps, which reads bfloat16 as it is.)
  const bool widen = std::is_same<TX, float>::value && !std::is_same<T, float>::value && m_rows > kTileRows;
  parallel_tasks(row_blocks * col_blocks, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> wide(widen ? kTileCols * k : 0);
    for (int64_t t = t0; t < t1; ++t) {
      // Weight blocks outermost: consecutive tasks share the block of input rows and stream W.
      const int64_t m0 = (t % row_blocks) * kBlockRows, n0 = (t / row_blocks) * kBlockCols;
      const int64_t m1 = std::min(m_rows, m0 + kBlockRows), n1 = std::min(n_out, n0 + kBlockCols);
      for (int64_t n = n0; n < n1; n += kTileCols) {
        const int rn = static_cast<int>(std::min<int64_t>(kTileCols, n1 - n));
        if (widen) widen_rows(w + n * k, rn * k, wide.data());
        for (int64_t m = m0; m < m1; m += kTileRows) {
          const int rm = static_cast<int>(std::min<int64_t>(kTileRows, m1 - m));
          if constexpr (std::is_same<TX, float>::value) {
            if (widen) {
              any_tile(rm, rn, x + m * k, k, wide.data(), k, k, y + m * n_out + n, n_out);
              continue;
            }
          }
            any_tile(rm, rn, x + m * k, k, w + n * k, k, k, y + m * n_out + n, n_out);
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
