// The vector pieces the sparse-attention (attention.cpp) and lightning-indexer (indexer.cpp) kernels share: a
// vector of kL float32 lanes (GCC/Clang vector extensions: 16 lanes with AVX-512, 8 otherwise), loads and stores,
// the FMA (an intrinsic on AVX-512 and AVX2+FMA so no compiler choice changes a result; any other target takes
// the portable vector code), a lane-wise select, the rounding to bfloat16 and the exact widening of bfloat16 rows.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#else
#pragma GCC diagnostic ignored "-Wpsabi"  // vectors passed by value: inline code, no ABI crosses here
#endif

namespace v4cli::attn_simd {

#if defined(__AVX512F__)
constexpr int kL = 16;
#else
constexpr int kL = 8;
#endif
typedef float vf __attribute__((vector_size(kL * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kL * sizeof(int32_t))));
typedef uint32_t vu __attribute__((vector_size(kL * sizeof(uint32_t))));
typedef uint16_t vh __attribute__((vector_size(kL * sizeof(uint16_t))));

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// bfloat16 -> float32 is exact: the 16 bits are the float's upper half.
inline vf load_bf16(const uint16_t* p) {
  vh h;
  std::memcpy(&h, p, sizeof h);
  const vu w = __builtin_convertvector(h, vu) << 16;
  vf v;
  std::memcpy(&v, &w, sizeof v);
  return v;
}

inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float x) {
#if defined(__AVX512F__)
  return (vf)_mm512_set1_ps(x);
#elif defined(__AVX2__) && defined(__FMA__)
  return (vf)_mm256_set1_ps(x);
#else
  vf v;
  for (int i = 0; i < kL; ++i) v[i] = x;
  return v;
#endif
}

// A loaded vector kept in a register: GCC otherwise folds the load into each FMA that uses it, and a tile of
// R x C accumulators then issues R x C loads instead of R + C.
inline vf in_register(vf v) {
#if defined(__AVX512F__) && defined(__GNUC__)
  asm("" : "+v"(v));
#elif defined(__AVX2__) && defined(__GNUC__)
  asm("" : "+x"(v));
#endif
  return v;
}
inline vf as_float(vu u) {
  vf v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
inline vu as_bits(vf v) {
  vu u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

// acc + a * b with one rounding.
inline vf fmadd(vf a, vf b, vf acc) {
#if defined(__AVX512F__)
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
#elif defined(__AVX2__) && defined(__FMA__)
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)acc);
#else
  return a * b + acc;
#endif
}

// Lane-wise select by a comparison mask (all ones / all zeros per lane).
inline vf select(vi mask, vf a, vf b) {
  const vu m = (vu)mask;
  return as_float((as_bits(a) & m) | (as_bits(b) & ~m));
}

// Round to bfloat16 (nearest even, NaN kept as torch's canonical NaN), as a float32 value.
inline vf round_bf16(vf x) {
  const vu u = as_bits(x);
  const vu r = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  const vu nan = (vu)((u & 0x7FFFFFFFu) > 0x7F800000u);
  return as_float((r & ~nan) | (0x7FC00000u & nan));
}

inline float bf16_to_float(uint16_t b) { return c10::BFloat16(b, c10::BFloat16::from_bits()); }

// len values of a float32 or bfloat16 row as float32 (exact).
inline void widen(const void* src, bool bf16, int64_t len, float* dst) {
  if (!bf16) {
    std::memcpy(dst, src, len * sizeof(float));
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src);
  int64_t i = 0;
  for (; i + kL <= len; i += kL) store(dst + i, load_bf16(s + i));
  for (; i < len; ++i) dst[i] = bf16_to_float(s[i]);
}

inline bool is_f32_or_bf16(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16;
}

}  // namespace v4cli::attn_simd
