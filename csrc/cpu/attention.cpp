// Sparse attention over gathered candidates (with a per-head sink and HCA's in-place dense entries) and the
// lightning indexer's scores, on the CPU. The semantics are the PyTorch twins' (ops_ref.sparse_attention,
// ops_ref.indexer_scores); only the order of float32 summation differs (and the exp, a polynomial of ~1 ulp).
//
// sparse_attention: one task per (query row, block of heads). A row's candidates (its idx entries >= 0 in order,
// then the dense entries j < limit[s]) stream through in chunks of kChunk rows, prefetched a chunk ahead and
// read in place (float32) or widened into a buffer (bfloat16), shared by every head of the block: logits by a
// register tile of heads x candidates (each a dot product along D, lane by lane, then a fixed tree over the
// lanes), an online softmax per head (running max, started at the sink's logit, which takes probability mass
// but has no value), and the weighted sum of the candidates by a register tile of heads x vectors of D. Memory
// per task does not grow with the candidates.
//
// indexer_scores: out[s, t] = sum_h w[s,h] relu(q[s,h] . k[t]) as a GEMM with lanes over keys: a task packs a
// block of keys into panels [D][kNr] and runs, for each of its query rows and each panel, a register tile of
// kIm heads x kNr keys over D, folding each tile into the weighted sum over heads at once (the [S, H, T]
// products are never stored). For bfloat16 q, as the twin's bfloat16 einsum does, each product q.k is rounded
// to bfloat16 before the relu, the weights are bfloat16 values (the wrapper rounds them) and the sum over heads
// is rounded to bfloat16 at the end; the sums in between are float32. With AVX512-BF16, bfloat16 q runs on
// vdpbf16ps (pairs of inputs per instruction, exact products); otherwise q and keys are widened to float32.
//
// Row invariance: every output element is computed by the same instructions in the same order whatever the other
// rows, the number of heads in a task's block, where a key falls in a panel, or which thread runs the task: the
// order depends on the row's own inputs (its candidates, in order, and D) and on the build only. The exp is one
// vectorized function for every lane and row.
//
// Threads: parallel_tasks (parallel.h) over torch's intra-op threads, torch.set_num_threads included.
//
// SIMD: GCC/Clang vector extensions of kL floats (16 with AVX-512, 8 otherwise), FMAs written as intrinsics on
// AVX-512 and AVX2+FMA so no compiler choice changes a result; any other target takes the portable vector code.

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include "../ops.h"
#include "parallel.h"

