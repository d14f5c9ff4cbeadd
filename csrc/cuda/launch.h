// The CUDA kernels' launchers: plain C++ over raw device pointers and sizes, one stream each, so that the .cu files
// compile without torch's headers (seconds, not minutes) and registration.cpp binds them to torch. Each returns
// the launch's error (cudaGetLastError), never throws. Tensors are contiguous, row-major; `bf16` means the
// float-typed pointers hold bfloat16 (uint16 bits), else float32.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace v4cli::cuda {

// ---- linear.cu: fp8_linear, fp4_linear, dense_linear ----------------------------------------------------------
// y = x W^T for x [M, K] (row stride ldx elements, float32 or bfloat16) and W [N, K] in one of the formats of
// moe_experts' table (kMoeFormatFp8: e4m3 + UE8M0 per 128x128 tile; kMoeFormatFp4: packed e2m1 + UE8M0 per 32
// inputs of a row; kMoeFormatF32 / kMoeFormatBf16: float weights, no scale), float32 accumulation, y [M, N]
// contiguous in float32 or bfloat16. act_quant: x first rounded to e4m3 per 1x128 block (quant.act_quant).
// Every output is summed in one order that depends on (format, N, K) only, never on M: row-invariant.
struct LinearArgs {
  const void* x;
  int64_t ldx;
  bool x_bf16;
  const void* w;
  const uint8_t* scale;  // null for float weights
  int fmt;
  void* y;
  bool y_bf16;
  int64_t M;
  int N, K;
  bool act_quant;
};
// Bytes of device workspace linear() needs for `a` (the rounded input and split-K partials).
size_t linear_workspace_bytes(const LinearArgs& a);
cudaError_t linear(const LinearArgs& a, void* workspace, cudaStream_t stream);

// ---- moe.cu: moe_experts ---------------------------------------------------------------------------------------

// The expert table's format codes (moe.cuh): e4m3 + 128x128 scales, packed e2m1 + per-32 scales, float weights.
constexpr int kMoeFormatFp8 = 0, kMoeFormatFp4 = 1, kMoeFormatF32 = 2, kMoeFormatBf16 = 3, kMoeFormatF16 = 4;
constexpr int kMoeMaxExperts = 4096, kMoeMaxPicks = 32;  // the routing kernel's limits (experts; picks per token)
// The paths: float32 SIMT for any input; for bfloat16 x with FP4/FP8/bfloat16 weights, D and inter multiples of
// 128 and 16-byte aligned rows, tensor cores: GEMV-shaped for decode (T <= 32), grouped GEMM past it.
enum class MoePath { kSimt, kGemv, kGemm };

struct MoeArgs {
  const void* x;           // [T, D], bfloat16 if x_bf16 else float32
  const float* weights;    // [T, k] routing weights
  const int64_t* picks;    // [T, k] experts (out-of-range picks are skipped)
  const int64_t* table;    // device [9E]: w1, w3, w2 pointers by expert, their scales' pointers, format codes
  float* out;              // [T, D] float32
  int64_t T;
  int D, inter, k, E;
  float limit;             // SwiGLU clamp, <= 0: none
  bool act_quant;          // e4m3 rounding of each quantized linear's input
  bool x_bf16;             // x and the intermediates stored as bfloat16
  bool round_bf16;         // values rounded to bfloat16 between steps (implied by x_bf16)
  bool quant_w13, quant_w2; // some expert's w1/w3 (w2) is quantized: act_quant has work there
  MoePath path;
};
// Bytes of device workspace moe_experts needs for `a` (it runs the tokens in chunks that fit a fixed budget).
size_t moe_workspace_bytes(const MoeArgs& a);
cudaError_t moe_experts(const MoeArgs& a, void* workspace, cudaStream_t stream);

// ---- attention.cu: sparse_attention, indexer_scores -----------------------------------------------------------

// sparse_attention: q [S, H, D], kv [T, D], dense [N, D] (N = 0: none) of one dtype; sink float32 [H]; idx int64
// [S, K] (entries < 0 or >= T skipped); limit int64 [S] (dense entry j visible to row s iff j < limit[s]);
// out [S, H, D] in q's dtype. Bfloat16 with H % 16 == 0, D % 64 == 0 and 16-byte aligned rows runs on tensor
// cores (attention.cu); anything else with D <= kAttnMaxD on the SIMT kernel (attention_simt.cu). Few rows split
// their candidates over several blocks, whose partials (workspace) are combined after.
constexpr int64_t kAttnMaxD = 1024;
struct AttnArgs {
  const void* q;
  const void* kv;
  const void* dense;
  const float* sink;
  const int64_t* idx;
  const int64_t* limit;
  void* out;
  int64_t S, H, D, K, N, T;
  float scale;
  bool bf16;
};
// The number of candidate splits the launch uses (1: none), and the float32 workspace that many need (bytes).
int sparse_attention_splits(const AttnArgs& a);
size_t sparse_attention_workspace_bytes(const AttnArgs& a, int splits);
cudaError_t sparse_attention(const AttnArgs& a, int splits, float* workspace, cudaStream_t stream);

