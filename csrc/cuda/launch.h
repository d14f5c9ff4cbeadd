// The CUDA kernels' launchers: plain C++ over raw device pointers and sizes, one stream each, so that the .cu files
// compile without torch's headers (seconds, not minutes) and registration.cpp binds them to torch. Each returns
// the launch's error (cudaGetLastError), never throws. Tensors are contiguous, row-major; `bf16` means the
// float-typed pointers hold bfloat16 (uint16 bits), else float32.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace v4cli::cuda {

// ---- linear.cu: fp8_linear, fp4_linear, dense_linear ----------------------------------------------------------

// ---- moe.cu: moe_experts ---------------------------------------------------------------------------------------

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
