// The linear layers on tensor cores (mma.sync m16n8k16, bf16 in, f32 out), for decode and prefill alike: the
// weights are the A operand, streamed once per token group from global memory straight into registers (16 bytes
// per lane and row a step, ld.global.nc without L1 allocation, the next steps' loaded before this step's MMAs),
// decoded to bfloat16 pairs with a few integer ops and one bf16x2 multiply (moe.cuh's decoders, exact); the
// tokens are B, 8 per n8 tile, NT tiles a block, their bfloat16 planes read through L1 (a block's 4 warps share
// them).
//
// Grid: (token groups of 8 NT, N / 64, splits); warp w of a block owns weight rows 64 blockIdx.y + 16 w. Each
// step's MMAs go into a zeroed accumulator that is then added to the running float32 sum: the running sum is
// rounded as a float32 dot product would be (not as the tensor core's internal adds), and every output's sum --
// its steps in order, the same operands in the same MMA slots -- is the same whatever M or NT: row-invariant.
// Needs: K a multiple of the format's step (lin_step_elems), 16-byte aligned weights and planes (launcher).
#include "linear.cuh"

namespace v4cli::cuda {
namespace {

__device__ inline uint4 ld_stream(const uint8_t* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// The line of p into L1 ahead of its use: prefill's token rows (64 of them, all of K) do not stay in L1.
__device__ inline void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

// One step's MMAs into c: weight pieces w[r] (rows g, g+8) with their scales; x pointers at the step's elements.
template <int FMT, int NT, int P, bool TWO>
__device__ inline void tc_step(const uint4 (&w)[2], const MoeScale (&s)[2], const __nv_bfloat16* xq,
                               const int64_t (&xm)[NT], int t, int step, int K, int64_t plane, float (&c)[NT][4]) {
  constexpr int kWords = MoeGemvFmt<FMT>::G / 8;
#pragma unroll
  for (int v = 0; v < kWords; ++v) {  // word v of the lane's elements feeds MMAs 2v and 2v + 1
    uint4 x[NT][P];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const __nv_bfloat16* px = xq + lin_x_offset(FMT, xm[j], t, step, v, K);
#pragma unroll
      for (int p = 0; p < P; ++p) x[j][p] = __ldg(reinterpret_cast<const uint4*>(px + p * plane));
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int i = 2 * v + h;
      uint32_t a[4];
      moe_gemv_a<FMT, TWO>(w[0], w[1], s[0], s[1], i, a);
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int p = 0; p < P; ++p) {
          uint32_t b[2];
          moe_gemv_b<FMT>(x[j][p], i, b);
          moe_mma(c[j], a[0], a[1], a[2], a[3], b[0], b[1]);
        }
    }
  }
}

template <int FMT, int NT, int P>
__global__ void __launch_bounds__(32 * kLinWarps) linear_tc(LinTc a) {
  constexpr int G = MoeGemvFmt<FMT>::G;
  constexpr bool kQuant = FMT != kMoeFormatBf16;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int n0 = (blockIdx.y * kLinWarps + (threadIdx.x >> 5)) * 16;
  if (n0 >= a.N) return;  // whole warps
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * 8 * NT;
  const int steps = a.K / (4 * G);
  // splits zb..ze-1: one per block (partials summed by the launcher's kernel) or all of them in turn (serial)
  const int zb = a.serial ? 0 : blockIdx.z, ze = a.serial ? a.splits : zb + 1;
  const int s0 = zb * a.per, s1 = min(steps, ze * a.per);

  int rows[2];
  for (int r = 0; r < 2; ++r) rows[r] = min(n0 + g + 8 * r, a.N - 1);  // a tail's missing rows: never stored
  // this lane's token of tile j (8j + g); missing tokens read token m0's row
  int64_t xm[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int64_t m = m0 + 8 * j + g;
    xm[j] = m < a.M ? m : m0;
  }

  float acc[NT][4], total[NT][4];  // this split's sum; the sum of the splits so far, in order
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[j][c] = total[j][c] = 0.f;

  // this step's pieces and the next step's: with few tokens (decode: latency-bound) two steps ahead are in flight
  constexpr int kAhead = NT <= 2 ? 2 : 1;
  uint4 w[2], w1[2];
  uint8_t sb[2] = {}, sb1[2] = {};
  auto load = [&](int step, uint4 (&wv)[2], uint8_t (&sv)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      wv[r] = ld_stream(a.w + lin_w_offset(FMT, rows[r], t, step, a.K));
      if constexpr (kQuant) sv[r] = a.s[lin_s_offset(FMT, rows[r], t, step, a.K)];
    }
  };
  if (s0 < s1) load(s0, w, sb);
  if (kAhead == 2 && s0 + 1 < s1) load(s0 + 1, w1, sb1);
  for (int step = s0; step < s1; ++step) {
    uint4 wn[2] = {};
    uint8_t sn[2] = {};
    if (step + kAhead < s1) load(step + kAhead, wn, sn);
    if constexpr (NT >= 4) {  // the token rows' pieces two steps ahead (each lane's first word: every line)
      if (step + 2 < s1) {
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int p = 0; p < P; ++p) prefetch_l1(a.xq + lin_x_offset(FMT, xm[j], t, step + 2, 0, a.K) + p * a.plane);
      }
    }
    MoeScale sc[2];
    bool two = false;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      sc[r] = kQuant ? moe_chunk_scale(sb[r], MoeGemvFmt<FMT>::bias) : MoeScale{kMoeOnex2, kMoeOnex2, false};
      two |= sc[r].two;
    }
    float c[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) c[j][q] = 0.f;
    if (__any_sync(0xffffffffu, two)) {  // a scale past 2^(127 - bias): never in a checkpoint
      tc_step<FMT, NT, P, true>(w, sc, a.xq, xm, t, step, a.K, a.plane, c);
    } else {
      tc_step<FMT, NT, P, false>(w, sc, a.xq, xm, t, step, a.K, a.plane, c);
    }
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[j][q] += c[j][q];
    if ((step + 1) % a.per == 0 || step + 1 == s1) {  // a split ends: as the partials' sum would add it
      const bool first = step + 1 - s0 <= a.per;
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          total[j][q] = first ? acc[j][q] : total[j][q] + acc[j][q];
          acc[j][q] = 0.f;
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      w[r] = kAhead == 2 ? w1[r] : wn[r];
      sb[r] = kAhead == 2 ? sb1[r] : sn[r];
      w1[r] = wn[r];
      sb1[r] = sn[r];
    }
  }

  // total[j][c]: weight row n0 + g + 8 (c >> 1), token m0 + 8j + 2t + (c & 1)
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t m = m0 + lin_out_token(j, t, c);
      const int row = n0 + lin_out_row(g, c);
      if (m >= a.M || row >= a.N) continue;
      const size_t o = static_cast<size_t>(m) * a.N + row;
      if (a.splits > 1 && !a.serial) {
        a.part[static_cast<size_t>(blockIdx.z) * a.M * a.N + o] = total[j][c];
      } else if (a.y_bf16) {
        static_cast<__nv_bfloat16*>(a.y)[o] = __float2bfloat16_rn(total[j][c]);
      } else {
        static_cast<float*>(a.y)[o] = total[j][c];
      }
    }
}

