// RMSNorm and mHC's pre/post around every sublayer, each one call from Python and, inside, loops over raw rows:
// the twins (ops_ref.rms_norm, hc_pre, hc_post) are 6-13 small torch ops each, four to six times per layer at
// every decode step, and as ATen calls from C++ they still cost a dispatch and an allocation apiece (~60 us
// per call on 2 threads, a third of a small model's decode step at V4-Flash's depth). The arithmetic is the
// twins' in float32; only the order of the sums over a row differs (fixed per build: 8 partial sums).

#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../ops.h"
#include "parallel.h"

namespace v4cli {
namespace {

constexpr int64_t kParts = 8;  // partial sums of a row (independent chains the compiler can vectorize)

inline float get(const float* p, int64_t i) { return p[i]; }
inline float get(const c10::BFloat16* p, int64_t i) { return static_cast<float>(p[i]); }
inline void put(float* p, int64_t i, float v) { p[i] = v; }
inline void put(c10::BFloat16* p, int64_t i, float v) { p[i] = c10::BFloat16(v); }  // nearest even, as torch

// mean(x^2) over a row of d values, in float32.
template <typename T>
float mean_square(const T* x, int64_t d) {
  float part[kParts] = {};
  int64_t i = 0;
  for (; i + kParts <= d; i += kParts)
    for (int64_t j = 0; j < kParts; ++j) {
      const float v = get(x, i + j);
      part[j] += v * v;
    }
  for (; i < d; ++i) {
    const float v = get(x, i);
    part[0] += v * v;
  }
  float total = 0.f;
  for (int64_t j = 0; j < kParts; ++j) total += part[j];
  return total / static_cast<float>(d);
}

// Rows a task: enough values (~16K) that a task outweighs its hand-off to another thread.
inline int64_t row_grain(int64_t row_values) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_values)); }

template <typename T>
void rms_rows(const T* x, const float* w, T* y, int64_t rows, int64_t d, float eps) {
  parallel_tasks(rows, row_grain(d), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * d;
      T* yr = y + r * d;
      const float f = 1.f / std::sqrt(mean_square(xr, d) + eps);
      if (w != nullptr) {
        for (int64_t i = 0; i < d; ++i) put(yr, i, w[i] * (get(xr, i) * f));
      } else {  // the query heads: the factor rounded to x's dtype, the product in x's dtype
        T fx;
        put(&fx, 0, f);
        const float ft = get(&fx, 0);
        for (int64_t i = 0; i < d; ++i) put(yr, i, get(xr, i) * ft);
      }
    }
  });
}

void check_float(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, what,
              " must be float32 or bfloat16, got ", t.scalar_type());
}

// Dispatch on x's dtype: fn(T*) with T float or c10::BFloat16.
template <typename Fn>
void by_dtype(const at::Tensor& x, const Fn& fn) {
  if (x.scalar_type() == at::kFloat) {
    fn(static_cast<float*>(nullptr));
  } else {
    fn(static_cast<c10::BFloat16*>(nullptr));
  }
}

}  // namespace

