// The kernels behind v4cli.runtime.ops, declared once; registration.cpp exposes them as torch.ops.v4cli.*.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace v4cli {

// y[M, N] = x[M, K] @ dequant(W)^T for float32 or bfloat16 input (output in its dtype): a row kernel for decode,
// dequantize-then-GEMM past 32 rows.
// W is e4m3 [N, K] with UE8M0 scales over 128x128 tiles, or packed e2m1 [N, K/2] with a UE8M0 scale
// per 32 inputs of a row. With act_quant, x is first rounded as the reference's FP8 GEMM input.
at::Tensor fp8_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale, bool act_quant);
at::Tensor fp4_linear_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, bool act_quant);

// y[M, N] = x[M, K] @ W[N, K]^T for float32 or bfloat16 x and W (float32 sums, output in x's dtype; x and W
// of one dtype, or float32 x with a bfloat16 W, widened exactly). Each output is summed in one fixed order,
// so a row's result does not depend on the other rows.
at::Tensor dense_linear_cpu(const at::Tensor& x, const at::Tensor& weight);

// The routed experts' SwiGLU step (see ops_ref.moe_experts): x float32 or bfloat16 [T, D] holding the model's values
// (`bf16`: round between steps as a bfloat16 model does), picks/weights [T, k], per-expert weight lists in
// their own formats (e4m3, packed e2m1, or float with an empty scale). Float32 [T, D] out.
at::Tensor moe_experts_cpu(const at::Tensor& x, const at::Tensor& weights, const at::Tensor& picks, at::TensorList w1,
                           at::TensorList s1, at::TensorList w3, at::TensorList s3, at::TensorList w2,
                           at::TensorList s2, double limit, bool act_quant, bool bf16);

// Shared-KV attention with a per-head sink (see ops_ref.sparse_attention): q [S, H, D], kv [T, D] and dense [N, D]
// float32 or bfloat16, sink float32 [H], idx int64 [S, K] (negative = skip), limit int64 [S] (dense j < limit[s]).
// Float32 sums, online softmax; output in q's dtype. A row's result does not depend on the other rows.
at::Tensor sparse_attention_cpu(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& sink,
                                const at::Tensor& idx, double softmax_scale, const std::optional<at::Tensor>& dense,
                                const std::optional<at::Tensor>& limit);

// Lightning-indexer scores sum_h w[s,h] relu(q[s,h] . k[t]), float32 [S, T]: q [S, H, D] and keys [T, D] float32
// or bfloat16, weights float32 [S, H]. For bfloat16 q the products and the result round to bfloat16 as the twin's.
at::Tensor indexer_scores_cpu(const at::Tensor& q, const at::Tensor& weights, const at::Tensor& keys);

// mHC weights from the mixing logits [T, (2+n)n]: pre [T, n], post [T, n], comb [T, n, n] (Sinkhorn).
std::tuple<at::Tensor, at::Tensor, at::Tensor> hc_sinkhorn_cpu(const at::Tensor& mixes, const at::Tensor& scale,
                                                               const at::Tensor& base, int64_t n, int64_t iters,
                                                               double eps);

// Interleaved RoPE on the last 2 * cos.size(1) dims of every row of x [T, ..., D] (float32 or bfloat16) by that
// row's angles (cos/sin float32 [T, dim/2]; `inverse` rotates back); the other dims are copied. x's dtype out.
at::Tensor rope_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool inverse);

// Orthonormal Walsh-Hadamard transform (Sylvester order) over the last dim (a power of two), float32 sums.
at::Tensor hadamard_cpu(const at::Tensor& x);

// The reference's activation rounding in blocks along the last dim, each block with a UE8M0 scale: to e4m3 for
// the first `width` values of each row (amax floor 1e-4; the rest copied), to e2m1 for all (floor 6 * 2^-126).
at::Tensor fp8_round_cpu(const at::Tensor& x, int64_t block, int64_t width);
at::Tensor fp4_round_cpu(const at::Tensor& x, int64_t block);

// RMSNorm over the last dim with a float32 weight, in float32, x's dtype out; without a weight the query heads'
// variant (ops_ref.rms_norm).
at::Tensor rms_norm_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight, double eps);

// mHC's pre (streams x [T, n, D] -> sublayer input u [T, D], post [T, n], comb [T, n, n]) and post (the sublayer's
// output o [T, D] mixed back into the streams), as ops_ref.hc_pre / hc_post.
std::tuple<at::Tensor, at::Tensor, at::Tensor> hc_pre_cpu(const at::Tensor& x, const at::Tensor& fn,
                                                          const at::Tensor& scale, const at::Tensor& base, int64_t n,
                                                          int64_t iters, double eps, double norm_eps);
at::Tensor hc_post_cpu(const at::Tensor& o, const at::Tensor& x, const at::Tensor& post, const at::Tensor& comb);

}  // namespace v4cli
