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

// ---- pointwise.cu: hc_sinkhorn, rope, hadamard, fp8_round, fp4_round -----------------------------------------

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
