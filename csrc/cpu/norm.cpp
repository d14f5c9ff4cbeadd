// RMSNorm and mHC's pre/post around every sublayer, each one call from Python. The twins (ops_ref.rms_norm,
// hc_pre, hc_post) are 6-13 small torch ops each, four to six times per layer at every decode step: their
// Python-level dispatch, not their arithmetic, is what a decode step on the CPU spent here. These run the
// twins' ATen ops in the same order from C++ (so rms_norm and hc_post equal their twins bit for bit), with our
// dense_linear and hc_sinkhorn kernels inside hc_pre.

#include <ATen/ATen.h>

#include "../ops.h"

namespace v4cli {

at::Tensor rms_norm_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight_opt, double eps) {
  if (!weight_opt.has_value()) {  // the query heads: the factor in x's dtype, times x in x's dtype
    return x * at::rsqrt(x.to(at::kFloat).square().mean(-1, /*keepdim=*/true) + eps).to(x.scalar_type());
  }
  const at::Tensor& weight = *weight_opt;
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1),
              "rms_norm: weight must be [D] for x [..., D]");
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor normed = xf * at::rsqrt(xf.square().mean(-1, /*keepdim=*/true) + eps);
  return (weight * normed).to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hc_pre_cpu(const at::Tensor& x, const at::Tensor& fn,
                                                          const at::Tensor& scale, const at::Tensor& base, int64_t n,
                                                          int64_t iters, double eps, double norm_eps) {
  TORCH_CHECK(x.dim() == 3 && x.size(1) == n, "hc_pre: x must be [T, n, D] with n = ", n);
  TORCH_CHECK(fn.dim() == 2 && fn.size(1) == n * x.size(2), "hc_pre: fn must be [(2+n)n, n*D]");
  const at::Tensor flat = x.flatten(1).to(at::kFloat).contiguous();
  const at::Tensor rsqrt = at::rsqrt(flat.square().mean(-1, /*keepdim=*/true) + norm_eps);
  const at::Tensor w = fn.scalar_type() == at::kFloat ? fn.contiguous() : fn.to(at::kFloat).contiguous();
  const at::Tensor mixes = dense_linear_cpu(flat, w) * rsqrt;
  auto [pre, post, comb] = hc_sinkhorn_cpu(mixes, scale, base, n, iters, eps);
  const at::Tensor u = (pre.unsqueeze(-1) * x.to(at::kFloat)).sum(1);
  return {u.to(x.scalar_type()), post, comb};
}

at::Tensor hc_post_cpu(const at::Tensor& o, const at::Tensor& x, const at::Tensor& post, const at::Tensor& comb) {
  TORCH_CHECK(x.dim() == 3 && o.dim() == 2 && o.size(0) == x.size(0) && o.size(1) == x.size(2),
              "hc_post: o must be [T, D] for streams x [T, n, D]");
  const at::Tensor mixed = at::einsum("tjk,tjd->tkd", {comb, x.to(at::kFloat)});
  return (post.unsqueeze(-1) * o.to(at::kFloat).unsqueeze(1) + mixed).to(x.scalar_type());
}

}  // namespace v4cli
