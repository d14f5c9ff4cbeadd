// The linear ops' tensor-core path (csrc/cuda/linear_tc.cu) as host code, for tests/test_cuda_linear_host.py: every
// warp, lane and step of the kernel's grid with its addressing (linear.cuh), split-K plan, decoders and MMA
// operands (moe.cuh), the m16n8k16 MMA emulated as PTX lays out its fragments, the per-step float32 promotion and
// the split sum. Usage: linear_host IN OUT. IN: int32 fmt, N, K, M, planes, serial (the splits summed in
// turn within a block, not as partials); the weight's bytes; its scale bytes
// (FP8: ceil(N/128) x ceil(K/128), FP4: N x K/32, none for bf16); the planes [planes][M][K] bfloat16.
// OUT: y [M][N] float32, then int32 splits, steps per split, tiles.
#include <cstdio>
#include <cstring>
#include <map>
#include <vector>

#include "linear.cuh"

using namespace v4cli::cuda;

namespace {

float bf16_lo(uint32_t v) { return bits_float(v << 16); }
float bf16_hi(uint32_t v) { return bits_float(v & 0xffff0000u); }

// c[lane][4] += A B for one warp, fragments as mma.m16n8k16 lays them out (products exact, summed in double).
void mma(float c[32][4], const uint32_t a[32][4], const uint32_t b[32][2]) {
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
    for (int r = 0; r < 4; ++r) {
      A[rows[r]][cols[r]] = bf16_lo(a[lane][r]);
      A[rows[r]][cols[r] + 1] = bf16_hi(a[lane][r]);
    }
    for (int r = 0; r < 2; ++r) {
      B[2 * t + 8 * r][g] = bf16_lo(b[lane][r]);
      B[2 * t + 8 * r + 1][g] = bf16_hi(b[lane][r]);
    }
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int q = 0; q < 4; ++q) {
      const int m = lin_out_row(lane / 4, q), n = lin_out_token(0, lane % 4, q);
      double s = c[lane][q];
      for (int k = 0; k < 16; ++k) s += static_cast<double>(A[m][k]) * B[k][n];
      c[lane][q] = static_cast<float>(s);
    }
}

uint4 piece(const uint8_t* p) {
  uint4 v;
  std::memcpy(&v, p, 16);
  return v;
}

