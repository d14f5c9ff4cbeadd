// Sparse attention over gathered candidates (with a per-head sink and HCA's in-place dense entries) on the CPU.
// The semantics are the PyTorch twin's (ops_ref.sparse_attention); only the order of float32 summation differs
// (and the exp, a polynomial of ~1 ulp). The lightning indexer's scores are in indexer.cpp; the vector pieces
// both use in attention_simd.h.
//
// One task per (query row, block of heads). A row's candidates (its idx entries >= 0 in order, then the dense
// entries j < limit[s]) stream through in chunks of kChunk rows, prefetched a chunk ahead and read in place
// (float32) or widened into a buffer (bfloat16), shared by every head of the block: logits by a register tile of
// heads x candidates (each a dot product along D, lane by lane, then a fixed tree over the lanes), an online
// softmax per head (running max, started at the sink's logit, which takes probability mass but has no value), and
// the weighted sum of the candidates by a register tile of heads x vectors of D. Memory per task does not grow
// with the candidates.
//
// Row invariance: every output element is computed by the same instructions in the same order whatever the other
// rows, the number of heads in a task's block, or which thread runs the task: the order depends on the row's own
// inputs (its candidates, in order, and D) and on the build only. The exp is one vectorized function for every
// lane and row.
//
// Threads: parallel_tasks (parallel.h) over torch's intra-op threads, torch.set_num_threads included.

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
#include "attention_simd.h"
#include "parallel.h"

namespace v4cli {
namespace {

using namespace attn_simd;

// ---- vectors (attention's own; the shared ones are in attention_simd.h) ----------------------------------------

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


}  // namespace v4cli
