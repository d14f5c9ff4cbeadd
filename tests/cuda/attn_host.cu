// The attention kernels' warp-level data flow (csrc/cuda/attention.cu, indexer.cu) run as host code, for
// tests/test_cuda_attention_host.py: 32 lanes' registers as arrays, ldmatrix (plain and .trans) and mma.m16n8k16
// emulated as PTX defines their fragments, the shuffles as exchanges between lanes. The steps, the ldmatrix
// addresses (attention.cuh's helpers) and the fragment bookkeeping are the kernels'; the results are compared
// with float64 references computed here from the same bfloat16 inputs.
// Usage: attn_host MODE (attention | indexer | split); prints the relative error, exits 1 past the tolerance.
#include <cmath>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "attention.cuh"

using namespace v4cli::cuda;

namespace {

uint16_t to_bf16(float x) {  // round to nearest even (no NaN here)
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t pack(float lo, float hi) { return to_bf16(lo) | (static_cast<uint32_t>(to_bf16(hi)) << 16); }

using Regs4 = uint32_t[32][4];

// ldmatrix.x4 from a shared buffer: `addr(lane)` is the byte offset lane gives (row lane % 8 of matrix lane / 8).
template <typename F>
void ldm(uint32_t r[32][4], const uint8_t* base, F addr, bool trans) {
  for (int i = 0; i < 4; ++i) {
    uint16_t m[8][8];
    for (int row = 0; row < 8; ++row) std::memcpy(m[row], base + addr(8 * i + row), 16);
    for (int l = 0; l < 32; ++l) {
      const int a = l / 4, b = 2 * (l % 4);
      const uint16_t lo = trans ? m[b][a] : m[a][b], hi = trans ? m[b + 1][a] : m[a][b + 1];
      r[l][i] = lo | (static_cast<uint32_t>(hi) << 16);
    }
  }
}

// d += a b as mma.m16n8k16.row.col bf16 -> f32 lays out a, b, d over the lanes.
void mma(float d[32][4], const uint32_t a[32][4], const uint32_t b0[32], const uint32_t b1[32]) {
  double A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
    for (int r = 0; r < 4; ++r) {
      A[rows[r]][cols[r]] = from_bf16(a[l][r] & 0xffff);
      A[rows[r]][cols[r] + 1] = from_bf16(a[l][r] >> 16);
    }
    B[2 * t][g] = from_bf16(b0[l] & 0xffff);
    B[2 * t + 1][g] = from_bf16(b0[l] >> 16);
    B[2 * t + 8][g] = from_bf16(b1[l] & 0xffff);
    B[2 * t + 9][g] = from_bf16(b1[l] >> 16);
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int r = 0; r < 4; ++r) {
      const int m = g + (r >= 2 ? 8 : 0), n = 2 * t + (r & 1);
      double s = d[l][r];
      for (int k = 0; k < 16; ++k) s += A[m][k] * B[k][n];
      d[l][r] = static_cast<float>(s);
    }
  }
}

// v[l] op= v[l ^ mask] for every lane at once (__shfl_xor_sync then the op).
template <typename Op>
void xor_reduce(float v[32], int mask, Op op) {
  float w[32];
  for (int l = 0; l < 32; ++l) w[l] = op(v[l], v[l ^ mask]);
  std::memcpy(v, w, sizeof w);
}

std::vector<uint16_t> randn_bf16(std::mt19937& rng, size_t n) {
  std::normal_distribution<float> nd;
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = to_bf16(nd(rng));
  return v;
}

