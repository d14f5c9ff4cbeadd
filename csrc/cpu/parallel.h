// Work split over torch's intra-op threads, for kernels built without OpenMP.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>

#include <cstdint>

namespace v4cli {

// at::parallel_for where the kernels are built with OpenMP. torch's cpp_extension does not add -fopenmp, and
// without it the header's at::parallel_for is a plain loop; then the work goes through TensorIterator::for_each,
// which runs at::parallel_for inside libtorch: the same intra-op threads, torch.set_num_threads included.
template <typename Fn>
void parallel_tasks(int64_t n, int64_t grain, const Fn& fn) {
#ifdef _OPENMP
  at::parallel_for(0, n, grain, fn);
#else
  if (n <= grain || n <= 1 || at::get_num_threads() <= 1 || at::in_parallel_region()) {
    fn(int64_t(0), n);
    return;
  }
  at::Tensor slots = at::empty({n}, at::TensorOptions().dtype(at::kByte));
  at::TensorIterator iter =
      at::TensorIteratorConfig().add_output(slots).check_all_same_dtype(false).resize_outputs(false).build();
  const char* base = static_cast<const char*>(slots.data_ptr());
  iter.for_each(
      [&](char** data, const int64_t* strides, int64_t size0, int64_t size1) {
        for (int64_t j = 0; j < size1; ++j) {
          const int64_t b = (data[0] + j * strides[1]) - base;  // one byte per slot, contiguous
          fn(b, b + size0);
        }
      },
      grain);
#endif
}

}  // namespace v4cli
