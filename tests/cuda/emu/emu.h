// A CUDA stand-in for running row-wise kernels (csrc/cuda/pointwise.cu, rounding.cu) as host code, so that their
// index math, shuffles and vector accesses are checked on a machine without a GPU (tests/test_cuda_pointwise_host.py
// compiles the kernels with g++ after rewriting each `k<<<grid, block, ...>>>(args)` as
// `::emu::launcher(&k, grid, block)(args)`). Each warp's 32 lanes are fibers (ucontext) run in turn; a lane that
// reaches __shfl_xor_sync waits until every lane of the warp has, then all exchange and go on, as in lockstep.
// Only what those kernels use: 1-d grids, whole warps, no shared memory or __syncthreads.
#pragma once

#include <math.h>
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };

namespace emu {

struct Index { unsigned x = 0, y = 0, z = 0; };
inline Index cur_thread, cur_block, cur_dim;

struct Warp {
  ucontext_t sched{};
  ucontext_t lanes[32]{};
  int state[32]{};  // 0 ready, 1 at a shuffle, 2 returned
  float slot[32]{}, result[32]{};
  int offset[32]{};
  int active = 0;
  unsigned base = 0;  // the first lane's threadIdx.x
  const std::function<void()>* body = nullptr;
};
inline Warp* cur_warp = nullptr;

inline void lane_entry() {
  Warp* w = cur_warp;
  const int l = w->active;
  (*w->body)();
  w->state[l] = 2;  // returning resumes w->sched (uc_link)
}

inline void run_warp(Warp& w, int lanes) {
  static std::vector<std::vector<char>> stacks(32, std::vector<char>(1 << 16));
  for (int l = 0; l < lanes; ++l) {
    getcontext(&w.lanes[l]);
    w.lanes[l].uc_stack.ss_sp = stacks[l].data();
    w.lanes[l].uc_stack.ss_size = stacks[l].size();
    w.lanes[l].uc_link = &w.sched;
    makecontext(&w.lanes[l], lane_entry, 0);
    w.state[l] = 0;
  }
  for (;;) {
    for (int l = 0; l < lanes; ++l) {
      if (w.state[l] != 0) continue;
      w.active = l;
      cur_thread.x = w.base + l;
      cur_warp = &w;
      swapcontext(&w.sched, &w.lanes[l]);
    }
    int waiting = 0, done = 0;
    for (int l = 0; l < lanes; ++l) (w.state[l] == 1 ? waiting : done) += 1;
    if (waiting == 0) return;
    if (done != 0 || lanes != 32) {
      std::fprintf(stderr, "emu: a shuffle over a partial warp (%d lanes waiting, %d returned)\n", waiting, done);
      std::abort();
    }
    for (int l = 0; l < 32; ++l) w.result[l] = w.slot[l ^ w.offset[l]];
    for (int l = 0; l < 32; ++l) w.state[l] = 0;
  }
}

template <typename... P>
struct Launcher {
  void (*kernel)(P...);
  unsigned grid;
  int block;
  template <typename... A>
  void operator()(A... args) const {
    const std::function<void()> body = [&] { kernel(args...); };
    cur_dim.x = static_cast<unsigned>(block);
    for (unsigned b = 0; b < grid; ++b) {
      cur_block.x = b;
      for (int first = 0; first < block; first += 32) {
        Warp w;
        w.base = static_cast<unsigned>(first);
        w.body = &body;
        run_warp(w, block - first < 32 ? block - first : 32);
      }
    }
  }
};

template <typename... P>
Launcher<P...> launcher(void (*kernel)(P...), unsigned grid, int block) {
  return Launcher<P...>{kernel, grid, block};
}

}  // namespace emu

#define threadIdx (::emu::cur_thread)
#define blockIdx (::emu::cur_block)
#define blockDim (::emu::cur_dim)

template <typename V>
inline V __shfl_xor_sync(unsigned, V v, int m) {
  static_assert(sizeof(V) == sizeof(float), "emu: 32-bit shuffles only");
  emu::Warp* w = emu::cur_warp;
  const int l = w->active;
  std::memcpy(&w->slot[l], &v, sizeof v);
  w->offset[l] = m;
  w->state[l] = 1;
  swapcontext(&w->lanes[l], &w->sched);
  emu::cur_warp = w;
  V out;
  std::memcpy(&out, &w->result[l], sizeof out);
  return out;
}

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