namespace v4cli {
namespace {

// ---- vectors ---------------------------------------------------------------------------------------------------

#if defined(__AVX512F__)
constexpr int kL = 16;
#else
constexpr int kL = 8;
#endif
typedef float vf __attribute__((vector_size(kL * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kL * sizeof(int32_t))));
typedef uint32_t vu __attribute__((vector_size(kL * sizeof(uint32_t))));
typedef uint16_t vh __attribute__((vector_size(kL * sizeof(uint16_t))));

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// bfloat16 -> float32 is exact: the 16 bits are the float's upper half.
inline vf load_bf16(const uint16_t* p) {
  vh h;
  std::memcpy(&h, p, sizeof h);
  const vu w = __builtin_convertvector(h, vu) << 16;
  vf v;
  std::memcpy(&v, &w, sizeof v);
  return v;
}

inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float x) {
#if defined(__AVX512F__)
  return (vf)_mm512_set1_ps(x);
#elif defined(__AVX2__) && defined(__FMA__)
  return (vf)_mm256_set1_ps(x);
#else
  vf v;
  for (int i = 0; i < kL; ++i) v[i] = x;
  return v;
#endif
}

// A loaded vector kept in a register: GCC otherwise folds the load into each FMA that uses it, and a tile of
// R x C accumulators then issues R x C loads instead of R + C.
inline vf in_register(vf v) {
#if defined(__AVX512F__) && defined(__GNUC__)
  asm("" : "+v"(v));
#elif defined(__AVX2__) && defined(__GNUC__)
  asm("" : "+x"(v));
#endif
  return v;
}
inline vf as_float(vu u) {
  vf v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
inline vu as_bits(vf v) {
  vu u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

// acc + a * b with one rounding.
inline vf fmadd(vf a, vf b, vf acc) {
#if defined(__AVX512F__)
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
#elif defined(__AVX2__) && defined(__FMA__)
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)acc);
#else
  return a * b + acc;
#endif
}

// Lane-wise select by a comparison mask (all ones / all zeros per lane).
inline vf select(vi mask, vf a, vf b) {
  const vu m = (vu)mask;
  return as_float((as_bits(a) & m) | (as_bits(b) & ~m));
}

// max(a, b), a where b is NaN (a NaN logit still makes its row NaN, as in the twin: through its probability).
inline vf vmax(vf a, vf b) { return select(b > a, b, a); }

// exp(x) for the softmax (x <= 0 after the max is taken; -inf gives 0): Cephes' expf, x = n ln2 + r with
// |r| <= ln2/2 and a degree-6 polynomial, then 2^n from the exponent bits. About 1 ulp; exp(0) is exactly 1.
// Below -87 (e^-87 ~ 1.6e-38 against the max's 1) it returns 0 instead of a subnormal.
inline vf vexp(vf x) {
  const vi tiny = x < splat(-87.f);
  x = select(x > splat(88.f), splat(88.f), x);
  x = select(tiny, splat(-87.f), x);
  const vf magic = splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer (nearest even)
  const vf n = (x * splat(1.44269504088896341f) + magic) - magic;
  vf r = fmadd(n, splat(-0.693359375f), x);
  r = fmadd(n, splat(2.12194440e-4f), r);
  vf p = splat(1.9875691500e-4f);
  p = fmadd(p, r, splat(1.3981999507e-3f));
  p = fmadd(p, r, splat(8.3334519073e-3f));
  p = fmadd(p, r, splat(4.1665795894e-2f));
  p = fmadd(p, r, splat(1.6666665459e-1f));
  p = fmadd(p, r, splat(5.0000001201e-1f));
  const vf y = fmadd(p, r * r, r) + splat(1.f);
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  const vf out = y * as_float((vu)e);
  return select(tiny, vf{}, out);
}

inline float exp1(float x) { return vexp(splat(x))[0]; }

// Round to bfloat16 (nearest even, NaN kept as torch's canonical NaN), as a float32 value.
inline vf round_bf16(vf x) {
  const vu u = as_bits(x);
  const vu r = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  const vu nan = (vu)((u & 0x7FFFFFFFu) > 0x7F800000u);
  return as_float((r & ~nan) | (0x7FC00000u & nan));
}

// Lanes summed in a fixed tree: lane l + (l + kL/2), then halves again down to one.
inline float hsum(vf v) {
  float t[kL];
  std::memcpy(t, &v, sizeof t);
#pragma GCC unroll 4
  for (int h = kL / 2; h >= 1; h /= 2)
#pragma GCC unroll 8
    for (int i = 0; i < h; ++i) t[i] += t[i + h];
  return t[0];
}

inline float bf16_to_float(uint16_t b) { return c10::BFloat16(b, c10::BFloat16::from_bits()); }

// len values of a float32 or bfloat16 row as float32 (exact).
inline void widen(const void* src, bool bf16, int64_t len, float* dst) {
  if (!bf16) {
    std::memcpy(dst, src, len * sizeof(float));
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src);
  int64_t i = 0;
  for (; i + kL <= len; i += kL) store(dst + i, load_bf16(s + i));
  for (; i < len; ++i) dst[i] = bf16_to_float(s[i]);
}

bool is_f32_or_bf16(const at::Tensor& t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16; }

// ---- sparse attention ------------------------------------------------------------------------------------------

constexpr int64_t kChunk = 32;     // candidates per online-softmax step (a multiple of kL and of kQc)
constexpr int64_t kMaxHeads = 64;  // heads per task at most (their q and output rows stay in L2)
#if defined(__AVX512F__)
constexpr int kQh = 4, kQc = 4;  // logits tile: 4 heads x 4 candidates (16 accumulators + 8 loads of 32 registers)
constexpr int kPh = 4, kPv = 4;  // weighted sum tile: 4 heads x 4 vectors of D
#else
constexpr int kQh = 2, kQc = 4;  // 8 accumulators + 6 loads of 16 registers
constexpr int kPh = 2, kPv = 4;
#endif

// The lane sums of a, b, c, d in lanes 0-3, each by one fixed tree (the tile's 4 dot products at once).
inline vf sum4(vf a, vf b, vf c, vf d) {
#if defined(__AVX512F__)
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4((__m512)a, (__m512)b, 0x44),
                                  _mm512_shuffle_f32x4((__m512)a, (__m512)b, 0xEE));  // a: q0+q2, q1+q3; b: same
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4((__m512)c, (__m512)d, 0x44),
                                  _mm512_shuffle_f32x4((__m512)c, (__m512)d, 0xEE));
  const __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
  // t: 4 partial sums of a, of b, of c, of d (one 128-bit lane each); then within each 128-bit lane
  const __m512 u = _mm512_add_ps(t, _mm512_shuffle_ps(t, t, 0x4E));
  const __m512 v = _mm512_add_ps(u, _mm512_shuffle_ps(u, u, 0xB1));
  return (vf)_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), v);
