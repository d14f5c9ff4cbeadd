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

namespace {

// x [M, K] on the weight's device, float32 or bfloat16, rows of stride x.stride(0) (a group of the heads' output
// is a strided view: read in place).
void linear_check_x(const at::Tensor& x, const at::Tensor& w, int64_t k, const char* op) {
  TORCH_CHECK(x.is_cuda() && x.device() == w.device(), op, ": x must be a CUDA tensor on the weight's device");
  TORCH_CHECK(x.dim() == 2, op, ": x must be [M, K], got ", x.sizes());
  TORCH_CHECK(x.size(1) == k, op, ": x has ", x.size(1), " inputs, the weight ", k);
  is_bf16(x, op);
}

at::Tensor linear_run(const at::Tensor& x_in, const at::Tensor& w, const std::optional<at::Tensor>& scale, int fmt,
                      int64_t n, int64_t k, bool act_quant, at::ScalarType out_dtype, const char* op) {
  // rows are read in place when their elements are adjacent (a row stride of its own is fine)
  const bool in_place = (k <= 1 || x_in.stride(1) == 1) && (x_in.size(0) <= 1 || x_in.stride(0) >= k);
  const at::Tensor x = in_place ? x_in : x_in.contiguous();
  at::Tensor y = at::empty({x.size(0), n}, x.options().dtype(out_dtype));
  TORCH_CHECK(n < (int64_t(1) << 31) && k < (int64_t(1) << 31), op, ": N and K must be below 2^31");
  cuda::LinearArgs a{};
  a.x = x.data_ptr();
  a.ldx = x.size(0) <= 1 ? k : x.stride(0);
  a.x_bf16 = x.scalar_type() == at::kBFloat16;
  a.w = w.data_ptr();
  a.scale = scale ? static_cast<const uint8_t*>(scale->data_ptr()) : nullptr;
  a.fmt = fmt;
  a.y = y.data_ptr();
  a.y_bf16 = out_dtype == at::kBFloat16;
  a.M = x.size(0);
  a.N = static_cast<int>(n);
  a.K = static_cast<int>(k);
  a.act_quant = act_quant;
  const auto bytes = static_cast<int64_t>(cuda::linear_workspace_bytes(a));
  at::Tensor workspace = at::empty({bytes}, x.options().dtype(at::kByte));
  check_launch(cuda::linear(a, workspace.data_ptr(), current_stream()), op);
  return y;
}

void linear_check_scale(const at::Tensor& s, const at::Tensor& w, int64_t rows, int64_t cols, const char* op,
                        const char* what) {
  TORCH_CHECK(s.device() == w.device() && s.is_contiguous() && s.element_size() == 1 && s.dim() == 2 &&
                  s.size(0) == rows && s.size(1) == cols,
              op, ": scale must be a contiguous one-byte (UE8M0) ", what, " = [", rows, ", ", cols,
              "] tensor on the weight's device, got ", s.sizes());
}

at::Tensor fp8_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale, bool act_quant) {
  c10::cuda::CUDAGuard guard(weight.device());
  check_cuda(weight, "fp8_linear: weight");
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat8_e4m3fn,
              "fp8_linear: weight must be a float8_e4m3fn [N, K] tensor");
  const int64_t n = weight.size(0), k = weight.size(1);
  linear_check_x(x, weight, k, "fp8_linear");
  linear_check_scale(scale, weight, (n + 127) / 128, (k + 127) / 128, "fp8_linear", "[ceil(N/128), ceil(K/128)]");
  return linear_run(x, weight, scale, cuda::kMoeFormatFp8, n, k, act_quant, x.scalar_type(), "fp8_linear");
}

at::Tensor fp4_linear_cuda(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, bool act_quant) {
  c10::cuda::CUDAGuard guard(packed.device());
  check_cuda(packed, "fp4_linear: packed");
  TORCH_CHECK(packed.dim() == 2 && packed.element_size() == 1, "fp4_linear: packed must be an int8 [N, K/2] tensor");
  const int64_t n = packed.size(0), k = packed.size(1) * 2;
  TORCH_CHECK(k % 32 == 0, "fp4_linear: K must be a multiple of 32, got ", k);
  linear_check_x(x, packed, k, "fp4_linear");
  linear_check_scale(scale, packed, n, k / 32, "fp4_linear", "[N, K/32]");
  return linear_run(x, packed, scale, cuda::kMoeFormatFp4, n, k, act_quant, x.scalar_type(), "fp4_linear");
}

