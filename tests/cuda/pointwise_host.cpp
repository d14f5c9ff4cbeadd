// The row-wise kernels (csrc/cuda/pointwise.cu, rounding.cu) run on the host under emu/emu.h, through their
// launchers, for tests/test_cuda_pointwise_host.py to compare with the twins. Usage:
//   pointwise_host MODE IN OUT ARGS...   (float32 files; bf16 inputs hold bfloat16 values, widened)
//   sinkhorn T n iters eps          IN: mixes, scale [3], base   OUT: pre, post, comb
//   rope rows per_row width half inverse bf16 misalign           IN: x, cos, sin   OUT: y
//   hadamard rows d bf16                                           IN: x   OUT: y
//   fp8 rows d width block bf16 misalign / fp4 rows d block bf16 misalign   IN: x   OUT: y
// `misalign` places x one element past a 16-byte boundary (the launchers' paths for unaligned rows).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cuda_bf16.h>

#include "launch.h"

namespace {

std::vector<float> read_floats(const char* path) {
  std::vector<float> v;
  if (FILE* f = std::fopen(path, "rb")) {
    float x;
    while (std::fread(&x, sizeof x, 1, f) == 1) v.push_back(x);
    std::fclose(f);
  }
  return v;
}

// x's values as float32 or bfloat16 in a 16-byte aligned buffer, `skip` elements in.
struct Buffer {
  std::vector<uint4> raw;
  void* data = nullptr;
  bool bf16 = false;
  size_t n = 0;
  Buffer(size_t count, bool is_bf16, int skip) : raw(count / 2 + 8), bf16(is_bf16), n(count) {
    char* p = reinterpret_cast<char*>(raw.data()) + skip * (bf16 ? 2 : 4);
    data = p;
  }
  void fill(const float* v) {
    for (size_t i = 0; i < n; ++i) {
      if (bf16) {
        static_cast<__nv_bfloat16*>(data)[i] = __float2bfloat16_rn(v[i]);
      } else {
        static_cast<float*>(data)[i] = v[i];
      }
    }
  }
  void dump(std::vector<float>& out) const {
    for (size_t i = 0; i < n; ++i) {
      out.push_back(bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(data)[i])
                         : static_cast<const float*>(data)[i]);
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  using namespace v4cli::cuda;
  if (argc < 4) return 2;
  const char* mode = argv[1];
  const std::vector<float> in = read_floats(argv[2]);
  auto arg = [&](int i) { return std::atoll(argv[4 + i]); };
  std::vector<float> out;
  cudaError_t err = cudaSuccess;
  if (!std::strcmp(mode, "sinkhorn")) {
    const int64_t T = arg(0);
    const int n = static_cast<int>(arg(1)), iters = static_cast<int>(arg(2));
    const float eps = static_cast<float>(std::atof(argv[7]));
    const int64_t w = (2 + n) * n;
    std::vector<float> pre(T * n), post(T * n), comb(T * n * n);
    err = hc_sinkhorn(in.data(), in.data() + T * w, in.data() + T * w + 3, pre.data(), post.data(), comb.data(), T, n,
                      iters, eps, nullptr);
    for (const auto* v : {&pre, &post, &comb}) out.insert(out.end(), v->begin(), v->end());
  } else if (!std::strcmp(mode, "rope")) {
    const int64_t rows = arg(0), per_row = arg(1), width = arg(2), half = arg(3);
    const bool inverse = arg(4) != 0, bf16 = arg(5) != 0;
    const size_t count = rows * per_row * width;
    Buffer x(count, bf16, static_cast<int>(arg(6))), y(count, bf16, 0);
    x.fill(in.data());
    err = rope(x.data, in.data() + count, in.data() + count + rows * half, y.data, rows, per_row, width, half, inverse,
               bf16, nullptr);
    y.dump(out);
  } else if (!std::strcmp(mode, "hadamard")) {
    const int64_t rows = arg(0), d = arg(1);
    const bool bf16 = arg(2) != 0;
    Buffer x(rows * d, bf16, 0), y(rows * d, bf16, 0);
    x.fill(in.data());
    err = hadamard(x.data, y.data, rows, d, bf16, nullptr);
    y.dump(out);
  } else if (!std::strcmp(mode, "fp8") || !std::strcmp(mode, "fp4")) {
    const bool fp8 = mode[2] == '8';
    const int64_t rows = arg(0), d = arg(1), width = fp8 ? arg(2) : d, block = arg(fp8 ? 3 : 2);
    const bool bf16 = arg(fp8 ? 4 : 3) != 0;
    Buffer x(rows * d, bf16, static_cast<int>(arg(fp8 ? 5 : 4))), y(rows * d, bf16, 0);
    x.fill(in.data());
    err = fp8 ? fp8_round(x.data, y.data, rows, d, width, block, bf16, nullptr)
              : fp4_round(x.data, y.data, rows, d, block, bf16, nullptr);
    y.dump(out);
  } else {
    return 2;
  }
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", mode, cudaGetErrorString(err));
    return 3;
  }
  FILE* f = std::fopen(argv[3], "wb");
  if (!f) return 1;
  std::fwrite(out.data(), sizeof(float), out.size(), f);
  std::fclose(f);
  return 0;
}