#elif defined(__AVX2__) && defined(__FMA__)
  const __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps((__m256)a, (__m256)b, 0x20),
                                  _mm256_permute2f128_ps((__m256)a, (__m256)b, 0x31));  // a's 4 | b's 4
  const __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps((__m256)c, (__m256)d, 0x20),
                                  _mm256_permute2f128_ps((__m256)c, (__m256)d, 0x31));
  const __m256 t = _mm256_hadd_ps(ab, cd);  // a01 a23 c01 c23 | b01 b23 d01 d23
  const __m256 u = _mm256_hadd_ps(t, t);    // a c a c | b d b d
  return (vf)_mm256_permutevar8x32_ps(u, _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0));
#else
  vf r = vf{};
  r[0] = hsum(a);
  r[1] = hsum(b);
  r[2] = hsum(c);
  r[3] = hsum(d);
  return r;
#endif
}

// logits[r * kChunk + c] = scale * q[r] . kv[c] over dp inputs for RH heads (rows of q, stride ld) and kQc
// candidate rows.
template <int RH>
void logits_tile(const float* q, int64_t ld, const float* const* kv, int64_t dp, float scale, float* logits) {
  vf acc[RH][kQc];
#pragma GCC unroll 4
  for (int r = 0; r < RH; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < kQc; ++c) acc[r][c] = vf{};
  for (int64_t i = 0; i < dp; i += kL) {
    vf qv[RH], kvv[kQc];
#pragma GCC unroll 4
    for (int r = 0; r < RH; ++r) qv[r] = in_register(load(q + r * ld + i));
#pragma GCC unroll 4
    for (int c = 0; c < kQc; ++c) kvv[c] = in_register(load(kv[c] + i));
#pragma GCC unroll 4
    for (int r = 0; r < RH; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < kQc; ++c) acc[r][c] = fmadd(qv[r], kvv[c], acc[r][c]);
  }
  const vf sc = splat(scale);
#pragma GCC unroll 4
  for (int r = 0; r < RH; ++r) {
    alignas(64) float t[kL];
    store(t, sum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]) * sc);
    for (int c = 0; c < kQc; ++c) logits[r * kChunk + c] = t[c];
  }
}

template <int R = kQh>
void logits_tiles(int rh, const float* q, int64_t ld, const float* const* kv, int64_t dp, float scale,
                  float* logits) {
  if constexpr (R > 1) {
    if (rh < R) return logits_tiles<R - 1>(rh, q, ld, kv, dp, scale, logits);
  }
  logits_tile<R>(q, ld, kv, dp, scale, logits);
}