// indexer_scores: out[s, t] = sum_h w[s, h] relu(q[s, h] . keys[t]) for q [S, H, D] and keys [T, D] of one dtype,
// w float32 [S, H], out float32 [S, T]. For bfloat16, each product and the sum are rounded to bfloat16 and so are
// the weights (as the twin's bfloat16 einsums). Bfloat16 with H % 16 == 0, D in {64, 128} and 16-byte aligned
// rows runs on tensor cores; the SIMT kernel takes D <= kIndexMaxD with H * D <= kIndexMaxHD.
constexpr int64_t kIndexMaxD = 1024, kIndexMaxHD = 16384;
cudaError_t indexer_scores(const void* q, const float* w, const void* keys, float* out, int64_t S, int64_t H,
                           int64_t D, int64_t T, bool bf16, cudaStream_t stream);

// ---- pointwise.cu: hc_sinkhorn, rope, hadamard, fp8_round, fp4_round -----------------------------------------
constexpr int kSinkhornMaxStreams = 8;  // hc_sinkhorn's largest n
constexpr int64_t kHadamardMaxDim = 1024; // hadamard's largest d (a warp's registers hold the row)
// mHC's weights from the mixing logits mixes [T, (2+n)n] (scale [3], base [(2+n)n], all float32 on the device):
// pre [T, n], post [T, n], comb [T, n, n], as ops_ref.hc_sinkhorn.
cudaError_t hc_sinkhorn(const float* mixes, const float* scale, const float* base, float* pre, float* post,
                        float* comb, int64_t tokens, int n, int iters, float eps, cudaStream_t stream);
// Interleaved RoPE on the last 2 * half of each row of x [rows, per_row, width] by row's cos/sin [rows, half]
// (float32); `inverse` rotates back. The other values copied into y.
cudaError_t rope(const void* x, const float* cos, const float* sin, void* y, int64_t rows, int64_t per_row,
                 int64_t width, int64_t half, bool inverse, bool bf16, cudaStream_t stream);
// Orthonormal Walsh-Hadamard transform (Sylvester order) of each row of x [rows, d], d a power of two up to
// kHadamardMaxDim; x and y 16-byte aligned.
cudaError_t hadamard(const void* x, void* y, int64_t rows, int64_t d, bool bf16, cudaStream_t stream);
// The first `width` values of each row of x [rows, d] rounded to e4m3 in blocks of `block` with UE8M0 scales
// (quant.fp8_round_blocks; width a multiple of block), the rest copied.
cudaError_t fp8_round(const void* x, void* y, int64_t rows, int64_t d, int64_t width, int64_t block, bool bf16,
                      cudaStream_t stream);
// Each row of x [rows, d] rounded to e2m1 in blocks of `block` (d a multiple of it) with UE8M0 scales
// (quant.fp4_round_blocks).
cudaError_t fp4_round(const void* x, void* y, int64_t rows, int64_t d, int64_t block, bool bf16,
                      cudaStream_t stream);


// ---- norm.cu: rms_norm, hc_post, and the pieces of hc_pre -----------------------------------------------------
// y[r] = w * x[r] / sqrt(mean(x[r]^2) + eps) for rows x [rows, d] (float32 w [d]).
cudaError_t rms_norm(const void* x, const float* w, void* y, int64_t rows, int64_t d, float eps, bool bf16,
                     cudaStream_t stream);
// out[r] = 1 / sqrt(mean(x[r]^2) + eps), float32 [rows].
cudaError_t row_rsqrt(const void* x, float* out, int64_t rows, int64_t d, float eps, bool bf16, cudaStream_t stream);
// y[t, k] = post[t, k] * o[t] + sum_j comb[t, j, k] * x[t, j] for o [T, d], x and y [T, n, d], post [T, n],
// comb [T, n, n] (float32).
cudaError_t hc_post(const void* o, const void* x, const float* post, const float* comb, void* y, int64_t tokens,
                    int n, int64_t d, bool bf16, cudaStream_t stream);
// u[t] = sum_j pre[t, j] * x[t, j] for x [T, n, d], pre float32 [T, n], u [T, d].
cudaError_t hc_collapse(const void* x, const float* pre, void* u, int64_t tokens, int n, int64_t d, bool bf16,
                        cudaStream_t stream);

}  // namespace v4cli::cuda
