// The kernels behind v4cli.runtime.ops, declared once; registration.cpp exposes them as torch.ops.v4cli.*.
#pragma once

#include <ATen/ATen.h>

namespace v4cli {

// y[M, N] = x[M, K] @ dequant(W)^T for a few rows of float32 input (decode, speculative verify).
// W is e4m3 [N, K] with UE8M0 scales over 128x128 tiles, or packed e2m1 [N, K/2] with a UE8M0 scale
// per 32 inputs of a row. The input rounding (act_quant) is applied by the caller, as in the twins.
at::Tensor fp8_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale);
at::Tensor fp4_linear_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale);

}  // namespace v4cli