// o[r][d..] = o[r][d..] * alpha[r] + sum_c p[r][c] kv[c][d + ..] for RH heads and NV vectors of D from d,
// c = 0..nc-1 in order (o and p rows of strides ld and kChunk).
template <int RH, int NV>
void values_tile(float* o, int64_t ld, const float* alpha, const float* p, const float* const* kv, int64_t d,
                 int64_t nc) {
  vf acc[RH][NV];
#pragma GCC unroll 4
  for (int r = 0; r < RH; ++r) {
    const vf a = splat(alpha[r]);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = load(o + r * ld + v * kL) * a;
  }
  for (int64_t c = 0; c < nc; ++c) {
    vf kvv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) kvv[v] = in_register(load(kv[c] + d + v * kL));
#pragma GCC unroll 4
    for (int r = 0; r < RH; ++r) {
      const vf pr = splat(p[r * kChunk + c]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = fmadd(pr, kvv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < RH; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store(o + r * ld + v * kL, acc[r][v]);
}

template <int RH>
void values_cols(int64_t dp, float* o, int64_t ld, const float* alpha, const float* p, const float* const* kv,
                 int64_t nc) {
  int64_t d = 0;
  for (; d + kPv * kL <= dp; d += kPv * kL) values_tile<RH, kPv>(o + d, ld, alpha, p, kv, d, nc);
  for (; d < dp; d += kL) values_tile<RH, 1>(o + d, ld, alpha, p, kv, d, nc);
}

template <int R = kPh>
void values_tiles(int rh, int64_t dp, float* o, int64_t ld, const float* alpha, const float* p,
                  const float* const* kv, int64_t nc) {
  if constexpr (R > 1) {
    if (rh < R) return values_tiles<R - 1>(rh, dp, o, ld, alpha, p, kv, nc);
  }
  values_cols<R>(dp, o, ld, alpha, p, kv, nc);
}

struct Attn {
  const void* q;
  bool q_bf16;
  const void* kv;
  bool kv_bf16;
  const void* dense;
  bool dense_bf16;
  const float* sink;
  const int64_t* idx;
  const int64_t* limit;
  void* out;
  int64_t S, H, D, K, N;
  float scale;
};

// Scratch of one thread: heads q and o [hb][ld], the chunk's candidates widened [kChunk][ld] where they must be
// (bfloat16, or D not a multiple of the vector width; float32 rows are read in place), the chunk's rows as
// float32 (tiles past the last candidate read the zero row), logits/probabilities [hb][kChunk], running max,
// denominator and rescale per head. Rows are dp floats one vector apart (ld = dp + kL), so rows read together
// do not share L1 sets (rows 4 KiB apart would, at D = 512 or 1024).
struct AttnScratch {
  int64_t dp, ld, hb;
  std::vector<float> q, o, kv, zero, p, m, l, alpha;
  const float* rows[kChunk];
  AttnScratch(int64_t dp_, int64_t hb_)
      : dp(dp_), ld(dp_ + kL), hb(hb_), q(hb_ * ld, 0.f), o(hb_ * ld), kv(kChunk * ld, 0.f), zero(dp_, 0.f),
        p(hb_ * kChunk), m(hb_), l(hb_), alpha(hb_) {}
};

// One step of the online softmax over the nc candidates in the scratch's buffer, for heads [0, nh).
void attn_chunk(AttnScratch& w, int64_t nh, int64_t nc, float scale) {
  const int64_t dp = w.dp, ld = w.ld;
  const int64_t nct = (nc + kQc - 1) / kQc * kQc;  // tiles past nc read the zero row; ignored
  for (int64_t h = 0; h < nh; h += kQh) {
    const int rh = int(std::min<int64_t>(kQh, nh - h));
    for (int64_t c = 0; c < nct; c += kQc)
      logits_tiles(rh, w.q.data() + h * ld, ld, w.rows + c, dp, scale, w.p.data() + h * kChunk + c);
  }
  // Lanes past nc: -inf, so their probability is 0 and the sums below need no tail (a fixed tree over the
  // lanes, the same for a given row whatever else runs).
  alignas(64) float lane_c[kChunk];
  for (int64_t c = 0; c < kChunk; ++c) lane_c[c] = float(c);
  const vf ncv = splat(float(nc)), ninf = splat(-std::numeric_limits<float>::infinity());
  for (int64_t h = 0; h < nh; ++h) {
    float* p = w.p.data() + h * kChunk;
    vf mv = splat(w.m[h]);
    for (int64_t c = 0; c < kChunk; c += kL) {
      const vf v = select(load(lane_c + c) < ncv, load(p + c), ninf);
      store(p + c, v);
      mv = vmax(mv, v);
    }
    float mx = mv[0];
    for (int i = 1; i < kL; ++i) mx = (mv[i] > mx || std::isnan(mv[i])) ? mv[i] : mx;
    const float alpha = exp1(w.m[h] - mx);
    vf sum = vf{};
    for (int64_t c = 0; c < kChunk; c += kL) {
      const vf e = vexp(load(p + c) - splat(mx));
      store(p + c, e);
      sum += e;
    }
    w.l[h] = w.l[h] * alpha + hsum(sum);
    w.m[h] = mx;
    w.alpha[h] = alpha;
  }
  for (int64_t h = 0; h < nh; h += kPh) {
    const int rh = int(std::min<int64_t>(kPh, nh - h));
    values_tiles(rh, dp, w.o.data() + h * ld, ld, w.alpha.data() + h, w.p.data() + h * kChunk, w.rows, nc);
  }
}

// A query row's candidates in order: its idx entries >= 0, then the dense entries j < limit[s].
struct CandidateStream {
  const Attn& a;
  const int64_t* ir;
  int64_t k = 0, j = 0, n_vis;
  size_t kv_es, dense_es;
  CandidateStream(const Attn& a_, int64_t s)
      : a(a_), ir(a_.idx + s * a_.K), n_vis(a_.N ? std::clamp<int64_t>(a_.limit[s], 0, a_.N) : 0),
        kv_es(a_.kv_bf16 ? 2 : 4), dense_es(a_.dense_bf16 ? 2 : 4) {}

  // The next (up to) kChunk candidates' rows, each prefetched; how many.
  int64_t fill(const void** rows, bool* bf16) {
    int64_t n = 0;
    for (; n < kChunk && k < a.K; ++k)
      if (ir[k] >= 0) {
        rows[n] = static_cast<const char*>(a.kv) + ir[k] * a.D * kv_es;
        bf16[n++] = a.kv_bf16;
      }
    for (; n < kChunk && j < n_vis; ++j) {
      rows[n] = static_cast<const char*>(a.dense) + j * a.D * dense_es;
      bf16[n++] = a.dense_bf16;
    }
    for (int64_t c = 0; c < n; ++c) {
      const char* r = static_cast<const char*>(rows[c]);
      const int64_t bytes = a.D * (bf16[c] ? 2 : 4);
      for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(r + b);
    }
    return n;
  }
};

// Query row s, heads [h0, h0 + nh).
void attn_task(const Attn& a, AttnScratch& w, int64_t s, int64_t h0, int64_t nh) {
  const int64_t D = a.D, dp = w.dp, ld = w.ld;
  for (int64_t h = 0; h < nh; ++h) {
    const int64_t off = (s * a.H + h0 + h) * D;
    widen(a.q_bf16 ? static_cast<const void*>(static_cast<const uint16_t*>(a.q) + off)
                   : static_cast<const void*>(static_cast<const float*>(a.q) + off),
          a.q_bf16, D, w.q.data() + h * ld);
    std::fill(w.o.data() + h * ld, w.o.data() + h * ld + dp, 0.f);
    w.m[h] = a.sink[h0 + h];  // the sink is the first logit: e^(sink - m) enters the denominator, nothing else
    w.l[h] = 1.f;
  }
  // The candidates in chunks: a chunk's rows are prefetched while the one before is computed (prefill gathers
  // them from all over kv).
  CandidateStream st(a, s);
  const void* rows[kChunk];
  bool bf16[kChunk];
  int64_t nc = st.fill(rows, bf16);
  while (nc > 0) {
    for (int64_t c = 0; c < kChunk; ++c) {
      if (c >= nc) {
        w.rows[c] = w.zero.data();
      } else if (!bf16[c] && D == dp) {
        w.rows[c] = static_cast<const float*>(rows[c]);
      } else {
        widen(rows[c], bf16[c], D, w.kv.data() + c * ld);
        w.rows[c] = w.kv.data() + c * ld;
      }
    }
    const int64_t next = st.fill(rows, bf16);
    attn_chunk(w, nh, nc, a.scale);
    nc = next;
  }
  for (int64_t h = 0; h < nh; ++h) {
    const vf den = splat(w.l[h]);
    const float* o = w.o.data() + h * ld;
    const int64_t off = (s * a.H + h0 + h) * D;
    int64_t d = 0;
    if (a.q_bf16) {
      uint16_t* y = static_cast<uint16_t*>(a.out) + off;
      for (; d + kL <= D; d += kL) {
        const vu b = as_bits(round_bf16(load(o + d) / den)) >> 16;
        for (int i = 0; i < kL; ++i) y[d + i] = uint16_t(b[i]);
      }
      for (; d < D; ++d) y[d] = c10::BFloat16(o[d] / w.l[h]).x;
    } else {
      float* y = static_cast<float*>(a.out) + off;
      for (; d + kL <= D; d += kL) store(y + d, load(o + d) / den);
      for (; d < D; ++d) y[d] = o[d] / w.l[h];
    }
  }
}

// ---- indexer scores --------------------------------------------------------------------------------------------

#if defined(__AVX512F__)
constexpr int kIm = 8, kIn = 3;  // 8 heads x 3 vectors of keys: 24 accumulators + 3 loads + 1 broadcast
#else
constexpr int kIm = 6, kIn = 2;  // 12 accumulators + 2 loads + 1 broadcast of 16 registers
#endif
constexpr int64_t kNr = kIn * kL;              // keys per panel
constexpr int64_t kPanels = (192 + kNr - 1) / kNr;  // panels per task (~192 keys)
constexpr int64_t kRowsPerTask = 8;           // query rows per task: the packed keys serve 8 x H rows of q

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

// acc[n] += sum over heads r of w[r] relu(q[r] . panel keys) for RM heads (rows of q, stride D); the heads in order.
template <int RM>
void index_tile(const float* q, int64_t D, const float* panel, const float* w, bool bf16, vf* out) {
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
      out[n] = fmadd(wr, y, out[n]);
    }
  }
}

template <int R = kIm>
void index_tiles(int rm, const float* q, int64_t D, const float* panel, const float* w, bool bf16, vf* out) {
  if constexpr (R > 1) {
    if (rm < R) return index_tiles<R - 1>(rm, q, D, panel, w, bf16, out);
  }
  index_tile<R>(q, D, panel, w, bf16, out);
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
void index_tile_pairs(const uint16_t* q, int64_t D, const uint32_t* panel, const float* w, vf* out) {
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
      out[n] = fmadd(wr, y, out[n]);
    }
  }
}

