// Walking tensors into the TensorTables of the multi-tensor CUDA kernels (hyper_cuda.h). Plain C++ with no torch
// or CUDA headers, so the CPU extension compiles it too and tests it on CPU (op hyperfused::_cuda_table_plan).
#pragma once

#include <cstdint>

#include "hyper_cuda.h"

namespace hyperfused {
namespace cuda {

// Walk tensors 0..n-1 chunk by chunk (kChunk elements a block). `numel(i)` is tensor i's size; `fill(tab, slot, i)`
// writes tensor i's pointers into table slot `slot`; `launch(tab, block_offset)` is called for every full table and
// for the last one, block_offset being the table's first block among all blocks of the walk (its row in the
// partial-sum workspace). A tensor whose chunks do not fit in a table continues in the next, added there again
// (slot 0), for as many tables as it needs.
template <typename Numel, typename Fill, typename Launch>
void walk_tables(int64_t n, Numel&& numel, Fill&& fill, Launch&& launch) {
  TensorTable tab{};
  int offset = 0;
  auto add = [&](int64_t i) {
    const int slot = tab.n_tensors++;
    fill(tab, slot, i);
    tab.numel[slot] = numel(i);
    tab.global_index[slot] = static_cast<int>(i);
  };
  auto flush = [&] {
    if (tab.n_blocks > 0) launch(tab, offset);
    offset += tab.n_blocks;
    tab = TensorTable{};
  };
  for (int64_t i = 0; i < n; ++i) {
    const int64_t m = numel(i);
    if (m == 0) continue;
    if (tab.n_tensors == kMaxTensors) flush();
    add(i);
    const int64_t chunks = (m + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      if (tab.n_blocks == kMaxBlocks) {   // full: launch it, the tensor goes on in the next table
        flush();
        add(i);
      }
      tab.block_tensor[tab.n_blocks] = static_cast<unsigned char>(tab.n_tensors - 1);
      tab.block_chunk[tab.n_blocks] = static_cast<int>(c);
      ++tab.n_blocks;
    }
  }
  flush();
}

}  // namespace cuda
}  // namespace hyperfused
