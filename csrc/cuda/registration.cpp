// The CUDA kernels behind v4cli.runtime.ops under torch's CUDA dispatch key (the schemas are csrc/registration.cpp's,
// loaded first with the CPU build): argument checks, output allocation and the current stream here; the kernels are
// plain CUDA C++ on raw pointers (launch.h). An op without a block here has no CUDA kernel: ops runs its twin.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "launch.h"

namespace v4cli {
namespace {

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// A launch's error as a torch error (with the kernel's name), so that Python sees a RuntimeError.
void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": ", cudaGetErrorString(err));
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

bool is_bf16(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name,
              " must be float32 or bfloat16, not ", t.scalar_type());
  return t.scalar_type() == at::kBFloat16;
}

}  // namespace

// ---- linear: fp8_linear, fp4_linear, dense_linear --------------------------------------------------------------

// ---- moe: moe_experts -------------------------------------------------------------------------------------------

// ---- attention: sparse_attention, indexer_scores --------------------------------------------------------------

// ---- pointwise: hc_sinkhorn, rope, hadamard, fp8_round, fp4_round --------------------------------------------

}  // namespace v4cli
