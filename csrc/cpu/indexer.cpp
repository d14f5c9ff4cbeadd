// The lightning indexer's scores on the CPU: out[s, t] = sum_h w[s,h] relu(q[s,h] . k[t]) (q [S, H, D], weights
// [S, H], keys [T, D]). The semantics are the PyTorch twin's (ops_ref.indexer_scores); only the order of float32
// summation differs. The vector pieces shared with attention.cpp are in attention_simd.h.
//
// A GEMM with lanes over keys: a task takes a block of query rows and a block of keys, packs the keys into panels
// [D][kNr] (kept for the thread's next task when it has the same keys) and, for each panel, runs register tiles
// of kIm rows of q x kNr keys over D down the block's rows of q in order, (query, head) pairs s * H + h: with
// H < kIm one tile holds several queries (H = 4: 2 queries x 4 heads), with H not a multiple of kIm a tile holds
// the end of one query and the start of the next. Each tile row is folded at once into its query's weighted sum
// over heads (heads in order; the [S, H, T] products are never stored). A block has at least kRowsPerTask
// queries and kQRowsPerTask rows of q, so few heads still share the packed keys among many rows.
//
// For bfloat16 q, as the twin's bfloat16 einsum does, each product q.k is rounded to bfloat16 before the relu,
// the weights are bfloat16 values (the wrapper rounds them) and the sum over heads is rounded to bfloat16 at the
// end; the sums in between are float32. With AVX512-BF16, bfloat16 q runs on vdpbf16ps (pairs of inputs per
// instruction, exact products); otherwise q and keys are widened to float32.
//
// Row invariance: every output element is computed by the same instructions in the same order whatever the other
// rows, where a key falls in a panel, where a query's rows of q fall in a tile, or which thread runs the task: the
// dot along D lane by lane, its rounding (bfloat16 q), the relu, the weighted sum over h = 0..H-1 in order and the
// final rounding; the order depends on D, H and the build only.
//
// Threads: parallel_tasks (parallel.h) over torch's intra-op threads, torch.set_num_threads included.

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../ops.h"
#include "attention_simd.h"
#include "parallel.h"