at::Tensor dense_linear_cuda(const at::Tensor& x, const at::Tensor& weight) {
  c10::cuda::CUDAGuard guard(weight.device());
  check_cuda(weight, "dense_linear: weight");
  TORCH_CHECK(weight.dim() == 2, "dense_linear: weight must be [N, K]");
  const bool w_bf16 = is_bf16(weight, "dense_linear: weight");
  const int64_t n = weight.size(0), k = weight.size(1);
  linear_check_x(x, weight, k, "dense_linear");
  // the promoted dtype: bfloat16 only when both are (widening bfloat16 is exact: the kernel reads W as it is)
  const at::ScalarType out = w_bf16 && x.scalar_type() == at::kBFloat16 ? at::kBFloat16 : at::kFloat;
  return linear_run(x, weight, std::nullopt, w_bf16 ? cuda::kMoeFormatBf16 : cuda::kMoeFormatF32, n, k, false, out,
                    "dense_linear");
}

}  // namespace

TORCH_LIBRARY_IMPL(v4cli, CUDA, m) {
  m.impl("fp8_linear", &fp8_linear_cuda);
  m.impl("fp4_linear", &fp4_linear_cuda);
  m.impl("dense_linear", &dense_linear_cuda);
}

// ---- moe: moe_experts -------------------------------------------------------------------------------------------

namespace {

// Expert e's matrix `name` ([rows, cols] of the model's: w1/w3 [inter, D], w2 [D, inter]) and its scale: checked,
// and its format code for the kernels' table.
int64_t moe_format_of(const at::Tensor& w, const at::Tensor& s, int64_t rows, int64_t cols, const at::Tensor& x,
                      const char* name, size_t e) {
  TORCH_CHECK(w.device() == x.device() && w.is_contiguous() && w.dim() == 2, "moe_experts: ", name, "[", e,
              "] must be a contiguous 2-d tensor on x's device");
  auto check_scale = [&](int64_t r, int64_t c) {
    TORCH_CHECK(s.device() == x.device() && s.is_contiguous() && s.element_size() == 1 && s.dim() == 2 &&
                    s.size(0) == r && s.size(1) == c,
                "moe_experts: the scale of ", name, "[", e, "] must be a contiguous one-byte [", r, ", ", c,
                "] tensor on x's device, got ", s.sizes());
  };
  const at::ScalarType st = w.scalar_type();
  if (st == at::kFloat8_e4m3fn) {
    TORCH_CHECK(w.size(0) == rows && w.size(1) == cols, "moe_experts: ", name, "[", e, "] must be [", rows, ", ",
                cols, "], got ", w.sizes());
    check_scale((rows + 127) / 128, (cols + 127) / 128);
    return cuda::kMoeFormatFp8;
  }
  if (st == at::kChar) {
    TORCH_CHECK(cols % 32 == 0, "moe_experts: FP4 weights need their inputs (", cols, ") a multiple of 32");
    TORCH_CHECK(w.size(0) == rows && w.size(1) == cols / 2, "moe_experts: packed ", name, "[", e, "] must be [",
                rows, ", ", cols / 2, "], got ", w.sizes());
    check_scale(rows, cols / 32);
    return cuda::kMoeFormatFp4;
  }
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, "moe_experts: ", name, "[", e,
              "] has an unsupported dtype ", st);
  TORCH_CHECK(w.size(0) == rows && w.size(1) == cols, "moe_experts: ", name, "[", e, "] must be [", rows, ", ", cols,
              "], got ", w.sizes());
  return st == at::kFloat ? cuda::kMoeFormatF32 : st == at::kBFloat16 ? cuda::kMoeFormatBf16 : cuda::kMoeFormatF16;
}

