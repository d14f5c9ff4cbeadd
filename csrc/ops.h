// The kernels behind v4cli.runtime.ops, declared once; registration.cpp exposes them as torch.ops.v4cli.*.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace v4cli {

// y[M, N] = x[M, K] @ dequant(W)^T for float32 input: a row kernel for decode, dequantize-then-GEMM past 32 rows.
// W is e4m3 [N, K] with UE8M0 scales over 128x128 tiles, or packed e2m1 [N, K/2] with a UE8M0 scale
// per 32 inputs of a row. With act_quant, x is first rounded as the reference's FP8 GEMM input.
at::Tensor fp8_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale, bool act_quant);
at::Tensor fp4_linear_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, bool act_quant);

// y[M, N] = x[M, K] @ W[N, K]^T for float32 or bfloat16 x and W (same dtype; float32 sums, output in that
// dtype). Each output is summed in one fixed order, so a row's result does not depend on the other rows.
at::Tensor dense_linear_cpu(const at::Tensor& x, const at::Tensor& weight);

// mHC weights from the mixing logits [T, (2+n)n]: pre [T, n], post [T, n], comb [T, n, n] (Sinkhorn).
std::tuple<at::Tensor, at::Tensor, at::Tensor> hc_sinkhorn_cpu(const at::Tensor& mixes, const at::Tensor& scale,
                                                               const at::Tensor& base, int64_t n, int64_t iters,
                                                               double eps);

}  // namespace v4cli
