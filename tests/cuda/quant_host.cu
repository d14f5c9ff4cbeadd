// The GPU kernels' number formats (csrc/cuda/quant.cuh) run as host code, for tests/test_cuda_build.py to compare
// with runtime/quant.py bit for bit on a machine without a GPU. Usage: quant_host MODE BLOCK IN OUT, float32 files.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "quant.cuh"

using namespace v4cli::cuda;

int main(int argc, char** argv) {
  if (argc != 5) return 2;
  const char* mode = argv[1];
  const int block = std::atoi(argv[2]);
  std::vector<float> in, out;
  if (FILE* f = std::fopen(argv[3], "rb")) {
    float v;
    while (std::fread(&v, sizeof v, 1, f) == 1) in.push_back(v);
    std::fclose(f);
  }
  if (!std::strcmp(mode, "e4m3")) {
    for (int b = 0; b < 256; ++b) out.push_back(e4m3_to_float(static_cast<uint8_t>(b)));
  } else if (!std::strcmp(mode, "ue8m0")) {
    for (int b = 0; b < 256; ++b) out.push_back(ue8m0_to_float(static_cast<uint8_t>(b)));
  } else if (!std::strcmp(mode, "e2m1")) {
    for (uint32_t c = 0; c < 16; ++c) out.push_back(e2m1_to_float(c));
  } else if (!std::strcmp(mode, "round_e4m3")) {
    for (float v : in) out.push_back(round_e4m3(v));
  } else if (!std::strcmp(mode, "bf16")) {
    for (float v : in) out.push_back(bf16_round(v));
  } else if (!std::strcmp(mode, "fp8_blocks") || !std::strcmp(mode, "fp4_blocks")) {
    const bool fp8 = mode[2] == '8';
    for (size_t b0 = 0; b0 + block <= in.size(); b0 += block) {
      float amax = 0.f;
      for (int j = 0; j < block; ++j) amax = fmaxf(amax, fabsf(in[b0 + j]));
      const float s = fp8 ? fp8_block_scale(amax) : fp4_block_scale(amax);
      for (int j = 0; j < block; ++j) out.push_back(fp8 ? fp8_round_scaled(in[b0 + j], s) : fp4_round_scaled(in[b0 + j], s));
    }
  } else {
    return 2;
  }
  FILE* f = std::fopen(argv[4], "wb");
  if (!f) return 1;
  std::fwrite(out.data(), sizeof(float), out.size(), f);
  std::fclose(f);
  return 0;
}
