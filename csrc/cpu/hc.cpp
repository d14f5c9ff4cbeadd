// mHC mixing weights (architecture.md §2.2) for every token at once: sigmoid gates and a Sinkhorn-balanced
// n x n mix. The PyTorch twin runs about 4 * iters small tensor ops per call; a decode step makes two calls
// per layer, so on the CPU the dispatch overhead, not the arithmetic, is what this kernel removes.


#include <algorithm>
#include <cmath>

#include "../ops.h"
#include "parallel.h"

namespace v4cli {
namespace {

constexpr int64_t kMaxStreams = 8;

inline float sigmoid(float v) { return 1.f / (1.f + std::exp(-v)); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> hc_sinkhorn_cpu(const at::Tensor& mixes, const at::Tensor& scale,
                                                               const at::Tensor& base, int64_t n, int64_t iters,
                                                               double eps_d) {
  TORCH_CHECK(n >= 1 && n <= kMaxStreams, "hc_sinkhorn: n must be in 1..", kMaxStreams, ", got ", n);
  const int64_t width = (2 + n) * n;
  TORCH_CHECK(mixes.dim() == 2 && mixes.size(1) == width, "hc_sinkhorn: mixes must be [T, (2+n)n] = [T, ", width,
              "]");
  TORCH_CHECK(scale.numel() == 3 && base.numel() == width, "hc_sinkhorn: scale must have 3 values and base ", width);
  TORCH_CHECK(iters >= 1, "hc_sinkhorn: iters must be at least 1");
  const at::Tensor m = mixes.to(at::kFloat).contiguous();
  const at::Tensor s = scale.to(at::kFloat).contiguous().cpu();
  const at::Tensor b = base.to(at::kFloat).contiguous();
  const int64_t T = m.size(0);
  at::Tensor pre = at::empty({T, n}, m.options());
  at::Tensor post = at::empty({T, n}, m.options());
  at::Tensor comb = at::empty({T, n, n}, m.options());
  const float* mp = m.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  const float s0 = s.data_ptr<float>()[0], s1 = s.data_ptr<float>()[1], s2 = s.data_ptr<float>()[2];
  const float eps = static_cast<float>(eps_d);
  float* pre_p = pre.data_ptr<float>();
  float* post_p = post.data_ptr<float>();
  float* comb_p = comb.data_ptr<float>();
  parallel_tasks(T, 64, [&](int64_t t0, int64_t t1) {
    float c[kMaxStreams * kMaxStreams], sums[kMaxStreams];
    for (int64_t t = t0; t < t1; ++t) {
      const float* row = mp + t * width;
      for (int64_t i = 0; i < n; ++i) {
        pre_p[t * n + i] = sigmoid(s0 * row[i] + bp[i]) + eps;
        post_p[t * n + i] = 2.f * sigmoid(s1 * row[n + i] + bp[n + i]);
      }
      for (int64_t i = 0; i < n; ++i) {  // softmax over each row j, then + eps
        float* ci = c + i * n;
        float top = -INFINITY, total = 0.f;
        for (int64_t j = 0; j < n; ++j) {
          ci[j] = s2 * row[2 * n + i * n + j] + bp[2 * n + i * n + j];
          top = std::max(top, ci[j]);
        }
        for (int64_t j = 0; j < n; ++j) total += (ci[j] = std::exp(ci[j] - top));
        for (int64_t j = 0; j < n; ++j) ci[j] = ci[j] / total + eps;
      }
      // Columns first, then (iters - 1) rounds of rows and columns, each sum with + eps.
      for (int64_t round = 0; round < 2 * iters - 1; ++round) {
        const bool by_column = round % 2 == 0;
        for (int64_t a = 0; a < n; ++a) {
          float sum = 0.f;
          for (int64_t z = 0; z < n; ++z) sum += by_column ? c[z * n + a] : c[a * n + z];
          sums[a] = sum + eps;
        }
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < n; ++j) c[i * n + j] /= sums[by_column ? j : i];
      }
      for (int64_t e = 0; e < n * n; ++e) comb_p[t * n * n + e] = c[e];
    }
  });
  return {pre, post, comb};
}

}  // namespace v4cli