template <int FMT>
void run(int N, int K, int64_t M, int P, bool serial, const uint8_t* W, const uint8_t* S, const uint16_t* X,
         std::vector<float>& y, LinSplit& sp, int& NT) {
  constexpr int G = MoeGemvFmt<FMT>::G;
  const int steps = K / (4 * G);
  sp = lin_split(FMT, N, K);
  NT = lin_tiles(FMT, M, P);
  std::vector<float> part(static_cast<size_t>(sp.splits) * M * N, 0.f);
  std::map<std::pair<int, int64_t>, std::vector<float>> totals;
  const int64_t plane = M * K;
  for (int n0 = 0; n0 < N; n0 += 16)
    for (int64_t m0 = 0; m0 < M; m0 += 8 * NT)
      for (int z = 0; z < sp.splits; ++z) {
        std::vector<float> acc(static_cast<size_t>(NT) * 32 * 4, 0.f), total;
        const int s0 = z * sp.steps_per_split, s1 = std::min(steps, s0 + sp.steps_per_split);
        for (int step = s0; step < s1; ++step) {
          uint4 w[32][2];
          MoeScale sc[32][2];
          bool two = false;
          for (int lane = 0; lane < 32; ++lane)
            for (int r = 0; r < 2; ++r) {
              const int row = std::min(n0 + lane / 4 + 8 * r, N - 1);
              w[lane][r] = piece(W + lin_w_offset(FMT, row, lane % 4, step, K));
              sc[lane][r] = FMT == kMoeFormatBf16 ? MoeScale{kMoeOnex2, kMoeOnex2, false}
                                                  : moe_chunk_scale(S[lin_s_offset(FMT, row, lane % 4, step, K)],
                                                                    MoeGemvFmt<FMT>::bias);
              two = two || sc[lane][r].two;
            }
          std::vector<float> c(acc.size(), 0.f);
          for (int i = 0; i < G / 4; ++i) {
            uint32_t a[32][4];
            for (int lane = 0; lane < 32; ++lane) {
              if (two) {
                moe_gemv_a<FMT, true>(w[lane][0], w[lane][1], sc[lane][0], sc[lane][1], i, a[lane]);
              } else {
                moe_gemv_a<FMT, false>(w[lane][0], w[lane][1], sc[lane][0], sc[lane][1], i, a[lane]);
              }
            }
            for (int j = 0; j < NT; ++j)
              for (int p = 0; p < P; ++p) {
                uint32_t b[32][2];
                for (int lane = 0; lane < 32; ++lane) {
                  const int64_t m = m0 + 8 * j + lane / 4;
                  const int64_t xm = m < M ? m : m0;
                  const uint16_t* px = X + p * plane + lin_x_offset(FMT, xm, lane % 4, step, i >> 1, K);
                  moe_gemv_b<FMT>(piece(reinterpret_cast<const uint8_t*>(px)), i, b[lane]);
                }
                mma(reinterpret_cast<float(*)[4]>(&c[static_cast<size_t>(j) * 128]), a, b);
              }
          }
          for (size_t q = 0; q < acc.size(); ++q) acc[q] += c[q];
        }
        if (serial) {  // the kernel's running total over this block's splits
          if (z == 0) totals[{n0, m0}] = acc;
          else for (size_t q = 0; q < acc.size(); ++q) totals[{n0, m0}][q] += acc[q];
          if (z + 1 < sp.splits) continue;
          acc = totals[{n0, m0}];
        }
        for (int j = 0; j < NT; ++j)
          for (int lane = 0; lane < 32; ++lane)
            for (int q = 0; q < 4; ++q) {
              const int64_t m = m0 + lin_out_token(j, lane % 4, q);
              const int row = n0 + lin_out_row(lane / 4, q);
              if (m < M && row < N) part[((serial ? 0 : z) * M + m) * N + row] = acc[(j * 32 + lane) * 4 + q];
            }
      }
  y.assign(static_cast<size_t>(M) * N, 0.f);
  for (size_t i = 0; i < y.size(); ++i) {
    float s = part[i];
    for (int z = 1; z < (serial ? 1 : sp.splits); ++z) s += part[z * y.size() + i];
    y[i] = s;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: linear_host IN OUT\n");
    return 2;
  }
  FILE* f = std::fopen(argv[1], "rb");
  if (!f) return 1;
  std::vector<uint8_t> in;
  uint8_t buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) in.insert(in.end(), buf, buf + n);
  std::fclose(f);
  int32_t hdr[6];
  std::memcpy(hdr, in.data(), sizeof hdr);
  const int fmt = hdr[0], N = hdr[1], K = hdr[2], P = hdr[4];
  const bool serial = hdr[5] != 0;
  const int64_t M = hdr[3];
  const size_t wbytes = fmt == kMoeFormatFp4 ? size_t(N) * K / 2 : fmt == kMoeFormatFp8 ? size_t(N) * K : size_t(N) * K * 2;
  const size_t sbytes = fmt == kMoeFormatFp4   ? size_t(N) * (K / 32)
                        : fmt == kMoeFormatFp8 ? size_t((N + 127) / 128) * ((K + 127) / 128)
                                               : 0;
  const uint8_t* W = in.data() + sizeof hdr;
  const uint8_t* S = W + wbytes;
  std::vector<uint16_t> X(static_cast<size_t>(P) * M * K);
  std::memcpy(X.data(), S + sbytes, X.size() * 2);
  std::vector<float> y;
  LinSplit sp{};
  int NT = 0;
  if (fmt == kMoeFormatFp4) run<kMoeFormatFp4>(N, K, M, P, serial, W, S, X.data(), y, sp, NT);
  if (fmt == kMoeFormatFp8) run<kMoeFormatFp8>(N, K, M, P, serial, W, S, X.data(), y, sp, NT);
  if (fmt == kMoeFormatBf16) run<kMoeFormatBf16>(N, K, M, P, serial, W, S, X.data(), y, sp, NT);
  FILE* o = std::fopen(argv[2], "wb");
  if (!o) return 1;
  std::fwrite(y.data(), 4, y.size(), o);
  const int32_t tail[3] = {sp.splits, sp.steps_per_split, NT};
  std::fwrite(tail, 4, 3, o);
  std::fclose(o);
  return 0;
}