// One warp of attn_mma_kernel with DSL = D = 64 (DS = 1): 16 heads, 3 tiles of 32 candidates, some skipped.
int attention() {
  constexpr int D = 64, DSL = 64, NC = kAttnTile, NT = NC / 8, KQ = DSL / 16, ND = DSL / 8, TILES = 3;
  constexpr int rowb = D * 2 + 16;
  std::mt19937 rng(7);
  const std::vector<uint16_t> q = randn_bf16(rng, 16 * D), kv = randn_bf16(rng, TILES * NC * D);
  std::vector<int> valid(TILES * NC);
  for (int c = 0; c < TILES * NC; ++c) valid[c] = (c * 7) % 5 != 0;
  std::vector<float> sink(16);
  for (int h = 0; h < 16; ++h) sink[h] = 0.3f * (h % 5) - 0.5f;
  const float scale = 1.f / std::sqrt(static_cast<float>(D)), sl2 = scale * 1.4426950408889634f;

  std::vector<uint8_t> sq(16 * rowb), tile(NC * rowb);
  for (int r = 0; r < 16; ++r) std::memcpy(&sq[r * rowb], &q[r * D], D * 2);
  static uint32_t qf[KQ][32][4];
  for (int kk = 0; kk < KQ; ++kk)
    ldm(qf[kk], sq.data(), [&](int l) { return attn_ldm_a_row(l) * rowb + (kk * 16 + attn_ldm_a_col(l)) * 2; }, false);
  float m0[32], m1[32], l0[32] = {}, l1[32] = {};
  static float o[ND][32][4];
  for (int l = 0; l < 32; ++l) {
    m0[l] = sink[l / 4] * 1.4426950408889634f;
    m1[l] = sink[l / 4 + 8] * 1.4426950408889634f;
  }
  for (int t = 0; t < TILES; ++t) {
    for (int r = 0; r < NC; ++r) {  // skipped rows are zeros, as cp.async's zero fill
      if (valid[t * NC + r]) std::memcpy(&tile[r * rowb], &kv[(t * NC + r) * D], D * 2);
      else std::memset(&tile[r * rowb], 0, D * 2);
    }
    static float sc[NT][32][4];
    std::memset(sc, 0, sizeof sc);
    for (int kk = 0; kk < KQ; ++kk)
      for (int jp = 0; jp < NT / 2; ++jp) {
        uint32_t b[32][4], b0[32], b1[32], b2[32], b3[32];
        ldm(b, tile.data(), [&](int l) { return (jp * 16 + attn_ldm_b_row(l)) * rowb + (kk * 16 + attn_ldm_b_col(l)) * 2; }, false);
        for (int l = 0; l < 32; ++l) b0[l] = b[l][0], b1[l] = b[l][1], b2[l] = b[l][2], b3[l] = b[l][3];
        mma(sc[2 * jp], qf[kk], b0, b1);
        mma(sc[2 * jp + 1], qf[kk], b2, b3);
      }
    float mx0[32], mx1[32];
    for (int l = 0; l < 32; ++l) {
      mx0[l] = m0[l];
      mx1[l] = m1[l];
      for (int j = 0; j < NT; ++j)
        for (int e = 0; e < 2; ++e) {
          const bool ok = valid[t * NC + j * 8 + 2 * (l % 4) + e] != 0;
          sc[j][l][e] = ok ? sc[j][l][e] * sl2 : -INFINITY;
          sc[j][l][2 + e] = ok ? sc[j][l][2 + e] * sl2 : -INFINITY;
          mx0[l] = std::fmax(mx0[l], sc[j][l][e]);
          mx1[l] = std::fmax(mx1[l], sc[j][l][2 + e]);
        }
    }
    const auto fmax = [](float a, float b) { return std::fmax(a, b); };
    for (int mask : {1, 2}) {
      xor_reduce(mx0, mask, fmax);
      xor_reduce(mx1, mask, fmax);
    }
    for (int l = 0; l < 32; ++l) {
      const float al0 = std::exp2(m0[l] - mx0[l]), al1 = std::exp2(m1[l] - mx1[l]);
      m0[l] = mx0[l];
      m1[l] = mx1[l];
      float ps0 = 0.f, ps1 = 0.f;
      for (int j = 0; j < NT; ++j)
        for (int e = 0; e < 2; ++e) {
          sc[j][l][e] = std::exp2(sc[j][l][e] - mx0[l]);
          sc[j][l][2 + e] = std::exp2(sc[j][l][2 + e] - mx1[l]);
          ps0 += sc[j][l][e];
          ps1 += sc[j][l][2 + e];
        }
      l0[l] = l0[l] * al0 + ps0;
      l1[l] = l1[l] * al1 + ps1;
      for (int n = 0; n < ND; ++n) {
        o[n][l][0] *= al0;
        o[n][l][1] *= al0;
        o[n][l][2] *= al1;
        o[n][l][3] *= al1;
      }
    }
    for (int kk = 0; kk < NC / 16; ++kk) {
      uint32_t pa[32][4];
      for (int l = 0; l < 32; ++l) {
        pa[l][0] = pack(sc[2 * kk][l][0], sc[2 * kk][l][1]);
        pa[l][1] = pack(sc[2 * kk][l][2], sc[2 * kk][l][3]);
        pa[l][2] = pack(sc[2 * kk + 1][l][0], sc[2 * kk + 1][l][1]);
        pa[l][3] = pack(sc[2 * kk + 1][l][2], sc[2 * kk + 1][l][3]);
      }
      for (int np = 0; np < ND / 2; ++np) {
        uint32_t b[32][4], b0[32], b1[32], b2[32], b3[32];
        ldm(b, tile.data(), [&](int l) { return (kk * 16 + attn_ldm_v_row(l)) * rowb + (np * 16 + attn_ldm_v_col(l)) * 2; }, true);
        for (int l = 0; l < 32; ++l) b0[l] = b[l][0], b1[l] = b[l][1], b2[l] = b[l][2], b3[l] = b[l][3];
        mma(o[2 * np], pa, b0, b1);
        mma(o[2 * np + 1], pa, b2, b3);
      }
    }
  }
  const auto add = [](float a, float b) { return a + b; };
  for (int mask : {1, 2}) {
    xor_reduce(l0, mask, add);
    xor_reduce(l1, mask, add);
  }
  std::vector<double> got(16 * D);
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, tq = l % 4;
    const float inv0 = 1.f / (l0[l] + std::exp2(sink[g] * 1.4426950408889634f - m0[l]));
    const float inv1 = 1.f / (l1[l] + std::exp2(sink[g + 8] * 1.4426950408889634f - m1[l]));
    for (int n = 0; n < ND; ++n)
      for (int e = 0; e < 2; ++e) {
        got[g * D + n * 8 + 2 * tq + e] = o[n][l][e] * inv0;
        got[(g + 8) * D + n * 8 + 2 * tq + e] = o[n][l][2 + e] * inv1;
      }
  }
  // float64 reference: softmax over the valid candidates and the sink
  double err = 0, norm = 0;
  for (int h = 0; h < 16; ++h) {
    std::vector<double> lg(TILES * NC);
    double mx = sink[h];
    for (int c = 0; c < TILES * NC; ++c) {
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += static_cast<double>(from_bf16(q[h * D + d])) * from_bf16(kv[c * D + d]);
      lg[c] = valid[c] ? dot * scale : -INFINITY;
      mx = std::fmax(mx, lg[c]);
    }
    double den = std::exp(sink[h] - mx);
    for (int c = 0; c < TILES * NC; ++c) den += std::exp(lg[c] - mx);
    for (int d = 0; d < D; ++d) {
      double num = 0;
      for (int c = 0; c < TILES * NC; ++c) num += std::exp(lg[c] - mx) * from_bf16(kv[c * D + d]);
      const double want = num / den;
      err += (got[h * D + d] - want) * (got[h * D + d] - want);
      norm += want * want;
    }
  }
  const double rel = std::sqrt(err / norm);
  std::printf("attention rel %.3e\n", rel);
  return rel < 1e-2 ? 0 : 1;
}

