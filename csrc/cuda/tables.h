// Walking tensors into the TensorTables of the multi-tensor CUDA kernels (hyper_cuda.h). Plain C++ with no torch
// or CUDA headers, so the CPU extension compiles it too and tests it on CPU (op hyperfused::_cuda_table_plan).
#pragma once

#include <cstdint>
#include <utility>

#include "hyper_cuda.h"

namespace hyperfused {
namespace cuda {

// Walk tensors 0..n-1 into tables of at most kMaxT tensors and kMaxB blocks, one block a chunk. `size(i)` is
// {tensor i's elements, elements a chunk}; `fill(tab, slot, i)` writes tensor i into table slot `slot`;
// `launch(tab, block_offset)` is called for every full table and for the last one, block_offset being the table's
// first block among all blocks of the walk (its row in a partial-sum workspace). A tensor whose chunks do not fit
// in a table continues in the next, added there again (slot 0), for as many tables as it needs. Empty tensors get
// no slot. The Table type has n_tensors, n_blocks, block_tensor[] and block_chunk[].
template <typename Table, int kMaxT, int kMaxB, typename Size, typename Fill, typename Launch>
void walk(int64_t n, Size&& size, Fill&& fill, Launch&& launch) {
  Table tab{};
  int offset = 0;
  auto add = [&](int64_t i) { fill(tab, tab.n_tensors++, i); };
  auto flush = [&] {
    if (tab.n_blocks > 0) launch(tab, offset);
    offset += tab.n_blocks;
    tab = Table{};
  };
  for (int64_t i = 0; i < n; ++i) {
    const auto [m, per_chunk] = size(i);
    if (m == 0) continue;
    if (tab.n_tensors == kMaxT) flush();
    add(i);
    const int64_t chunks = (m + per_chunk - 1) / per_chunk;
    for (int64_t c = 0; c < chunks; ++c) {
      if (tab.n_blocks == kMaxB) {   // full: launch it, the tensor goes on in the next table
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

// The hypergradient kernels' walk: chunks of kChunk elements into TensorTables; `fill` writes the pointers, the
// walk the size and the tensor's index in the call.
template <typename Numel, typename Fill, typename Launch>
void walk_tables(int64_t n, Numel&& numel, Fill&& fill, Launch&& launch) {
  walk<TensorTable, kMaxTensors, kMaxBlocks>(
      n, [&](int64_t i) { return std::pair<int64_t, int64_t>(numel(i), kChunk); },
      [&](TensorTable& tab, int slot, int64_t i) {
        fill(tab, slot, i);
        tab.numel[slot] = numel(i);
        tab.global_index[slot] = static_cast<int>(i);
      },
      launch);
}

}  // namespace cuda
}  // namespace hyperfused
