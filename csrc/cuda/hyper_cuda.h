// The interface between the torch-facing CUDA registrations (ops_cuda.cpp, which includes torch) and the
// kernels (hyper_kernels.cu, which does not: torch headers cost minutes of nvcc time per file). Plain C++:
// raw device pointers, sizes, a stream.
#pragma once

#include <cstdint>

#include "../hyperfused/hyper_math.h"

namespace hyperfused {
namespace cuda {

enum class DType : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

// Tensors per launch and blocks per launch of the multi-tensor kernels: the lists travel to the kernel by
// value, as kernel arguments (like torch's multi_tensor_apply), so they are bounded; the host launches as
// many times as needed.
constexpr int kMaxTensors = 24;
constexpr int kMaxBlocks = 320;
// Elements per block: each block works on one chunk of one tensor.
constexpr int64_t kChunk = 65536;
constexpr int kThreads = 512;

// One launch's worth of tensors. `x`, `g`, `s0..s2` are element pointers (param, grad, state) of tensor i.
struct TensorTable {
  void* x[kMaxTensors];
  const void* g[kMaxTensors];
  void* s[3][kMaxTensors];
  int64_t numel[kMaxTensors];
  int global_index[kMaxTensors];   // the tensor's index in the whole call (row of the scalar table)
  unsigned char block_tensor[kMaxBlocks];
  int block_chunk[kMaxBlocks];
  int n_tensors;
  int n_blocks;
};

struct LaunchFlags {
  int kind;
  int learn;
  bool momentum;
  double eps;       // D(s) = sqrt(s + eps_root) + eps (hyper_math.h)
  double eps_root;
  // every array of the call starts at a multiple of kVec elements' bytes: the kernels then move kVec
  // consecutive elements per access (16 bytes for float32 arrays), with an element-wise tail
  bool aligned = false;
};

// Elements per vector access of the packed paths.
constexpr int kVec = 4;

// Pass A (and the non-finite count): per-block partial sums [4] of g * J_{lr,h1,h2} and non-finite g into
// `partials` at rows [block_offset, block_offset + n_blocks); `block_ids` gets each block's tensor index.
// inv_scale (device pointer, may be null): GradScaler's 1 / scale, multiplied into every gradient element read.
void launch_reduce(DType dtype, const TensorTable& table, const LaunchFlags& f, bool with_jac, const double* scal,
                   const double* inv_scale, double* partials, int* block_ids, int block_offset, void* stream);

// Pass B: the update, skipped by every block when *ok is false; with `scal_jac` (one-pass mode) the blocks
// also write pass A's partial sums from the state they read before writing it.
void launch_update(DType dtype, const TensorTable& table, const LaunchFlags& f, const double* scal,
                   const double* scal_jac, const double* inv_scale, const bool* ok, double* partials,
                   int* block_ids, int block_offset, void* stream);

// Combine the partial sums of every block into per-tensor rows out[n_tensors][4], in block order (fixed:
// deterministic, no atomics).
void launch_finish(const double* partials, const int* block_ids, int total_blocks, double* out, int n_tensors,
                   void* stream);

// Per-pair dot products in float64 through the same partial-sum scheme (a = g, b = s[0]).
void launch_dot(DType dtype, const TensorTable& table, double* partials, int* block_ids, int block_offset,
                void* stream);

}  // namespace cuda
}  // namespace hyperfused