template <int R = kIm>
void index_tiles_pairs(int rm, const uint16_t* q, int64_t D, const uint32_t* panel, const float* w, vf* out) {
  if constexpr (R > 1) {
    if (rm < R) return index_tiles_pairs<R - 1>(rm, q, D, panel, w, out);
  }
  index_tile_pairs<R>(q, D, panel, w, out);
}
#endif

}  // namespace

at::Tensor sparse_attention_cpu(const at::Tensor& q_, const at::Tensor& kv_, const at::Tensor& sink_,
                                const at::Tensor& idx_, double softmax_scale, const std::optional<at::Tensor>& dense_,
                                const std::optional<at::Tensor>& limit_) {
  TORCH_CHECK(q_.dim() == 3 && is_f32_or_bf16(q_), "sparse_attention: q must be a float32 or bfloat16 [S, H, D] "
              "tensor, got ", q_.scalar_type(), " of shape ", q_.sizes());
  const int64_t S = q_.size(0), H = q_.size(1), D = q_.size(2);
  TORCH_CHECK(kv_.dim() == 2 && kv_.size(1) == D && is_f32_or_bf16(kv_), "sparse_attention: kv must be a float32 "
              "or bfloat16 [T, ", D, "] tensor, got ", kv_.scalar_type(), " of shape ", kv_.sizes());
  TORCH_CHECK(sink_.dim() == 1 && sink_.size(0) == H && sink_.scalar_type() == at::kFloat,
              "sparse_attention: sink must be a float32 [", H, "] tensor, got ", sink_.scalar_type(), " of shape ",
              sink_.sizes());
  TORCH_CHECK(idx_.dim() == 2 && idx_.size(0) == S && idx_.scalar_type() == at::kLong,
              "sparse_attention: idx must be an int64 [", S, ", K] tensor, got ", idx_.scalar_type(), " of shape ",
              idx_.sizes());
  const bool has_dense = dense_.has_value() && dense_->defined() && dense_->size(0) > 0;
  if (has_dense) {
    TORCH_CHECK(dense_->dim() == 2 && dense_->size(1) == D && is_f32_or_bf16(*dense_), "sparse_attention: dense "
                "must be a float32 or bfloat16 [N, ", D, "] tensor, got ", dense_->scalar_type(), " of shape ",
                dense_->sizes());
    TORCH_CHECK(limit_.has_value() && limit_->defined(), "sparse_attention: dense entries need a limit [", S, "]");
    TORCH_CHECK(limit_->dim() == 1 && limit_->size(0) == S && limit_->scalar_type() == at::kLong,
                "sparse_attention: limit must be an int64 [", S, "] tensor, got ", limit_->scalar_type(),
                " of shape ", limit_->sizes());
  }
  const at::Tensor q = q_.contiguous(), kv = kv_.contiguous(), sink = sink_.contiguous(), idx = idx_.contiguous();
  const at::Tensor dense = has_dense ? dense_->contiguous() : at::Tensor();
  const at::Tensor limit = has_dense ? limit_->contiguous() : at::Tensor();
  const int64_t T = kv.size(0), K = idx.size(1);
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < S * K; ++i)
    TORCH_CHECK(ip[i] < T, "sparse_attention: idx[", i / K, ", ", i % K, "] = ", ip[i], " is past kv's ", T, " rows");
  at::Tensor out = at::empty_like(q);
  if (S == 0 || H == 0 || D == 0) return out;

  Attn a{q.data_ptr(), q.scalar_type() == at::kBFloat16, kv.data_ptr(), kv.scalar_type() == at::kBFloat16,
         has_dense ? dense.data_ptr() : nullptr, has_dense && dense.scalar_type() == at::kBFloat16,
         sink.data_ptr<float>(), ip, has_dense ? limit.data_ptr<int64_t>() : nullptr, out.data_ptr(),
         S, H, D, K, has_dense ? dense.size(0) : 0, static_cast<float>(softmax_scale)};
  // Heads per task: as many as can be (each task reads its row's candidates once), but with few rows the rows
  // split into blocks of heads so every thread gets the same number of tasks (a decode row: one block per
  // thread). At most kMaxHeads, a multiple of the tile's heads. Which heads share a task changes nothing in how
  // each head is computed.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t per_row = 1;
  if (S < 4 * threads) {
    const int64_t most = (H + kQh - 1) / kQh;
    per_row = std::min(most, (threads + S - 1) / S);
    while ((S * per_row) % threads != 0 && per_row < most) ++per_row;
  }
  int64_t hb = (H + per_row - 1) / per_row;
  hb = std::clamp<int64_t>((hb + kQh - 1) / kQh * kQh, kQh, kMaxHeads);
  hb = std::min(hb, H);
  const int64_t blocks = (H + hb - 1) / hb;
  const int64_t dp = (D + kL - 1) / kL * kL;
  parallel_tasks(S * blocks, 1, [&](int64_t t0, int64_t t1) {
    AttnScratch w(dp, hb);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t s = t / blocks, h0 = (t % blocks) * hb;
      attn_task(a, w, s, h0, std::min(hb, H - h0));
    }
  });
  return out;
}

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
  const int64_t row_blocks = (S + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t key_blocks = (T + kPanels * kNr - 1) / (kPanels * kNr);
#if defined(V4_INDEX_DPBF16)
  if (bf16 && D % 2 == 0) {
    parallel_tasks(row_blocks * key_blocks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<uint32_t> panels(kPanels * (D / 2) * kNr);
      std::vector<uint16_t> tmp(keys_bf16 ? 0 : kNr * D);
      const std::vector<float> zero(D, 0.f);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t s0 = (t % row_blocks) * kRowsPerTask, k0 = (t / row_blocks) * kPanels * kNr;
        const int64_t s1 = std::min(S, s0 + kRowsPerTask), np = std::min(kPanels, (T - k0 + kNr - 1) / kNr);
        for (int64_t p = 0; p < np; ++p)
          pack_panel_pairs(kp, keys_bf16, k0 + p * kNr, std::min(kNr, T - k0 - p * kNr), D,
                           panels.data() + p * (D / 2) * kNr, tmp.data(), zero.data());
        for (int64_t p = 0; p < np; ++p) {
          const uint32_t* panel = panels.data() + p * (D / 2) * kNr;
          const int64_t kt = k0 + p * kNr, n = std::min(kNr, T - kt);
          for (int64_t s = s0; s < s1; ++s) {
            const uint16_t* qs = static_cast<const uint16_t*>(qp) + s * H * D;
            vf acc[kIn];
            for (int i = 0; i < kIn; ++i) acc[i] = vf{};
            for (int64_t h = 0; h < H; h += kIm)
              index_tiles_pairs(int(std::min<int64_t>(kIm, H - h)), qs + h * D, D, panel, wp + s * H + h, acc);
            alignas(64) float res[kNr];
            for (int i = 0; i < kIn; ++i) store(res + i * kL, round_bf16(acc[i]));
            std::memcpy(op + s * T + kt, res, n * sizeof(float));
          }
        }
      }
    });
    return out;
  }