template <int FMT, int NT, int P>
void launch(const LinTc& a, cudaStream_t stream) {
  const int64_t groups = (a.M + 8 * NT - 1) / (8 * NT);
  const dim3 grid(static_cast<unsigned>(groups), (a.N + kLinBlockRows - 1) / kLinBlockRows, a.serial ? 1 : a.splits);
  linear_tc<FMT, NT, P><<<grid, 32 * kLinWarps, 0, stream>>>(a);
}

template <int FMT, int P>
void launch_tiles(const LinTc& a, cudaStream_t stream) {
  switch (lin_tiles(FMT, a.M, P)) {
    case 1: return launch<FMT, 1, P>(a, stream);
    case 2: return launch<FMT, 2, P>(a, stream);
    case 4: return launch<FMT, 4, P>(a, stream);
    default:
      if constexpr (P == 1 && FMT != kMoeFormatFp4) return launch<FMT, 8, P>(a, stream);
      return launch<FMT, 4, P>(a, stream);
  }
}

template <int FMT>
void launch_planes(const LinTc& a, int planes, cudaStream_t stream) {
  if (planes == 3) {
    launch_tiles<FMT, 3>(a, stream);
  } else {
    launch_tiles<FMT, 1>(a, stream);
  }
}

}  // namespace

void linear_tc_launch(const LinTc& a, int fmt, int planes, cudaStream_t stream) {
  if (fmt == kMoeFormatFp4) {
    launch_planes<kMoeFormatFp4>(a, planes, stream);
  } else if (fmt == kMoeFormatFp8) {
    launch_planes<kMoeFormatFp8>(a, planes, stream);
  } else {
    launch_planes<kMoeFormatBf16>(a, planes, stream);
  }
}

}  // namespace v4cli::cuda
