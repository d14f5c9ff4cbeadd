// The moe_experts kernels' weight decoding (csrc/cuda/moe.cuh) run as host code, for tests/test_cuda_moe_host.py to
// compare with runtime/quant.py without a GPU: the prefill path's natural-order decoders, and one step of the
// decode path's warp (32 lanes' operands fed through an emulated m16n8k16 MMA as PTX defines its fragments).
// Usage: moe_host MODE IN OUT. IN holds the mode's inputs as raw bytes; OUT gets float32 values.
#include <cstdio>
#include <cstring>
#include <vector>

#include "moe.cuh"

using namespace v4cli::cuda;

namespace {

float bf16_lo(uint32_t v) { return bits_float(v << 16); }
float bf16_hi(uint32_t v) { return bits_float(v & 0xffff0000u); }

// C[16][8] += A[16][16] B[16][8], A and B gathered from the lanes' registers as mma.m16n8k16 lays them out.
void mma(float c[16][8], const uint32_t a[32][4], const uint32_t b[32][2]) {
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
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double s = c[m][n];
      for (int k = 0; k < 16; ++k) s += static_cast<double>(A[m][k]) * B[k][n];
      c[m][n] = static_cast<float>(s);
    }
}

uint4 piece(const uint8_t* p) {
  uint4 v;
  std::memcpy(&v, p, 16);
  return v;
}

// One step of moe_gemv's warp: 16 rows x 4 lanes' pieces of 16 bytes (64 bytes a row), scales (FP4: [16][4], one
// per row and piece; FP8: one), 8 tokens' activations for the step's 4G elements (bfloat16). Out: C [16][8].
template <int FMT>
void gemv_step(const std::vector<uint8_t>& in, std::vector<float>& out) {
  constexpr int G = MoeGemvFmt<FMT>::G;
  const uint8_t* W = in.data();
  const uint8_t* S = W + 16 * 64;
  const size_t nscale = FMT == kMoeFormatFp4 ? 64 : FMT == kMoeFormatFp8 ? 1 : 0;
  const uint8_t* X = S + nscale;  // [8][4G] bfloat16
  MoeScale s[32][2];
  bool two = false;
  for (int lane = 0; lane < 32; ++lane)
    for (int r = 0; r < 2; ++r) {
      const int row = lane / 4 + 8 * r, t = lane % 4;
      if (FMT == kMoeFormatFp4) s[lane][r] = moe_chunk_scale(S[row * 4 + t], MoeGemvFmt<FMT>::bias);
      if (FMT == kMoeFormatFp8) s[lane][r] = moe_chunk_scale(S[0], MoeGemvFmt<FMT>::bias);
      if (FMT == kMoeFormatBf16) s[lane][r] = MoeScale{kMoeOnex2, kMoeOnex2, false};
      two = two || s[lane][r].two;
    }
  float c[16][8] = {};
  for (int i = 0; i < G / 4; ++i) {
    uint32_t a[32][4], b[32][2];
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4;
      const uint4 r0 = piece(W + g * 64 + 16 * t), r1 = piece(W + (g + 8) * 64 + 16 * t);
      if (two) {
        moe_gemv_a<FMT, true>(r0, r1, s[lane][0], s[lane][1], i, a[lane]);
      } else {
        moe_gemv_a<FMT, false>(r0, r1, s[lane][0], s[lane][1], i, a[lane]);
      }
      const uint4 x = piece(X + 2 * (static_cast<size_t>(g) * 4 * G + G * t) + 16 * (i >> 1));
      moe_gemv_b<FMT>(x, i, b[lane]);
    }
    mma(c, a, b);
  }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) out.push_back(c[m][n]);
}

// ldmatrix.x4 as PTX defines it, from a [rows][32] bfloat16 tile: lane l supplies the address of row l % 8 of
// matrix l / 8 (here as a row and k), and receives row lane / 4, columns 2 (lane % 4) and +1 of each matrix.
void ldmatrix(const uint16_t* tile, const int row[32], const int k[32], uint32_t r[32][4]) {
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const int src = 8 * i + lane / 4;
      const uint16_t* p = tile + row[src] * 32 + k[src] + 2 * (lane % 4);
      r[lane][i] = p[0] | (static_cast<uint32_t>(p[1]) << 16);
    }
}

