// What the row-wise kernels (pointwise.cu, rounding.cu) share: conversions of bfloat16/float32 values and
// vector accesses of up to 16 bytes. Plain CUDA C++, no torch.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace v4cli::cuda::pointwise {

constexpr int kThreads = 256;
constexpr unsigned kFull = 0xffffffffu;

__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ inline T from_float(float v);
template <>
__device__ inline float from_float<float>(float v) { return v; }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <int Bytes>
struct RawOf;
template <>
struct RawOf<16> { using type = uint4; };
template <>
struct RawOf<8> { using type = uint2; };
template <>
struct RawOf<4> { using type = uint32_t; };
template <>
struct RawOf<2> { using type = uint16_t; };

// E consecutive values of T at p (aligned to min(E * sizeof(T), 16) bytes), in vector accesses of up to 16 bytes.
template <typename T, int E>
struct Chunk {
  static constexpr int kBytes = E * static_cast<int>(sizeof(T));
  static constexpr int kPiece = kBytes < 16 ? kBytes : 16;
  using Raw = typename RawOf<kPiece>::type;
  alignas(16) T v[E];

  __device__ inline void load(const T* p) {
#pragma unroll
    for (int i = 0; i < kBytes / kPiece; ++i) reinterpret_cast<Raw*>(v)[i] = reinterpret_cast<const Raw*>(p)[i];
  }
  __device__ inline void store(T* p) const {
#pragma unroll
    for (int i = 0; i < kBytes / kPiece; ++i) reinterpret_cast<Raw*>(p)[i] = reinterpret_cast<const Raw*>(v)[i];
  }
};

inline unsigned blocks_for(int64_t threads, int per_block = kThreads) {
  return static_cast<unsigned>((threads + per_block - 1) / per_block);
}

inline bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace v4cli::cuda::pointwise
