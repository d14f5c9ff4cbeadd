// The CUDA kernels behind v4cli.runtime.ops under torch's CUDA dispatch key (the schemas are csrc/registration.cpp's,
// loaded first with the CPU build): argument checks, output allocation and the current stream here; the kernels are
// plain CUDA C++ on raw pointers (launch.h). An op without a block here has no CUDA kernel: ops runs its twin.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/core/dispatch/Dispatcher.h>
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

// ---- norm: rms_norm, hc_post, hc_pre ---------------------------------------------------------------------------

namespace {

at::Tensor rms_norm_cuda(const at::Tensor& x_in, const std::optional<at::Tensor>& weight_opt, double eps) {
  c10::cuda::CUDAGuard guard(x_in.device());
  TORCH_CHECK(weight_opt.has_value(), "rms_norm: the unweighted form has no CUDA kernel (the wrapper runs its twin)");
  const at::Tensor& weight = *weight_opt;
  const at::Tensor x = x_in.contiguous();
  check_cuda(x, "rms_norm: x");
  check_cuda(weight, "rms_norm: weight");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.dim() == 1 && x.dim() >= 1 && weight.size(0) == x.size(-1),
              "rms_norm: weight must be float32 [D] for x [..., D]");
  const bool bf16 = is_bf16(x, "rms_norm: x");
  at::Tensor y = at::empty_like(x);
  const int64_t d = x.size(-1), rows = d ? x.numel() / d : 0;
  check_launch(cuda::rms_norm(x.data_ptr(), weight.data_ptr<float>(), y.data_ptr(), rows, d,
                              static_cast<float>(eps), bf16, current_stream()),
               "rms_norm");
  return y;
}

at::Tensor hc_post_cuda(const at::Tensor& o_in, const at::Tensor& x_in, const at::Tensor& post_in,
                        const at::Tensor& comb_in) {
  c10::cuda::CUDAGuard guard(x_in.device());
  TORCH_CHECK(x_in.dim() == 3 && o_in.dim() == 2 && o_in.size(0) == x_in.size(0) && o_in.size(1) == x_in.size(2),
              "hc_post: o must be [T, D] for streams x [T, n, D]");
  const int64_t T = x_in.size(0), n = x_in.size(1), d = x_in.size(2);
  const at::Tensor x = x_in.contiguous(), o = o_in.to(x.scalar_type()).contiguous();
  const at::Tensor post = post_in.to(at::kFloat).contiguous(), comb = comb_in.to(at::kFloat).contiguous();
  TORCH_CHECK(post.numel() == T * n && comb.numel() == T * n * n, "hc_post: post must be [T, n], comb [T, n, n]");
  for (const auto* t : {&x, &o, &post, &comb}) check_cuda(*t, "hc_post: every input");
  const bool bf16 = is_bf16(x, "hc_post: x");
  at::Tensor y = at::empty_like(x);
  check_launch(cuda::hc_post(o.data_ptr(), x.data_ptr(), post.data_ptr<float>(), comb.data_ptr<float>(),
                             y.data_ptr(), T, static_cast<int>(n), d, bf16, current_stream()),
               "hc_post");
  return y;
}

// The mixing logits are a [T, nD] x [nD, (2+n)n] float32 product (cuBLAS, through ATen), the weights come from
// whatever implements v4cli::hc_sinkhorn for CUDA (pointwise.cu), the rest are the kernels above.
std::tuple<at::Tensor, at::Tensor, at::Tensor> hc_pre_cuda(const at::Tensor& x_in, const at::Tensor& fn,
                                                           const at::Tensor& scale, const at::Tensor& base, int64_t n,
                                                           int64_t iters, double eps, double norm_eps) {
  c10::cuda::CUDAGuard guard(x_in.device());
  TORCH_CHECK(x_in.dim() == 3 && x_in.size(1) == n, "hc_pre: x must be [T, n, D] with n = ", n);
  TORCH_CHECK(fn.dim() == 2 && fn.size(1) == n * x_in.size(2), "hc_pre: fn must be [(2+n)n, n*D]");
  const at::Tensor x = x_in.contiguous();
  check_cuda(x, "hc_pre: x");
  const bool bf16 = is_bf16(x, "hc_pre: x");
  const int64_t T = x.size(0), d = x.size(2);
  at::Tensor rsqrt = at::empty({T, 1}, x.options().dtype(at::kFloat));
  check_launch(cuda::row_rsqrt(x.data_ptr(), rsqrt.data_ptr<float>(), T, n * d, static_cast<float>(norm_eps), bf16,
                               current_stream()),
               "hc_pre (row rsqrt)");
  const at::Tensor mixes = at::linear(x.view({T, n * d}).to(at::kFloat), fn.to(at::kFloat)) * rsqrt;
  static const auto sinkhorn = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow("v4cli::hc_sinkhorn", "")
                                   .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                       const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                       double)>();
  auto [pre, post, comb] = sinkhorn.call(mixes, scale, base, n, iters, eps);
  const at::Tensor pre_f = pre.to(at::kFloat).contiguous();
  at::Tensor u = at::empty({T, d}, x.options());
  check_launch(cuda::hc_collapse(x.data_ptr(), pre_f.data_ptr<float>(), u.data_ptr(), T, static_cast<int>(n), d,
                                 bf16, current_stream()),
               "hc_pre (collapse)");
  return {u, post, comb};
}

}  // namespace

TORCH_LIBRARY_IMPL(v4cli, CUDA, m) {
  m.impl("rms_norm", &rms_norm_cuda);
  m.impl("hc_post", &hc_post_cuda);
  m.impl("hc_pre", &hc_pre_cuda);
}

}  // namespace v4cli
