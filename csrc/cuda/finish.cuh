// The finishing step of a reduction: tensor t's per-block partial sums (4 a row, rows tagged with their tensor in
// block_ids) added in block order, so the result does not depend on scheduling. Shared by the finishing kernel
// (hyper_kernels.cu) and the kernel that finishes and then runs the levels above (tower_kernels.cu).
#pragma once

#include <cstdint>

namespace hyperfused {
namespace cuda {

// The walk over the tensors (tables.h) gives workspace rows in tensor order, chunk by chunk, so block_ids is
// non-decreasing and a tensor's rows are contiguous (tests/test_ops.py checks the walk's plan): the first is
// found by binary search and the rows are added from there in block order, the order of a full scan, in
// O(log blocks + the tensor's rows) instead of O(blocks) per tensor.
__device__ inline void finish_row(const double* partials, const int* block_ids, int total_blocks, double* out,
                                  int t) {
  int lo = 0, hi = total_blocks;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (block_ids[mid] < t)
      lo = mid + 1;
    else
      hi = mid;
  }
  double acc[4] = {0, 0, 0, 0};
  for (int b = lo; b < total_blocks && block_ids[b] == t; ++b) {
    for (int q = 0; q < 4; ++q) acc[q] += partials[int64_t(b) * 4 + q];
  }
  for (int q = 0; q < 4; ++q) out[int64_t(t) * 4 + q] = acc[q];
}

}  // namespace cuda
}  // namespace hyperfused