// The expert table on the device, cached by its content (pointers and formats): a layer's lists give the same
// table every step, so after the first step a call copies nothing. The cache is never destroyed (it would free
// CUDA memory after the driver's teardown at exit); past kMaxTables entries (weights reloaded many times) it is
// emptied, after the device is idle, so that no queued kernel still reads a table.
at::Tensor moe_table(const std::vector<int64_t>& host, const at::Device& device) {
  constexpr size_t kMaxTables = 512;
  static std::mutex mu;
  static auto* cache = new std::unordered_map<std::string, at::Tensor>();
  std::string key(reinterpret_cast<const char*>(host.data()), host.size() * sizeof(int64_t));
  key += std::to_string(device.index());
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = cache->find(key); it != cache->end()) return it->second;
  if (cache->size() >= kMaxTables) {
    C10_CUDA_CHECK(cudaDeviceSynchronize());
    cache->clear();
  }
  const int64_t n = static_cast<int64_t>(host.size());
  at::Tensor table = at::empty({n}, at::TensorOptions().dtype(at::kLong).device(device));
  table.copy_(at::from_blob(const_cast<int64_t*>(host.data()), {n}, at::kLong));  // synchronous: host outlives it
  cache->emplace(std::move(key), table);
  return table;
}

void moe_check_list(at::TensorList w, at::TensorList s, size_t n, const char* name) {
  TORCH_CHECK(w.size() == n && s.size() == n, "moe_experts: ", name, " and its scales must list ", n,
              " experts, got ", w.size(), " and ", s.size());
}