// One warp of index_mma_kernel with D = 128 (KS = 8), 64 heads (MT = 4): its 32 keys against one query row.
int indexer() {
  constexpr int D = 128, KS = 8, MT = 4, H = 16 * MT, rowb = D * 2 + 16, WARP = 1;
  std::mt19937 rng(11);
  const std::vector<uint16_t> q = randn_bf16(rng, H * D), keys = randn_bf16(rng, 64 * D);
  std::vector<float> w(H);
  std::normal_distribution<float> nd;
  for (auto& x : w) x = nd(rng) / 90.f;
  std::vector<uint8_t> sk(64 * rowb), sq(H * rowb);
  for (int r = 0; r < 64; ++r) std::memcpy(&sk[r * rowb], &keys[r * D], D * 2);
  for (int r = 0; r < H; ++r) std::memcpy(&sq[r * rowb], &q[r * D], D * 2);
  static uint32_t kb[4][KS][32][2];
  for (int jp = 0; jp < 2; ++jp)
    for (int kk = 0; kk < KS; ++kk) {
      uint32_t b[32][4];
      ldm(b, sk.data(), [&](int l) { return (WARP * 32 + jp * 16 + attn_ldm_b_row(l)) * rowb + (kk * 16 + attn_ldm_b_col(l)) * 2; }, false);
      for (int l = 0; l < 32; ++l) {
        kb[2 * jp][kk][l][0] = b[l][0];
        kb[2 * jp][kk][l][1] = b[l][1];
        kb[2 * jp + 1][kk][l][0] = b[l][2];
        kb[2 * jp + 1][kk][l][1] = b[l][3];
      }
    }
  static float acc[MT][4][32][4];
  for (int kk = 0; kk < KS; ++kk)
    for (int mt = 0; mt < MT; ++mt) {
      uint32_t a[32][4];
      ldm(a, sq.data(), [&](int l) { return (mt * 16 + attn_ldm_a_row(l)) * rowb + (kk * 16 + attn_ldm_a_col(l)) * 2; }, false);
      for (int j = 0; j < 4; ++j) {
        uint32_t b0[32], b1[32];
        for (int l = 0; l < 32; ++l) b0[l] = kb[j][kk][l][0], b1[l] = kb[j][kk][l][1];
        mma(acc[mt][j], a, b0, b1);
      }
    }
  const auto rnd = [](float x) { return from_bf16(to_bf16(x)); };
  const auto relu = [](float x) { return x < 0.f ? 0.f : x; };
  static float part[4][2][32];
  for (int l = 0; l < 32; ++l)
    for (int mt = 0; mt < MT; ++mt) {
      const float w0 = rnd(w[mt * 16 + l / 4]), w1 = rnd(w[mt * 16 + l / 4 + 8]);
      for (int j = 0; j < 4; ++j)
        for (int e = 0; e < 2; ++e) {
          part[j][e][l] = std::fma(w0, relu(rnd(acc[mt][j][l][e])), part[j][e][l]);
          part[j][e][l] = std::fma(w1, relu(rnd(acc[mt][j][l][2 + e])), part[j][e][l]);
        }
    }
  std::vector<double> got(32, NAN);
  const auto add = [](float a, float b) { return a + b; };
  for (int j = 0; j < 4; ++j)
    for (int e = 0; e < 2; ++e) {
      for (int mask : {4, 8, 16}) xor_reduce(part[j][e], mask, add);
      for (int l = 0; l < 4; ++l) got[j * 8 + 2 * l + e] = rnd(part[j][e][l]);  // lanes g == 0 store
    }
  double err = 0, norm = 0;
  for (int k = 0; k < 32; ++k) {
    double want = 0;
    for (int h = 0; h < H; ++h) {
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += static_cast<double>(from_bf16(q[h * D + d])) * from_bf16(keys[(WARP * 32 + k) * D + d]);
      want += w[h] * (dot > 0 ? dot : 0);
    }
    err += (got[k] - want) * (got[k] - want);
    norm += want * want;
  }
  const double rel = std::sqrt(err / norm);
  std::printf("indexer rel %.3e\n", rel);
  return rel < 1e-2 ? 0 : 1;
}

