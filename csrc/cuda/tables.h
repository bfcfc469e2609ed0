// The tables of the multi-tensor CUDA kernels: the flat table of the hypergradient passes and the dot product
// (hyper_cuda.h), and the walk of tensors into bounded by-value tables (AGD, agd_cuda.h). Plain C++ with no torch or CUDA headers, so
// the CPU extension compiles it too and tests it on CPU (op hyperfused::_cuda_table_plan).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

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

// The flat table (hyper_cuda.h FlatTable) of n tensors and `blocks` blocks: where each section starts in the int64
// array, and its length.
struct FlatLayout {
  int64_t n = 0, blocks = 0;
  int64_t ptr(int list) const { return list * n; }       // list 0 x, 1 g, 2..4 s0..s2: element pointers
  int64_t numel() const { return 5 * n; }
  int64_t index() const { return 6 * n; }
  int64_t block_tensor() const { return 7 * n; }
  int64_t block_chunk() const { return 7 * n + blocks; }
  int64_t size() const { return 7 * n + 2 * blocks; }
};

// The flat table's values for tensors 0..n-1: `numel(i)` their sizes, `ptr(list, i)` the element pointer of tensor i
// in list 0..4 (0 where the list is empty); one block per chunk of kChunk elements, in tensor order, chunk by chunk
// (so blocks of one tensor are contiguous and their workspace rows are in tensor order, which the finish's binary
// search needs); an empty tensor gets no block.
template <typename Numel, typename Ptr>
std::vector<int64_t> flat_table(int64_t n, Numel&& numel, Ptr&& ptr, FlatLayout* layout) {
  FlatLayout L;
  L.n = n;
  for (int64_t i = 0; i < n; ++i) L.blocks += (numel(i) + kChunk - 1) / kChunk;
  std::vector<int64_t> v(static_cast<size_t>(L.size()), 0);
  int64_t b = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int list = 0; list < 5; ++list) v[L.ptr(list) + i] = static_cast<int64_t>(ptr(list, i));
    const int64_t m = numel(i);
    v[L.numel() + i] = m;
    v[L.index() + i] = i;
    for (int64_t c = 0; c * kChunk < m; ++c, ++b) {
      v[L.block_tensor() + b] = i;
      v[L.block_chunk() + b] = c;
    }
  }
  *layout = L;
  return v;
}

}  // namespace cuda
}  // namespace hyperfused