at::Tensor moe_experts_cuda(const at::Tensor& x, const at::Tensor& weights, const at::Tensor& picks,
                            at::TensorList w1, at::TensorList s1, at::TensorList w3, at::TensorList s3,
                            at::TensorList w2, at::TensorList s2, double limit, bool act_quant, bool bf16) {
  c10::cuda::CUDAGuard guard(x.device());
  check_cuda(x, "moe_experts: x");
  TORCH_CHECK(x.dim() == 2, "moe_experts: x must be [T, D]");
  const bool x_bf16 = is_bf16(x, "moe_experts: x");
  TORCH_CHECK(!x_bf16 || bf16, "moe_experts: a bfloat16 x takes bf16 = true");
  check_cuda(weights, "moe_experts: weights");
  check_cuda(picks, "moe_experts: picks");
  TORCH_CHECK(weights.device() == x.device() && picks.device() == x.device(),
              "moe_experts: weights and picks must be on x's device");
  TORCH_CHECK(picks.dim() == 2 && picks.scalar_type() == at::kLong && picks.size(0) == x.size(0),
              "moe_experts: picks must be an int64 [T, k] tensor");
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.sizes() == picks.sizes(),
              "moe_experts: weights must be a float32 tensor shaped as picks");
  const size_t E = w1.size();
  moe_check_list(w1, s1, E, "w1");
  moe_check_list(w3, s3, E, "w3");
  moe_check_list(w2, s2, E, "w2");
  const int64_t T = x.size(0), D = x.size(1), k = picks.size(1);
  const auto zeros = [&] { return at::zeros({T, D}, x.options().dtype(at::kFloat)); };
  if (T == 0 || D == 0 || k == 0) return zeros();
  TORCH_CHECK(E > 0, "moe_experts: picks name experts but the lists are empty");
  TORCH_CHECK(w1[0].dim() == 2, "moe_experts: w1[0] must be [inter, D]");
  const int64_t inter = w1[0].size(0);
  TORCH_CHECK(E <= static_cast<size_t>(cuda::kMoeMaxExperts) && k <= cuda::kMoeMaxPicks, "moe_experts: at most ",
              cuda::kMoeMaxExperts, " experts and ", cuda::kMoeMaxPicks, " picks per token, got ", E, " and ", k);
  TORCH_CHECK(D < (int64_t(1) << 24) && inter < (int64_t(1) << 24), "moe_experts: D and inter must be below 2^24");

  // the table: weight pointers, scale pointers, format codes (matrix m of expert e at m * E + e of each third)
  std::vector<int64_t> host(9 * E);
  bool tensor_cores =
      x_bf16 && D % 128 == 0 && inter % 128 == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
  bool quant_w13 = false, quant_w2 = false;
  const at::TensorList ws[3] = {w1, w3, w2}, ss[3] = {s1, s3, s2};
  const char* names[3] = {"w1", "w3", "w2"};
  for (int m = 0; m < 3; ++m) {
    for (size_t e = 0; e < E; ++e) {
      const at::Tensor& w = ws[m][e];
      const at::Tensor& s = ss[m][e];
      const int64_t fmt = m < 2 ? moe_format_of(w, s, inter, D, x, names[m], e)
                                : moe_format_of(w, s, D, inter, x, names[m], e);
      const bool quant = fmt == cuda::kMoeFormatFp8 || fmt == cuda::kMoeFormatFp4;
      host[m * E + e] = reinterpret_cast<int64_t>(w.data_ptr());
      host[3 * E + m * E + e] = quant ? reinterpret_cast<int64_t>(s.data_ptr()) : 0;
      host[6 * E + m * E + e] = fmt;
      if (m < 2) {
        quant_w13 = quant_w13 || quant;
      } else {
        quant_w2 = quant_w2 || quant;
      }
      tensor_cores &= (quant || fmt == cuda::kMoeFormatBf16) && reinterpret_cast<uintptr_t>(w.data_ptr()) % 16 == 0;
    }
  }
  for (size_t e = 0; e < E; ++e) {
    TORCH_CHECK(host[6 * E + e] == host[7 * E + e], "moe_experts: w1[", e, "] and w3[", e, "] must share a format");
  }
  const at::Tensor table = moe_table(host, x.device());

  at::Tensor out = at::empty({T, D}, x.options().dtype(at::kFloat));
  cuda::MoeArgs a{};
  a.x = x.data_ptr();
  a.weights = weights.data_ptr<float>();
  a.picks = picks.data_ptr<int64_t>();
  a.table = table.data_ptr<int64_t>();
  a.out = out.data_ptr<float>();
  a.T = T;
  a.D = static_cast<int>(D);
  a.inter = static_cast<int>(inter);
  a.k = static_cast<int>(k);
  a.E = static_cast<int>(E);
  a.limit = static_cast<float>(limit);
  a.act_quant = act_quant;
  a.x_bf16 = x_bf16;
  a.round_bf16 = bf16;
  a.quant_w13 = quant_w13;
  a.quant_w2 = quant_w2;
  a.path = !tensor_cores ? cuda::MoePath::kSimt : T <= 32 ? cuda::MoePath::kGemv : cuda::MoePath::kGemm;
  const auto bytes = static_cast<int64_t>(cuda::moe_workspace_bytes(a));
  at::Tensor workspace = at::empty({bytes}, x.options().dtype(at::kByte));
  check_launch(cuda::moe_experts(a, workspace.data_ptr(), current_stream()), "moe_experts");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(v4cli, CUDA, m) { m.impl("moe_experts", &moe_experts_cuda); }

// ---- attention: sparse_attention, indexer_scores --------------------------------------------------------------