#endif
  parallel_tasks(row_blocks * key_blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> panels(kPanels * D * kNr), qf(bf16 ? kRowsPerTask * H * D : 0), zero(D, 0.f);
    std::vector<float> tmp(keys_bf16 || round_keys ? kNr * D : 0);
    for (int64_t t = t0; t < t1; ++t) {
      // Row blocks innermost: consecutive tasks of a thread stream the keys block by block.
      const int64_t s0 = (t % row_blocks) * kRowsPerTask, k0 = (t / row_blocks) * kPanels * kNr;
      const int64_t s1 = std::min(S, s0 + kRowsPerTask), np = std::min(kPanels, (T - k0 + kNr - 1) / kNr);
      for (int64_t p = 0; p < np; ++p)
        pack_panel(kp, keys_bf16, round_keys, k0 + p * kNr, std::min(kNr, T - k0 - p * kNr), D,
                   panels.data() + p * D * kNr, tmp.data(), zero.data());
      const float* qrows = static_cast<const float*>(qp) + s0 * H * D;
      if (bf16) {
        widen(static_cast<const uint16_t*>(qp) + s0 * H * D, true, (s1 - s0) * H * D, qf.data());
        qrows = qf.data();
      }
      for (int64_t p = 0; p < np; ++p) {
        const float* panel = panels.data() + p * D * kNr;
        const int64_t kt = k0 + p * kNr, n = std::min(kNr, T - kt);
        for (int64_t s = s0; s < s1; ++s) {
          const float* qs = qrows + (s - s0) * H * D;
          vf acc[kIn];
          for (int i = 0; i < kIn; ++i) acc[i] = vf{};
          for (int64_t h = 0; h < H; h += kIm)
            index_tiles(int(std::min<int64_t>(kIm, H - h)), qs + h * D, D, panel, wp + s * H + h, bf16, acc);
          alignas(64) float res[kNr];
          for (int i = 0; i < kIn; ++i) store(res + i * kL, bf16 ? round_bf16(acc[i]) : acc[i]);
          std::memcpy(op + s * T + kt, res, n * sizeof(float));
        }
      }
    }
  });
  return out;
}

}  // namespace v4cli
