// hyperfused::_cuda_table_plan: the CUDA kernels' walk over tensors (csrc/cuda/tables.h) run on the host with
// stand-in pointers, so that tests without a GPU can check which tensor, chunk and workspace row every block of
// every launch gets. Nothing is launched.
#include <ATen/ATen.h>

#include <vector>

#include "../hyperfused/check.h"
#include "../cuda/tables.h"

namespace hyperfused {

// One row per block, in launch order: (launch, workspace row, tensor the block's x pointer belongs to, tensor of
// its slot's global_index, chunk, the slot's numel).
at::Tensor cuda_table_plan(c10::IntArrayRef numels) {
  std::vector<int64_t> rows;
  int64_t launches = 0;
  const auto n = static_cast<int64_t>(numels.size());
  for (int64_t i = 0; i < n; ++i) HF_CHECK(numels[i] >= 0, "_cuda_table_plan: negative size ", numels[i]);
  cuda::walk_tables(
      n, [&](int64_t i) { return numels[i]; },
      [&](cuda::TensorTable& tab, int slot, int64_t i) {   // stand-in pointers that name their tensor
        tab.x[slot] = reinterpret_cast<void*>(static_cast<uintptr_t>((i + 1) * 4096));
      },
      [&](const cuda::TensorTable& tab, int offset) {
        HF_CHECK(tab.n_blocks <= cuda::kMaxBlocks && tab.n_tensors <= cuda::kMaxTensors,
                    "_cuda_table_plan: a table over its bounds");
        for (int b = 0; b < tab.n_blocks; ++b) {
          const int t = tab.block_tensor[b];
          const auto x = reinterpret_cast<uintptr_t>(tab.x[t]);
          rows.insert(rows.end(), {launches, offset + b, static_cast<int64_t>(x / 4096) - 1,
                                   tab.global_index[t], tab.block_chunk[b], tab.numel[t]});
        }
        ++launches;
      });
  const auto count = static_cast<int64_t>(rows.size()) / 6;
  return at::tensor(rows, at::kLong).reshape({count, 6});
}

}  // namespace hyperfused
