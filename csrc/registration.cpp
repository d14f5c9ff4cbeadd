// One registration file: the schemas of every v4cli kernel and the builds that implement them.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(v4cli, m) {
  m.def("fp8_linear(Tensor x, Tensor weight, Tensor scale, bool act_quant) -> Tensor");
  m.def("fp4_linear(Tensor x, Tensor packed, Tensor scale, bool act_quant) -> Tensor");
  m.def("dense_linear(Tensor x, Tensor weight) -> Tensor");
  m.def("hc_sinkhorn(Tensor mixes, Tensor scale, Tensor base, int n, int iters, float eps) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(v4cli, CPU, m) {
  m.impl("fp8_linear", &v4cli::fp8_linear_cpu);
  m.impl("fp4_linear", &v4cli::fp4_linear_cpu);
  m.impl("dense_linear", &v4cli::dense_linear_cpu);
  m.impl("hc_sinkhorn", &v4cli::hc_sinkhorn_cpu);
}
