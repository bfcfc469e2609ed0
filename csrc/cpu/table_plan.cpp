// hyperfused::_cuda_table_plan: the flat table of the CUDA hypergradient kernels (csrc/cuda/tables.h) built on the
// host with stand-in pointers and read back the way the kernels read it, so that tests without a GPU can check which
// tensor, chunk and workspace row every block gets. Nothing is launched.
#include <ATen/ATen.h>

#include <vector>

#include "../hyperfused/check.h"
#include "../cuda/tables.h"

namespace hyperfused {

// One row per block (all blocks of a pass are one launch): (launch, workspace row, tensor the block's x pointer
// belongs to, the block's tensor index, chunk, the tensor's numel), read through the table's sections as the
// kernels read them; a table whose sections disagree with their layout is refused.
at::Tensor cuda_table_plan(c10::IntArrayRef numels) {
  const auto n = static_cast<int64_t>(numels.size());
  for (int64_t i = 0; i < n; ++i) HF_CHECK(numels[i] >= 0, "_cuda_table_plan: negative size ", numels[i]);
  cuda::FlatLayout L;
  const std::vector<int64_t> v = cuda::flat_table(
      n, [&](int64_t i) { return numels[i]; },
      // stand-in pointers that name their tensor and list
      [&](int list, int64_t i) { return static_cast<uintptr_t>((i + 1) * 4096 + list * 8); }, &L);
  HF_CHECK(static_cast<int64_t>(v.size()) == L.size(), "_cuda_table_plan: table of ", v.size(), " values for ",
           L.size());
  std::vector<int64_t> rows;
  for (int64_t b = 0; b < L.blocks; ++b) {
    const int64_t t = v[L.block_tensor() + b];
    HF_CHECK(t >= 0 && t < n, "_cuda_table_plan: block ", b, " names tensor ", t);
    for (int list = 1; list < 5; ++list)
      HF_CHECK(v[L.ptr(list) + t] == v[L.ptr(0) + t] + list * 8, "_cuda_table_plan: the lists of tensor ", t,
               " disagree");
    rows.insert(rows.end(), {0, b, v[L.ptr(0) + t] / 4096 - 1, v[L.index() + t], v[L.block_chunk() + b],
                             v[L.numel() + t]});
  }
  const auto count = static_cast<int64_t>(rows.size()) / 6;
  return at::tensor(rows, at::kLong).reshape({count, 6});
}

}  // namespace hyperfused