// One K tile of moe_gemm's block: A [128][32] and B [128][32] bfloat16 in shared memory, 8 warps as the kernel
// places them (4 along M, 2 along N), fragments read with the kernel's lane offsets. Out: C [128][128] = A B^T.
void gemm_tile(const std::vector<uint8_t>& in, std::vector<float>& out) {
  const uint16_t* A = reinterpret_cast<const uint16_t*>(in.data());
  const uint16_t* B = A + 128 * 32;
  std::vector<float> C(128 * 128, 0.f);
  for (int warp = 0; warp < 8; ++warp) {
    const int wm = warp & 3, wn = warp >> 2;
    float acc[2][8][16][8] = {};
    for (int ks = 0; ks < 32; ks += 16) {
      uint32_t af[2][32][4], bf[4][32][4];
      int row[32], k[32];
      for (int mi = 0; mi < 2; ++mi) {
        for (int lane = 0; lane < 32; ++lane) {
          row[lane] = 32 * wm + 16 * mi + moe_ldm_a_row(lane);
          k[lane] = ks + moe_ldm_a_k(lane);
        }
        ldmatrix(A, row, k, af[mi]);
      }
      for (int jp = 0; jp < 4; ++jp) {
        for (int lane = 0; lane < 32; ++lane) {
          row[lane] = 64 * wn + 16 * jp + moe_ldm_b_row(lane);
          k[lane] = ks + moe_ldm_b_k(lane);
        }
        ldmatrix(B, row, k, bf[jp]);
      }
      for (int mi = 0; mi < 2; ++mi)
        for (int j = 0; j < 8; ++j) {
          uint32_t b[32][2];
          for (int lane = 0; lane < 32; ++lane) {
            b[lane][0] = bf[j / 2][lane][2 * (j % 2)];
            b[lane][1] = bf[j / 2][lane][2 * (j % 2) + 1];
          }
          mma(acc[mi][j], af[mi], b);
        }
    }
    for (int mi = 0; mi < 2; ++mi)
      for (int j = 0; j < 8; ++j)
        for (int m = 0; m < 16; ++m)
          for (int n = 0; n < 8; ++n) C[(32 * wm + 16 * mi + m) * 128 + 64 * wn + 8 * j + n] = acc[mi][j][m][n];
  }
  out = C;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) return 2;
  const char* mode = argv[1];
  std::vector<uint8_t> in;
  if (FILE* f = std::fopen(argv[2], "rb")) {
    int c;
    while ((c = std::fgetc(f)) != EOF) in.push_back(static_cast<uint8_t>(c));
    std::fclose(f);
  }
  std::vector<float> out;
  if (!std::strcmp(mode, "fp4_natural") || !std::strcmp(mode, "fp8_natural")) {
    // N words then N scale bytes: each word's elements, decoded and scaled, in natural order
    const bool fp4 = mode[2] == '4';
    const size_t n = in.size() / 5;
    for (size_t i = 0; i < n; ++i) {
      uint32_t q;
      std::memcpy(&q, in.data() + 4 * i, 4);
      const MoeScale s = moe_chunk_scale(in[4 * n + i], fp4 ? 126 : 120);
      uint32_t o[4];
      if (fp4) {
        moe_fp4_natural(q, s, o);
      } else {
        moe_fp8_natural(q, s, o);
      }
      for (int j = 0; j < (fp4 ? 4 : 2); ++j) {
        out.push_back(bf16_lo(o[j]));
        out.push_back(bf16_hi(o[j]));
      }
    }
  } else if (!std::strcmp(mode, "gemv_fp4")) {
    gemv_step<kMoeFormatFp4>(in, out);
  } else if (!std::strcmp(mode, "gemv_fp8")) {
    gemv_step<kMoeFormatFp8>(in, out);
  } else if (!std::strcmp(mode, "gemm_tile")) {
    gemm_tile(in, out);
  } else if (!std::strcmp(mode, "gemv_bf16")) {
    gemv_step<kMoeFormatBf16>(in, out);
  } else {
    return 2;
  }
  FILE* f = std::fopen(argv[3], "wb");
  if (f == nullptr) return 1;
  std::fwrite(out.data(), sizeof(float), out.size(), f);
  std::fclose(f);
  return 0;
}
