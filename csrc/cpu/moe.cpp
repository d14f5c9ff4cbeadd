// The routed-expert step of one MoE layer in one call: tokens grouped by expert, each expert's weights
// read once for all the tokens that picked it, SwiGLU with the V4 clamp, routing weights, and the sum over
// a token's experts in ascending expert order.
//
// Driven from Python this step was ~40 small torch ops per expert (gathers, casts, clamps, the three
// linears' wrappers, the scatter-add), several hundred per layer per decode step: host overhead that
// decides CPU decode at V4's depth. Here the grouping is a loop over the picks and each step an ATen or
// v4cli call from C++. The arithmetic is the twin's (ops_ref.moe_experts) op for op: the same linears, the
// same roundings to the model's dtype between steps, and SiLU as pointwise.silu (x / (exp(-x) + 1) with
// ATen's exp), so a token's result is the twin's up to the linears' summation order, and does not depend
// on the other tokens as long as the linears' results do not (up to 32 rows per expert).

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "../ops.h"
#include "parallel.h"

namespace v4cli {
namespace {

// A linear in its weight's format, as model.linear.Linear runs it through the kernels, rounded to the model's
// dtype (`bf16`) and returned as float32. x is float32 holding values of the model's dtype.
at::Tensor expert_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, bool act_quant, bool bf16) {
  at::Tensor y;
  if (w.scalar_type() == at::kFloat8_e4m3fn) {
    y = fp8_linear_cpu(x, w, s.view(at::kByte), act_quant);
  } else if (w.scalar_type() == at::kChar) {
    y = fp4_linear_cpu(x, w, s.view(at::kByte), act_quant);
  } else {  // float weights: the input promoted with the weight's dtype, as kernels.dense_linear does
    const bool narrow = bf16 && w.scalar_type() == at::kBFloat16;
    y = dense_linear_cpu(narrow ? x.to(at::kBFloat16) : x, w).to(at::kFloat);
  }
  return bf16 ? y.to(at::kBFloat16).to(at::kFloat) : y;
}

void check_lists(at::TensorList w, at::TensorList s, size_t n, const char* name) {
  TORCH_CHECK(w.size() == n && s.size() == n, "moe_experts: ", name, " and its scales must list ", n,
              " experts, got ", w.size(), " and ", s.size());
}

}  // namespace

at::Tensor moe_experts_cpu(const at::Tensor& x, const at::Tensor& weights, const at::Tensor& picks, at::TensorList w1,
                           at::TensorList s1, at::TensorList w3, at::TensorList s3, at::TensorList w2,
                           at::TensorList s2, double limit, bool act_quant, bool bf16) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "moe_experts: x must be a contiguous float32 [T, D] tensor");
  TORCH_CHECK(picks.dim() == 2 && picks.scalar_type() == at::kLong && picks.size(0) == x.size(0),
              "moe_experts: picks must be an int64 [T, k] tensor");
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.sizes() == picks.sizes(),
              "moe_experts: weights must be a float32 tensor shaped as picks");
  const size_t n_experts = w1.size();
  check_lists(w1, s1, n_experts, "w1");
  check_lists(w3, s3, n_experts, "w3");
  check_lists(w2, s2, n_experts, "w2");
  const int64_t tokens = picks.size(0), k = picks.size(1);
  const at::Tensor pk = picks.contiguous(), wt = weights.contiguous();
  const int64_t* p = pk.data_ptr<int64_t>();
  const float* wp = wt.data_ptr<float>();
  // Group by expert: token rows in ascending order, as torch.where(picks == e) lists them.
  std::vector<std::vector<int64_t>> rows(n_experts);
  std::vector<std::vector<float>> gains(n_experts);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = p[t * k + j];
      TORCH_CHECK(e >= 0 && e < static_cast<int64_t>(n_experts), "moe_experts: expert ", e, " out of range");
      rows[e].push_back(t);
      gains[e].push_back(wp[t * k + j]);
    }
  }
  std::vector<int64_t> active;
  for (size_t e = 0; e < n_experts; ++e)
    if (!rows[e].empty()) active.push_back(static_cast<int64_t>(e));
  std::vector<at::Tensor> idx(n_experts), out(n_experts);
  auto run = [&](int64_t e) {
    const int64_t n = static_cast<int64_t>(rows[e].size());
    idx[e] = at::from_blob(rows[e].data(), {n}, at::kLong).clone();
    const at::Tensor gain = at::from_blob(gains[e].data(), {n, 1}, at::kFloat).clone();
    const at::Tensor xe = n == tokens ? x : x.index_select(0, idx[e]);
    at::Tensor gate = expert_linear(xe, w1[e], s1[e], act_quant, bf16);
    at::Tensor up = expert_linear(xe, w3[e], s3[e], act_quant, bf16);
    if (limit > 0) {
      up = up.clamp(-limit, limit);
      gate = gate.clamp_max(limit);
    }
    at::Tensor h = gain * (gate / at::exp(-gate).add_(1) * up);
    if (bf16) h = h.to(at::kBFloat16).to(at::kFloat);
    out[e] = expert_linear(h.contiguous(), w2[e], s2[e], act_quant, bf16);
  };
  // Experts too small for their linears to split across threads (under ~256K weights, a decode step of a
  // narrow model) run side by side, one expert a task; larger ones one after the other, each linear using
  // every thread. The linears give the same result on any thread, and the sum below runs in expert order.
  const bool side_by_side = at::get_num_threads() > 1 && active.size() > 1 && w1[active[0]].numel() < (1 << 17) &&
                            tokens <= 32;
  if (side_by_side) {
    parallel_tasks(static_cast<int64_t>(active.size()), 1, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) run(active[i]);
    });
  } else {
    for (const int64_t e : active) run(e);
  }
  at::Tensor y = at::zeros(x.sizes(), x.options());
  for (const int64_t e : active) y.index_add_(0, idx[e], out[e]);
  return y;
}

}  // namespace v4cli
