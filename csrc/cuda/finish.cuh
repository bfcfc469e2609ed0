// The finishing step of a reduction: tensor t's per-block partial sums (4 a row, rows tagged with their tensor in
// block_ids) added in block order, so the result does not depend on scheduling. Shared by the finishing kernel
// (hyper_kernels.cu) and the kernel that finishes and then runs the levels above (tower_kernels.cu).
#pragma once

#include <cstdint>

namespace hyperfused {
namespace cuda {

__device__ inline void finish_row(const double* partials, const int* block_ids, int total_blocks, double* out,
                                  int t) {
  double acc[4] = {0, 0, 0, 0};
  for (int b = 0; b < total_blocks; ++b) {
    if (block_ids[b] != t) continue;
    for (int q = 0; q < 4; ++q) acc[q] += partials[int64_t(b) * 4 + q];
  }
  for (int q = 0; q < 4; ++q) out[int64_t(t) * 4 + q] = acc[q];
}

}  // namespace cuda
}  // namespace hyperfused