namespace {

at::Tensor sparse_attention_cuda(const at::Tensor& q_, const at::Tensor& kv_, const at::Tensor& sink_,
                                 const at::Tensor& idx_, double softmax_scale, const std::optional<at::Tensor>& dense_,
                                 const std::optional<at::Tensor>& limit_) {
  c10::cuda::CUDAGuard guard(q_.device());
  TORCH_CHECK(q_.dim() == 3, "sparse_attention: q must be [S, H, D], got ", q_.sizes());
  const bool bf16 = is_bf16(q_, "sparse_attention: q");
  const int64_t S = q_.size(0), H = q_.size(1), D = q_.size(2);
  TORCH_CHECK(D <= cuda::kAttnMaxD, "sparse_attention: the CUDA kernels take D <= ", cuda::kAttnMaxD, ", got ", D);
  TORCH_CHECK(kv_.dim() == 2 && kv_.size(1) == D && kv_.scalar_type() == q_.scalar_type(),
              "sparse_attention: kv must be [T, ", D, "] of q's dtype, got ", kv_.scalar_type(), " ", kv_.sizes());
  TORCH_CHECK(sink_.dim() == 1 && sink_.size(0) == H && sink_.scalar_type() == at::kFloat,
              "sparse_attention: sink must be a float32 [", H, "] tensor");
  TORCH_CHECK(idx_.dim() == 2 && idx_.size(0) == S && idx_.scalar_type() == at::kLong,
              "sparse_attention: idx must be an int64 [", S, ", K] tensor, got ", idx_.scalar_type(), " ", idx_.sizes());
  const bool has_dense = dense_.has_value() && dense_->defined() && dense_->size(0) > 0;
  if (has_dense) {
    TORCH_CHECK(dense_->dim() == 2 && dense_->size(1) == D && dense_->scalar_type() == q_.scalar_type(),
                "sparse_attention: dense must be [N, ", D, "] of q's dtype, got ", dense_->scalar_type(), " ",
                dense_->sizes());
    TORCH_CHECK(limit_.has_value() && limit_->defined() && limit_->dim() == 1 && limit_->size(0) == S &&
                    limit_->scalar_type() == at::kLong,
                "sparse_attention: dense entries need an int64 limit [", S, "]");
  }
  const at::Tensor q = q_.contiguous(), kv = kv_.contiguous(), sink = sink_.contiguous(), idx = idx_.contiguous();
  const at::Tensor dense = has_dense ? dense_->contiguous() : at::Tensor();
  const at::Tensor limit = has_dense ? limit_->contiguous() : at::Tensor();
  for (const at::Tensor* t : {&q, &kv, &sink, &idx}) check_cuda(*t, "sparse_attention: every input");
  TORCH_CHECK(kv.device() == q.device() && sink.device() == q.device() && idx.device() == q.device(),
              "sparse_attention: every input must be on q's device");
  if (has_dense) {
    check_cuda(dense, "sparse_attention: dense");
    check_cuda(limit, "sparse_attention: limit");
    TORCH_CHECK(dense.device() == q.device() && limit.device() == q.device(),
                "sparse_attention: dense and limit must be on q's device");
  }
  at::Tensor out = at::empty_like(q);
  if (S == 0 || H == 0 || D == 0) return out;
  cuda::AttnArgs a{};
  a.q = q.data_ptr();
  a.kv = kv.data_ptr();
  a.dense = has_dense ? dense.data_ptr() : nullptr;
  a.sink = sink.data_ptr<float>();
  a.idx = idx.data_ptr<int64_t>();
  a.limit = has_dense ? limit.data_ptr<int64_t>() : nullptr;
  a.out = out.data_ptr();
  a.S = S;
  a.H = H;
  a.D = D;
  a.K = idx.size(1);
  a.N = has_dense ? dense.size(0) : 0;
  a.T = kv.size(0);
  a.scale = static_cast<float>(softmax_scale);
  a.bf16 = bf16;
  const int splits = cuda::sparse_attention_splits(a);
  const auto bytes = static_cast<int64_t>(cuda::sparse_attention_workspace_bytes(a, splits));
  at::Tensor workspace = at::empty({bytes / 4}, q.options().dtype(at::kFloat));
  check_launch(cuda::sparse_attention(a, splits, bytes ? workspace.data_ptr<float>() : nullptr, current_stream()),
               "sparse_attention");
  return out;
}

at::Tensor indexer_scores_cuda(const at::Tensor& q_, const at::Tensor& weights_, const at::Tensor& keys_) {
  c10::cuda::CUDAGuard guard(q_.device());
  TORCH_CHECK(q_.dim() == 3, "indexer_scores: q must be [S, H, D], got ", q_.sizes());
  const bool bf16 = is_bf16(q_, "indexer_scores: q");
  const int64_t S = q_.size(0), H = q_.size(1), D = q_.size(2);
  TORCH_CHECK(weights_.dim() == 2 && weights_.size(0) == S && weights_.size(1) == H &&
                  weights_.scalar_type() == at::kFloat,
              "indexer_scores: weights must be a float32 [", S, ", ", H, "] tensor");
  TORCH_CHECK(keys_.dim() == 2 && keys_.size(1) == D && keys_.scalar_type() == q_.scalar_type(),
              "indexer_scores: keys must be [T, ", D, "] of q's dtype, got ", keys_.scalar_type(), " ", keys_.sizes());
  const at::Tensor q = q_.contiguous(), weights = weights_.contiguous(), keys = keys_.contiguous();
  for (const at::Tensor* t : {&q, &weights, &keys}) check_cuda(*t, "indexer_scores: every input");
  TORCH_CHECK(weights.device() == q.device() && keys.device() == q.device(),
              "indexer_scores: every input must be on q's device");
  const int64_t T = keys.size(0);
  at::Tensor out = at::empty({S, T}, q.options().dtype(at::kFloat));
  check_launch(cuda::indexer_scores(q.data_ptr(), weights.data_ptr<float>(), keys.data_ptr(), out.data_ptr<float>(),
                                    S, H, D, T, bf16, current_stream()),
               "indexer_scores");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(v4cli, CUDA, m) {
  m.impl("sparse_attention", &sparse_attention_cuda);
  m.impl("indexer_scores", &indexer_scores_cuda);
}

// ---- pointwise: hc_sinkhorn, rope, hadamard, fp8_round, fp4_round --------------------------------------------

namespace {

// x contiguous, float32 or bfloat16, on the current device, and 16-byte aligned (a copy where a view is not).
at::Tensor rowwise_input(const at::Tensor& x_in, const char* name) {
  at::Tensor x = x_in.contiguous();
  if (reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0) x = x.clone();
  check_cuda(x, name);
  is_bf16(x, name);
  return x;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hc_sinkhorn_cuda(const at::Tensor& mixes_in, const at::Tensor& scale_in,
                                                                const at::Tensor& base_in, int64_t n, int64_t iters,
                                                                double eps) {
  c10::cuda::CUDAGuard guard(mixes_in.device());
  TORCH_CHECK(n >= 1 && n <= cuda::kSinkhornMaxStreams, "hc_sinkhorn: n must be in 1..", cuda::kSinkhornMaxStreams,
              ", got ", n);
  TORCH_CHECK(iters >= 1, "hc_sinkhorn: iters must be at least 1, got ", iters);
  const int64_t width = (2 + n) * n;
  TORCH_CHECK(mixes_in.dim() == 2 && mixes_in.size(1) == width, "hc_sinkhorn: mixes must be [T, (2+n)n] = [T, ",
              width, "], got ", mixes_in.sizes());
  TORCH_CHECK(scale_in.numel() == 3 && base_in.numel() == width, "hc_sinkhorn: scale must have 3 values and base ",
              width, ", got ", scale_in.numel(), " and ", base_in.numel());
  const at::Tensor mixes = mixes_in.to(at::kFloat).contiguous();
  check_cuda(mixes, "hc_sinkhorn: mixes");
  // scale and base are read on the device (no host sync); a CPU copy of them moves there first
  const at::Tensor scale = scale_in.to(mixes.device(), at::kFloat).contiguous();
  const at::Tensor base = base_in.to(mixes.device(), at::kFloat).contiguous();
  const int64_t T = mixes.size(0);
  at::Tensor pre = at::empty({T, n}, mixes.options());
  at::Tensor post = at::empty({T, n}, mixes.options());
  at::Tensor comb = at::empty({T, n, n}, mixes.options());
  check_launch(cuda::hc_sinkhorn(mixes.data_ptr<float>(), scale.data_ptr<float>(), base.data_ptr<float>(),
                                 pre.data_ptr<float>(), post.data_ptr<float>(), comb.data_ptr<float>(), T,
                                 static_cast<int>(n), static_cast<int>(iters), static_cast<float>(eps),
                                 current_stream()),
               "hc_sinkhorn");
  return {pre, post, comb};
}

at::Tensor rope_cuda(const at::Tensor& x_in, const at::Tensor& cos_in, const at::Tensor& sin_in, bool inverse) {
  c10::cuda::CUDAGuard guard(x_in.device());
  TORCH_CHECK(x_in.dim() >= 2, "rope: x must be [T, ..., D], got ", x_in.sizes());
  const at::Tensor x = rowwise_input(x_in, "rope: x");
  const at::Tensor cos = cos_in.contiguous(), sin = sin_in.contiguous();
  check_cuda(cos, "rope: cos");
  check_cuda(sin, "rope: sin");
  TORCH_CHECK(cos.device() == x.device() && sin.device() == x.device(), "rope: cos and sin must be on x's device");
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.scalar_type() == at::kFloat &&
                  sin.scalar_type() == at::kFloat,
              "rope: cos and sin must be float32 [T, dim/2] tensors");
  const int64_t rows = x.size(0), width = x.size(-1), half = cos.size(1);
  TORCH_CHECK(cos.size(0) == rows && 2 * half <= width, "rope: cos/sin ", cos.sizes(), " do not fit x ", x.sizes());
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const int64_t per_row = x.numel() / (rows * width);
  check_launch(cuda::rope(x.data_ptr(), cos.data_ptr<float>(), sin.data_ptr<float>(), y.data_ptr(), rows, per_row,
                          width, half, inverse, x.scalar_type() == at::kBFloat16, current_stream()),
               "rope");
  return y;
}

at::Tensor hadamard_cuda(const at::Tensor& x_in) {
  c10::cuda::CUDAGuard guard(x_in.device());
  TORCH_CHECK(x_in.dim() >= 1, "hadamard: x must have a last dim");
  const int64_t d = x_in.size(-1);
  TORCH_CHECK(d > 0 && (d & (d - 1)) == 0 && d <= cuda::kHadamardMaxDim,
              "hadamard: the last dim must be a power of two up to ", cuda::kHadamardMaxDim, ", got ", d);
  const at::Tensor x = rowwise_input(x_in, "hadamard: x");
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  check_launch(cuda::hadamard(x.data_ptr(), y.data_ptr(), x.numel() / d, d, x.scalar_type() == at::kBFloat16,
                              current_stream()),
               "hadamard");
  return y;
}

void check_blocks(const at::Tensor& x, int64_t block, int64_t width, const char* name) {
  TORCH_CHECK(x.dim() >= 1, name, ": x must have a last dim");
  const int64_t d = x.size(-1);
  TORCH_CHECK(block > 0 && width >= 0 && width <= d && width % block == 0, name, ": the first ", width, " of ", d,
              " values must be whole blocks of ", block);
}

at::Tensor fp8_round_cuda(const at::Tensor& x_in, int64_t block, int64_t width) {
  c10::cuda::CUDAGuard guard(x_in.device());
  check_blocks(x_in, block, width, "fp8_round");
  const at::Tensor x = rowwise_input(x_in, "fp8_round: x");
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const int64_t d = x.size(-1);
  check_launch(cuda::fp8_round(x.data_ptr(), y.data_ptr(), x.numel() / d, d, width, block,
                               x.scalar_type() == at::kBFloat16, current_stream()),
               "fp8_round");
  return y;
}

at::Tensor fp4_round_cuda(const at::Tensor& x_in, int64_t block) {
  c10::cuda::CUDAGuard guard(x_in.device());
  check_blocks(x_in, block, x_in.dim() ? x_in.size(-1) : 0, "fp4_round");
  const at::Tensor x = rowwise_input(x_in, "fp4_round: x");
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const int64_t d = x.size(-1);
  check_launch(cuda::fp4_round(x.data_ptr(), y.data_ptr(), x.numel() / d, d, block, x.scalar_type() == at::kBFloat16,
                               current_stream()),
               "fp4_round");
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(v4cli, CUDA, m) {
  m.impl("hc_sinkhorn", &hc_sinkhorn_cuda);
  m.impl("rope", &rope_cuda);
  m.impl("hadamard", &hadamard_cuda);
  m.impl("fp8_round", &fp8_round_cuda);
  m.impl("fp4_round", &fp4_round_cuda);
}


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
