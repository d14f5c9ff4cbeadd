// One registration file: the schemas of every v4cli kernel and the builds that implement them.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(v4cli, m) {
  m.def("fp8_linear(Tensor x, Tensor weight, Tensor scale, bool act_quant) -> Tensor");
  m.def("fp4_linear(Tensor x, Tensor packed, Tensor scale, bool act_quant) -> Tensor");
  m.def("dense_linear(Tensor x, Tensor weight) -> Tensor");
  m.def("moe_experts(Tensor x, Tensor weights, Tensor picks, Tensor[] w1, Tensor[] s1, Tensor[] w3, Tensor[] s3, "
        "Tensor[] w2, Tensor[] s2, float limit, bool act_quant, bool bf16) -> Tensor");
  m.def("sparse_attention(Tensor q, Tensor kv, Tensor sink, Tensor idx, float softmax_scale, Tensor? dense, "
        "Tensor? limit) -> Tensor");
  m.def("indexer_scores(Tensor q, Tensor weights, Tensor keys) -> Tensor");
  m.def("rope(Tensor x, Tensor cos, Tensor sin, bool inverse) -> Tensor");
  m.def("hadamard(Tensor x) -> Tensor");
  m.def("fp8_round(Tensor x, int block, int width) -> Tensor");
  m.def("fp4_round(Tensor x, int block) -> Tensor");
  m.def("hc_sinkhorn(Tensor mixes, Tensor scale, Tensor base, int n, int iters, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("rms_norm(Tensor x, Tensor? weight, float eps) -> Tensor");
  m.def("hc_pre(Tensor x, Tensor fn, Tensor scale, Tensor base, int n, int iters, float eps, float norm_eps) -> "
        "(Tensor, Tensor, Tensor)");
  m.def("hc_post(Tensor o, Tensor x, Tensor post, Tensor comb) -> Tensor");
}

TORCH_LIBRARY_IMPL(v4cli, CPU, m) {
  m.impl("fp8_linear", &v4cli::fp8_linear_cpu);
  m.impl("fp4_linear", &v4cli::fp4_linear_cpu);
  m.impl("dense_linear", &v4cli::dense_linear_cpu);
  m.impl("moe_experts", &v4cli::moe_experts_cpu);
  m.impl("sparse_attention", &v4cli::sparse_attention_cpu);
  m.impl("indexer_scores", &v4cli::indexer_scores_cpu);
  m.impl("hc_sinkhorn", &v4cli::hc_sinkhorn_cpu);
  m.impl("rope", &v4cli::rope_cpu);
  m.impl("hadamard", &v4cli::hadamard_cpu);
  m.impl("fp8_round", &v4cli::fp8_round_cpu);
  m.impl("fp4_round", &v4cli::fp4_round_cpu);
  m.impl("rms_norm", &v4cli::rms_norm_cpu);
  m.impl("hc_pre", &v4cli::hc_pre_cpu);
  m.impl("hc_post", &v4cli::hc_post_cpu);
}
