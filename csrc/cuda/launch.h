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

}  // namespace v4cli::cuda