// Split candidates: every (ncand, splits) gives disjoint tile ranges covering all tiles, and partials of an online
// softmax per split (each started at the sink, as the kernels) combined by attn_merge equal one softmax.
int split() {
  for (int64_t n = 0; n < 300; n += 7)
    for (int splits = 1; splits <= 12; ++splits) {
      int64_t next = 0;
      for (int z = 0; z < splits; ++z) {
        int64_t t0, t1;
        attn_split_range(n, kAttnTile, z, splits, &t0, &t1);
        if (t0 != next && t1 > t0) return std::printf("split %d of %d for %lld: gap\n", z, splits, (long long)n), 1;
        if (t1 > t0) next = t1;
      }
      if (next != (n + kAttnTile - 1) / kAttnTile) return std::printf("%lld: tiles not covered\n", (long long)n), 1;
    }
  constexpr int D = 3, N = 150, SPLITS = 4;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> lg(N), v(N * D);
  for (auto& x : lg) x = 3.f * nd(rng);
  for (auto& x : v) x = nd(rng);
  for (int c = 0; c < N; c += 9) lg[c] = -INFINITY;  // skipped
  const float sink = 1.5f;
  std::vector<float> ws(SPLITS * (D + 2));
  for (int z = 0; z < SPLITS; ++z) {
    int64_t t0, t1;
    attn_split_range(N, kAttnTile, z, SPLITS, &t0, &t1);
    float m = sink, l = 0.f, o[D] = {};
    for (int64_t t = t0; t < t1; ++t) {
      float mx = m;
      for (int64_t c = t * kAttnTile; c < std::min<int64_t>(N, (t + 1) * kAttnTile); ++c) mx = std::fmax(mx, lg[c]);
      const float al = std::exp(m - mx);
      l *= al;
      for (float& x : o) x *= al;
      for (int64_t c = t * kAttnTile; c < std::min<int64_t>(N, (t + 1) * kAttnTile); ++c) {
        const float p = std::exp(lg[c] - mx);
        l += p;
        for (int d = 0; d < D; ++d) o[d] += p * v[c * D + d];
      }
      m = mx;
    }
    const AttnPartial p = attn_partial(ws.data(), 1, 1, D, z, 0, 0, SPLITS);
    *p.m = m;
    *p.l = l;
    for (int d = 0; d < D; ++d) p.o[d] = o[d];
  }
  const AttnMerge mg = attn_merge(ws.data(), 1, 1, D, 0, 0, SPLITS, sink);
  double mx = sink, den = 0, err = 0, norm = 0;
  for (float x : lg) mx = std::fmax(mx, x);
  den = std::exp(sink - mx);
  for (float x : lg) den += std::exp(x - mx);
  for (int d = 0; d < D; ++d) {
    double num = 0, got = 0;
    for (int c = 0; c < N; ++c) num += std::exp(lg[c] - mx) * v[c * D + d];
    for (int z = 0; z < SPLITS; ++z) {
      const AttnPartial p = attn_partial(ws.data(), 1, 1, D, z, 0, 0, SPLITS);
      got += std::exp(*p.m - mg.M) * p.o[d] * mg.inv;
    }
    err += (got - num / den) * (got - num / den);
    norm += (num / den) * (num / den);
  }
  const double rel = std::sqrt(err / norm);
  std::printf("split rel %.3e\n", rel);
  return rel < 1e-5 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "attention") == 0) return attention();
  if (argc == 2 && std::strcmp(argv[1], "indexer") == 0) return indexer();
  if (argc == 2 && std::strcmp(argv[1], "split") == 0) return split();
  std::fprintf(stderr, "usage: attn_host attention|indexer|split\n");
  return 2;
}