namespace v4cli {
namespace {

using namespace attn_simd;

#if defined(__AVX512F__)
constexpr int kIm = 8, kIn = 3;  // 8 rows of q x 3 vectors of keys: 24 accumulators + 3 loads + 1 broadcast
#else
constexpr int kIm = 6, kIn = 2;  // 12 accumulators + 2 loads + 1 broadcast of 16 registers
#endif
constexpr int64_t kNr = kIn * kL;                   // keys per panel
constexpr int64_t kPanels = (192 + kNr - 1) / kNr;  // panels per task (~192 keys)
constexpr int64_t kRowsPerTask = 8;                 // query rows per task at least,
constexpr int64_t kQRowsPerTask = 128;              // and rows of q (query rows x H) at least

// dst[c * ld + r] = rows[r][c] for kL rows of `cols` 32-bit values (a transpose, kL x kL blocks in registers).
inline void transpose_rows(const uint32_t* const* rows, int64_t cols, uint32_t* dst, int64_t ld) {
  int64_t c0 = 0;
#if defined(__AVX512F__)
  for (; c0 + 16 <= cols; c0 += 16) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(rows[i] + c0);
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
      r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
      r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
      r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
      r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    // r[4q + j], 128-bit lane L: column 4L + j of rows 4q..4q+3
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
      t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
      t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
      t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    // t[i] (i < 4): columns i, 8 + i of rows 0-3 and 4-7, t[i + 4]: columns 4 + i, 12 + i; t[i + 8], t[i + 12]:
    // the same of rows 8-15
    for (int i = 0; i < 8; ++i) {
      r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
      r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
    for (int i = 0; i < 16; ++i) _mm512_storeu_ps(reinterpret_cast<float*>(dst + (c0 + i) * ld), r[i]);  // column i
  }
#elif defined(__AVX2__) && defined(__FMA__)
  for (; c0 + 8 <= cols; c0 += 8) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(reinterpret_cast<const float*>(rows[i] + c0));
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    // r[4q + j], 128-bit lane L: column 4L + j of rows 4q..4q+3
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
      t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(reinterpret_cast<float*>(dst + (c0 + i) * ld), t[i]);
  }
#endif
  for (; c0 < cols; ++c0)
    for (int i = 0; i < kL; ++i) dst[c0 * ld + i] = rows[i][c0];
}

// Keys [t0, t0 + n) (n <= kNr) into a panel [D][kNr] of float32, zeros past n; rounded to bfloat16 with `round`
// (float32 keys for bfloat16 q). `tmp`: kNr * D floats, `zero`: D zeros.
void pack_panel(const void* keys, bool bf16, bool round, int64_t t0, int64_t n, int64_t D, float* panel, float* tmp,
                const float* zero) {
  const uint32_t* rows[kNr];
  for (int64_t j = 0; j < kNr; ++j) {
    if (j >= n) {
      rows[j] = reinterpret_cast<const uint32_t*>(zero);
    } else if (!bf16 && !round) {
      rows[j] = reinterpret_cast<const uint32_t*>(static_cast<const float*>(keys) + (t0 + j) * D);
    } else {
      float* r = tmp + j * D;
      if (bf16) {
        widen(static_cast<const uint16_t*>(keys) + (t0 + j) * D, true, D, r);
      } else {
        const float* f = static_cast<const float*>(keys) + (t0 + j) * D;
        for (int64_t d = 0; d < D; ++d) r[d] = float(c10::BFloat16(f[d]));
      }
      rows[j] = reinterpret_cast<const uint32_t*>(r);
    }
  }
  for (int64_t g = 0; g < kNr; g += kL) transpose_rows(rows + g, D, reinterpret_cast<uint32_t*>(panel) + g, kNr);
}

// out[oq[r]][n] += w[r] relu(q[r] . panel keys) for RM rows of q (stride D), in order: rows r are (query, head)
// pairs, oq[r] the query's accumulators (kIn vectors).
template <int RM>
void index_tile(const float* q, int64_t D, const float* panel, const float* w, bool bf16, vf* out, const int* oq) {
  vf acc[RM][kIn];
#pragma GCC unroll 8
  for (int r = 0; r < RM; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < kIn; ++n) acc[r][n] = vf{};
  for (int64_t d = 0; d < D; ++d) {
    vf kv[kIn];
#pragma GCC unroll 4
    for (int n = 0; n < kIn; ++n) kv[n] = load(panel + d * kNr + n * kL);
#pragma GCC unroll 8
    for (int r = 0; r < RM; ++r) {
      const vf qv = splat(q[r * D + d]);
#pragma GCC unroll 4
      for (int n = 0; n < kIn; ++n) acc[r][n] = fmadd(qv, kv[n], acc[r][n]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RM; ++r) {
    const vf wr = splat(w[r]);
#pragma GCC unroll 4
    for (int n = 0; n < kIn; ++n) {
      vf y = bf16 ? round_bf16(acc[r][n]) : acc[r][n];
      y = select(y < vf{}, vf{}, y);  // relu (a NaN stays)
      out[oq[r] * kIn + n] = fmadd(wr, y, out[oq[r] * kIn + n]);
    }
  }
}

template <int R = kIm>
void index_tiles(int rm, const float* q, int64_t D, const float* panel, const float* w, bool bf16, vf* out,
                 const int* oq) {
  if constexpr (R > 1) {
    if (rm < R) return index_tiles<R - 1>(rm, q, D, panel, w, bf16, out, oq);
  }
  index_tile<R>(q, D, panel, w, bf16, out, oq);
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#define V4_INDEX_DPBF16 1
// bfloat16 q with vdpbf16ps: a lane adds q[2i] k[2i] + q[2i+1] k[2i+1] (exact products, float32 sums) for a
// pair of inputs at a time, twice the float32 FMA's rate. Keys are packed as bfloat16 pairs [D/2][kNr] (32 bits
// per key and pair); each pair of q is one 32-bit broadcast straight from q's rows. D must be even.
void pack_panel_pairs(const void* keys, bool bf16, int64_t t0, int64_t n, int64_t D, uint32_t* panel, uint16_t* tmp,
                      const float* zero) {
  const uint32_t* rows[kNr];
  for (int64_t j = 0; j < kNr; ++j) {
    if (j >= n) {
      rows[j] = reinterpret_cast<const uint32_t*>(zero);
    } else if (bf16) {
      rows[j] = reinterpret_cast<const uint32_t*>(static_cast<const uint16_t*>(keys) + (t0 + j) * D);
    } else {  // the twin casts the keys to q's dtype
      const float* f = static_cast<const float*>(keys) + (t0 + j) * D;
      uint16_t* r = tmp + j * D;
      for (int64_t d = 0; d < D; ++d) r[d] = c10::BFloat16(f[d]).x;
      rows[j] = reinterpret_cast<const uint32_t*>(r);
    }
  }
  for (int64_t g = 0; g < kNr; g += kL) transpose_rows(rows + g, D / 2, panel + g, kNr);
}

template <int RM>
void index_tile_pairs(const uint16_t* q, int64_t D, const uint32_t* panel, const float* w, vf* out, const int* oq) {
  __m512 acc[RM][kIn];
#pragma GCC unroll 8
  for (int r = 0; r < RM; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < kIn; ++n) acc[r][n] = _mm512_setzero_ps();
  for (int64_t i = 0; i < D / 2; ++i) {
    __m512i kv[kIn];
#pragma GCC unroll 4
    for (int n = 0; n < kIn; ++n) kv[n] = _mm512_loadu_si512(panel + i * kNr + n * kL);
#pragma GCC unroll 8
    for (int r = 0; r < RM; ++r) {
      uint32_t pair;
      std::memcpy(&pair, q + r * D + 2 * i, sizeof pair);
      const __m512i qv = _mm512_set1_epi32(int(pair));
#pragma GCC unroll 4
      for (int n = 0; n < kIn; ++n) acc[r][n] = _mm512_dpbf16_ps(acc[r][n], (__m512bh)kv[n], (__m512bh)qv);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RM; ++r) {
    const vf wr = splat(w[r]);
#pragma GCC unroll 4
    for (int n = 0; n < kIn; ++n) {
      vf y = round_bf16((vf)acc[r][n]);
      y = select(y < vf{}, vf{}, y);
      out[oq[r] * kIn + n] = fmadd(wr, y, out[oq[r] * kIn + n]);
    }
  }
}

template <int R = kIm>
void index_tiles_pairs(int rm, const uint16_t* q, int64_t D, const uint32_t* panel, const float* w, vf* out,
                       const int* oq) {
  if constexpr (R > 1) {
    if (rm < R) return index_tiles_pairs<R - 1>(rm, q, D, panel, w, out, oq);
  }
  index_tile_pairs<R>(q, D, panel, w, out, oq);
}
#endif

// The output [S, T] is fresh memory, written once and all of it: [S, T] floats with few heads and many keys
// (256 MiB at S = 4096, T = 16384) spend about as long in first-touch page faults, one per 4 KiB, as in the
// arithmetic. On Linux its 2 MiB-aligned interior is asked for transparent huge pages (a hint: where THP is
// off it changes nothing), one fault per 2 MiB.
void huge_pages_for(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (bytes < 4 * kHuge) return;
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace

at::Tensor indexer_scores_cpu(const at::Tensor& q_, const at::Tensor& weights_, const at::Tensor& keys_) {
  TORCH_CHECK(q_.dim() == 3 && is_f32_or_bf16(q_), "indexer_scores: q must be a float32 or bfloat16 [S, H, D] "
              "tensor, got ", q_.scalar_type(), " of shape ", q_.sizes());
  const int64_t S = q_.size(0), H = q_.size(1), D = q_.size(2);
  TORCH_CHECK(weights_.dim() == 2 && weights_.size(0) == S && weights_.size(1) == H &&
                  weights_.scalar_type() == at::kFloat,
              "indexer_scores: weights must be a float32 [", S, ", ", H, "] tensor, got ", weights_.scalar_type(),
              " of shape ", weights_.sizes());
  TORCH_CHECK(keys_.dim() == 2 && keys_.size(1) == D && is_f32_or_bf16(keys_), "indexer_scores: keys must be a "
              "float32 or bfloat16 [T, ", D, "] tensor, got ", keys_.scalar_type(), " of shape ", keys_.sizes());
  const at::Tensor q = q_.contiguous(), weights = weights_.contiguous(), keys = keys_.contiguous();
  const int64_t T = keys.size(0);
  at::Tensor out = at::empty({S, T}, q.options().dtype(at::kFloat));
  if (S == 0 || T == 0) return out;
  if (H == 0) return out.zero_();
  const bool bf16 = q.scalar_type() == at::kBFloat16, keys_bf16 = keys.scalar_type() == at::kBFloat16;
  const bool round_keys = bf16 && !keys_bf16;  // the twin casts the keys to q's dtype
  const void* qp = q.data_ptr();
  const void* kp = keys.data_ptr();
  const float* wp = weights.data_ptr<float>();
  float* op = out.data_ptr<float>();
  huge_pages_for(op, size_t(S) * size_t(T) * sizeof(float));
  // Query rows per task: their rows x H rows of q share the task's packed keys (with few heads, more rows).
  const int64_t rows = std::max(kRowsPerTask, (kQRowsPerTask + H - 1) / H);
  const int64_t row_blocks = (S + rows - 1) / rows;
  std::vector<int> query_of(rows * H);  // a task's row j of q (rows of q in order): query j / H, head j % H
  for (int64_t j = 0; j < rows * H; ++j) query_of[j] = int(j / H);
  const int64_t key_blocks = (T + kPanels * kNr - 1) / (kPanels * kNr);
#if defined(V4_INDEX_DPBF16)
  if (bf16 && D % 2 == 0) {
    parallel_tasks(row_blocks * key_blocks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<uint32_t> panels(kPanels * (D / 2) * kNr);
      std::vector<uint16_t> tmp(keys_bf16 ? 0 : kNr * D);
      const std::vector<float> zero(D, 0.f);
      std::vector<vf> acc(rows * kIn);
      int64_t packed = -1;  // the first key of the panels as packed
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t s0 = (t % row_blocks) * rows, k0 = (t / row_blocks) * kPanels * kNr;
        const int64_t s1 = std::min(S, s0 + rows), np = std::min(kPanels, (T - k0 + kNr - 1) / kNr);
        if (k0 != packed) {  // consecutive tasks of a thread share their keys
          for (int64_t p = 0; p < np; ++p)
            pack_panel_pairs(kp, keys_bf16, k0 + p * kNr, std::min(kNr, T - k0 - p * kNr), D,
                             panels.data() + p * (D / 2) * kNr, tmp.data(), zero.data());
          packed = k0;
        }
        const uint16_t* qt = static_cast<const uint16_t*>(qp) + s0 * H * D;
        const float* wt = wp + s0 * H;
        const int64_t m = (s1 - s0) * H;
        for (int64_t p = 0; p < np; ++p) {
          const uint32_t* panel = panels.data() + p * (D / 2) * kNr;
          const int64_t kt = k0 + p * kNr, n = std::min(kNr, T - kt);
          std::fill(acc.begin(), acc.begin() + (s1 - s0) * kIn, vf{});
          for (int64_t j = 0; j < m; j += kIm)
            index_tiles_pairs(int(std::min<int64_t>(kIm, m - j)), qt + j * D, D, panel, wt + j, acc.data(),
                              query_of.data() + j);
          for (int64_t s = s0; s < s1; ++s) {
            alignas(64) float res[kNr];
            for (int i = 0; i < kIn; ++i) store(res + i * kL, round_bf16(acc[(s - s0) * kIn + i]));
            std::memcpy(op + s * T + kt, res, n * sizeof(float));
          }
        }
      }
    });
    return out;
  }
#endif
  parallel_tasks(row_blocks * key_blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> panels(kPanels * D * kNr), qf(bf16 ? rows * H * D : 0), zero(D, 0.f);
    std::vector<float> tmp(keys_bf16 || round_keys ? kNr * D : 0);
    std::vector<vf> acc(rows * kIn);
    int64_t packed = -1;  // the first key of the panels as packed
    for (int64_t t = t0; t < t1; ++t) {
      // Row blocks innermost: consecutive tasks of a thread stream the keys block by block.
      const int64_t s0 = (t % row_blocks) * rows, k0 = (t / row_blocks) * kPanels * kNr;
      const int64_t s1 = std::min(S, s0 + rows), np = std::min(kPanels, (T - k0 + kNr - 1) / kNr);
      if (k0 != packed) {
        for (int64_t p = 0; p < np; ++p)
          pack_panel(kp, keys_bf16, round_keys, k0 + p * kNr, std::min(kNr, T - k0 - p * kNr), D,
                     panels.data() + p * D * kNr, tmp.data(), zero.data());
        packed = k0;
      }
      const float* qrows = static_cast<const float*>(qp) + s0 * H * D;
      if (bf16) {
        widen(static_cast<const uint16_t*>(qp) + s0 * H * D, true, (s1 - s0) * H * D, qf.data());
        qrows = qf.data();
      }
      const float* wt = wp + s0 * H;
      const int64_t m = (s1 - s0) * H;
      for (int64_t p = 0; p < np; ++p) {
        const float* panel = panels.data() + p * D * kNr;
        const int64_t kt = k0 + p * kNr, n = std::min(kNr, T - kt);
        std::fill(acc.begin(), acc.begin() + (s1 - s0) * kIn, vf{});
        for (int64_t j = 0; j < m; j += kIm)
          index_tiles(int(std::min<int64_t>(kIm, m - j)), qrows + j * D, D, panel, wt + j, bf16, acc.data(),
                      query_of.data() + j);
        for (int64_t s = s0; s < s1; ++s) {
          alignas(64) float res[kNr];
          for (int i = 0; i < kIn; ++i) {
            const vf a = acc[(s - s0) * kIn + i];
            store(res + i * kL, bf16 ? round_bf16(a) : a);
          }
          std::memcpy(op + s * T + kt, res, n * sizeof(float));
        }
      }
    }
  });
  return out;
}


}  // namespace v4cli
