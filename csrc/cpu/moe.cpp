// The routed-expert step of one MoE layer in one call: tokens grouped by expert, each expert's weights
// read once for all the tokens that picked it, SwiGLU with the V4 clamp, routing weights, and the sum over
// a token's experts in ascending expert order.
//
// Driven from Python this step was ~40 small torch ops per expert (gathers, casts, clamps, the three
// linears' wrappers, the scatter-add), several hundred per layer per decode step: host overhead that
// decides CPU decode at V4's depth. Here the grouping is a loop over the picks, the linears are our kernels
// and the rest loops over raw rows. The arithmetic is the twin's (ops_ref.moe_experts) step for step: the
// same linears, the same roundings to the model's dtype between steps, and SiLU as pointwise.silu
// (x / (exp(-x) + 1)), so a token's result is the twin's up to the linears' summation order and the exp's
// last bit, and does not depend on the other tokens as long as the linears' results do not (up to 32 rows
// per expert).

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../ops.h"
#include "parallel.h"

namespace v4cli {
namespace {

// Values rounded to bfloat16 in place (nearest even, as torch's cast), kept as float32.
void round_bf16(float* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(c10::BFloat16(p[i]));
}

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
  if (bf16) round_bf16(y.data_ptr<float>(), y.numel());
  return y;
}

void check_lists(at::TensorList w, at::TensorList s, size_t n, const char* name) {
  TORCH_CHECK(w.size() == n && s.size() == n, "moe_experts: ", name, " and its scales must list ", n,
              " experts, got ", w.size(), " and ", s.size());
}

}  // namespace

at::Tensor moe_experts_cpu(const at::Tensor& x_, const at::Tensor& weights, const at::Tensor& picks, at::TensorList w1,
                           at::TensorList s1, at::TensorList w3, at::TensorList s3, at::TensorList w2,
                           at::TensorList s2, double limit, bool act_quant, bool bf16) {
  TORCH_CHECK(x_.dim() == 2 && (x_.scalar_type() == at::kFloat || x_.scalar_type() == at::kBFloat16) &&
                  x_.is_contiguous(),
              "moe_experts: x must be a contiguous float32 or bfloat16 [T, D] tensor");
  const at::Tensor x = x_.scalar_type() == at::kFloat ? x_ : x_.to(at::kFloat);  // widening is exact
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
  std::vector<at::Tensor> out(n_experts);
  const int64_t D = x.size(1);
  const float* xp = x.data_ptr<float>();
  const float lim = static_cast<float>(limit);
  auto run = [&](int64_t e) {
    const int64_t n = static_cast<int64_t>(rows[e].size());
    at::Tensor xe = x;
    if (n != tokens) {  // this expert's token rows, gathered
      xe = at::empty({n, D}, x.options());
      float* dst = xe.data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * D, xp + rows[e][i] * D, D * sizeof(float));
    }
    at::Tensor gate = expert_linear(xe, w1[e], s1[e], act_quant, bf16);
    const at::Tensor up = expert_linear(xe, w3[e], s3[e], act_quant, bf16);
    // h = gain * silu(min(gate, limit)) * clamp(up, -limit, limit), in gate's buffer; silu as
    // pointwise.silu: g / (exp(-g) + 1)
    float* g = gate.data_ptr<float>();
    const float* u = up.data_ptr<float>();
    const int64_t inter = gate.size(1);
    // rows on torch's threads (a prefill chunk's SwiGLU is millions of exps; inline when already in a task)
    parallel_tasks(n, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, inter)), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        float* gi = g + i * inter;
        const float* ui = u + i * inter;
        for (int64_t j = 0; j < inter; ++j) {
          float gv = gi[j], uv = ui[j];
          if (lim > 0) {
            uv = std::min(std::max(uv, -lim), lim);
            gv = std::min(gv, lim);
          }
          gi[j] = gains[e][i] * (gv / (std::exp(-gv) + 1.f) * uv);
        }
        if (bf16) round_bf16(gi, inter);
      }
    });
    out[e] = expert_linear(gate, w2[e], s2[e], act_quant, bf16);
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
  float* yp = y.data_ptr<float>();
  for (const int64_t e : active) {  // experts in ascending order, as the twin's loop adds them
    const float* o = out[e].data_ptr<float>();
    const int64_t n = static_cast<int64_t>(rows[e].size());  // distinct tokens: their rows split freely
    parallel_tasks(n, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, D)), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        float* yr = yp + rows[e][i] * D;
        for (int64_t j = 0; j < D; ++j) yr[j] += o[i * D + j];
      }
    });
  }
  return y;
}

}  // namespace v4cli