at::Tensor rms_norm_cpu(const at::Tensor& x_in, const std::optional<at::Tensor>& weight_opt, double eps) {
  check_float(x_in, "rms_norm: x");
  TORCH_CHECK(x_in.dim() >= 1, "rms_norm: x must have a last dim");
  const int64_t d = x_in.size(-1);
  at::Tensor w;
  if (weight_opt.has_value()) {
    TORCH_CHECK(weight_opt->dim() == 1 && weight_opt->size(0) == d, "rms_norm: weight must be [D] for x [..., D]");
    w = weight_opt->to(at::kFloat).contiguous();
  }
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  const int64_t rows = d == 0 ? 0 : x.numel() / d;
  by_dtype(x, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    rms_rows(static_cast<const T*>(x.data_ptr()), w.defined() ? w.data_ptr<float>() : nullptr,
             static_cast<T*>(y.data_ptr()), rows, d, static_cast<float>(eps));
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hc_pre_cpu(const at::Tensor& x_in, const at::Tensor& fn,
                                                          const at::Tensor& scale, const at::Tensor& base, int64_t n,
                                                          int64_t iters, double eps, double norm_eps) {
  check_float(x_in, "hc_pre: x");
  TORCH_CHECK(x_in.dim() == 3 && x_in.size(1) == n, "hc_pre: x must be [T, n, D] with n = ", n);
  TORCH_CHECK(fn.dim() == 2 && fn.size(1) == n * x_in.size(2), "hc_pre: fn must be [(2+n)n, n*D]");
  const int64_t T = x_in.size(0), d = x_in.size(2), nd = n * d;
  const at::Tensor x = x_in.contiguous();
  const at::Tensor flat = x.scalar_type() == at::kFloat ? x.view({T, nd}) : x.view({T, nd}).to(at::kFloat);
  const at::Tensor w = fn.scalar_type() == at::kFloat ? fn.contiguous() : fn.to(at::kFloat).contiguous();
  at::Tensor mixes = dense_linear_cpu(flat, w);
  const float* fp = flat.data_ptr<float>();
  float* mp = mixes.data_ptr<float>();
  const int64_t width = mixes.size(1);
  for (int64_t t = 0; t < T; ++t) {  // times each token's 1 / rms over its n*D values
    const float f = 1.f / std::sqrt(mean_square(fp + t * nd, nd) + static_cast<float>(norm_eps));
    for (int64_t j = 0; j < width; ++j) mp[t * width + j] *= f;
  }
  auto [pre, post, comb] = hc_sinkhorn_cpu(mixes, scale, base, n, iters, eps);
  at::Tensor u = at::empty({T, d}, x.options());
  const float* pp = pre.data_ptr<float>();
  by_dtype(x, [&](auto* tag) {
    using T_ = std::remove_pointer_t<decltype(tag)>;
    const T_* xp = static_cast<const T_*>(x.data_ptr());
    T_* up = static_cast<T_*>(u.data_ptr());
    parallel_tasks(T, row_grain(nd), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t i = 0; i < d; ++i) {
          float s = 0.f;  // the streams in order, as the twin's sum over dim 1
          for (int64_t j = 0; j < n; ++j) s += pp[t * n + j] * get(xp, (t * n + j) * d + i);
          put(up, t * d + i, s);
        }
    });
  });
  return {u, post, comb};
}

at::Tensor hc_post_cpu(const at::Tensor& o_in, const at::Tensor& x_in, const at::Tensor& post_in,
                       const at::Tensor& comb_in) {
  check_float(x_in, "hc_post: x");
  check_float(o_in, "hc_post: o");
  TORCH_CHECK(x_in.dim() == 3 && o_in.dim() == 2 && o_in.size(0) == x_in.size(0) && o_in.size(1) == x_in.size(2),
              "hc_post: o must be [T, D] for streams x [T, n, D]");
  const int64_t T = x_in.size(0), n = x_in.size(1), d = x_in.size(2);
  TORCH_CHECK(post_in.numel() == T * n && comb_in.numel() == T * n * n, "hc_post: post must be [T, n] and comb [T, n, n]");
  const at::Tensor x = x_in.contiguous(), o = o_in.to(at::kFloat).contiguous();
  const at::Tensor post = post_in.to(at::kFloat).contiguous(), comb = comb_in.to(at::kFloat).contiguous();
  at::Tensor y = at::empty_like(x);
  const float* pp = post.data_ptr<float>();
  const float* cp = comb.data_ptr<float>();
  by_dtype(x, [&](auto* tag) {
    using T_ = std::remove_pointer_t<decltype(tag)>;
    const T_* xp = static_cast<const T_*>(x.data_ptr());
    const float* op = o.data_ptr<float>();
    T_* yp = static_cast<T_*>(y.data_ptr());
    parallel_tasks(T, row_grain(n * d), [&](int64_t t0, int64_t t1) {
      std::vector<float> mixed(d);
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t k = 0; k < n; ++k) {  // X'[k] = post_k o + sum_j comb[j, k] X[j]
          for (int64_t i = 0; i < d; ++i) mixed[i] = 0.f;
          for (int64_t j = 0; j < n; ++j) {
            const float c = cp[(t * n + j) * n + k];
            const T_* xj = xp + (t * n + j) * d;
            for (int64_t i = 0; i < d; ++i) mixed[i] += c * get(xj, i);
          }
          const float p = pp[t * n + k];
          const float* ot = op + t * d;
          T_* yk = yp + (t * n + k) * d;
          for (int64_t i = 0; i < d; ++i) put(yk, i, p * ot[i] + mixed[i]);
        }
    });
  });
  return y;
}

}  // namespace v4cli
