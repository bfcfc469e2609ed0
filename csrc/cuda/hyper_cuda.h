// The interface between the torch-facing CUDA registrations (ops_cuda.cpp, which includes torch) and the
// kernels (hyper_kernels.cu, which does not: torch headers cost minutes of nvcc time per file). Plain C++:
// raw device pointers, sizes, a stream.
#pragma once

#include <cstdint>

#include "../hyperfused/hyper_math.h"

namespace hyperfused {
namespace cuda {

enum class DType : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

// Elements per block: each block works on one chunk of one tensor.
constexpr int64_t kChunk = 65536;
constexpr int kThreads = 512;

// A whole call's tensors in one table in device memory, so that a pass is one launch whatever the number of
// tensors and blocks (tables passed by value, as kernel arguments, bound both: 24 tensors and 320 blocks a launch
// gave ~45 nearly empty launches a pass at 1000 tensors, and a drained GPU between launches at 2^28 elements).
// The table is one int64 array (flat_table_layout in tables.h): the element pointers of x, g, s0..s2, each
// tensor's numel and index, then per block its tensor and chunk; FlatTable points into it.
struct FlatTable {
  void* const* x;
  const void* const* g;
  void* const* s[3];
  const int64_t* numel;
  const int64_t* global_index;   // the tensor's index in the call (row of the scalar table): its own position
  const int64_t* block_tensor;
  const int64_t* block_chunk;
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

// Pass A (and the non-finite count), one launch: per-block partial sums [4] of g * J_{lr,h1,h2} and non-finite g
// into `partials` at rows [0, n_blocks); `block_ids` gets each block's tensor index. inv_scale (device pointer,
// may be null): GradScaler's 1 / scale, multiplied into every gradient element read.
void launch_reduce(DType dtype, const FlatTable& table, const LaunchFlags& f, bool with_jac, const double* scal,
                   const double* inv_scale, double* partials, int* block_ids, void* stream);

// Pass B, one launch: the update, skipped by every block when *ok is false; with `scal_jac` (one-pass mode) the
// blocks also write pass A's partial sums from the state they read before writing it.
void launch_update(DType dtype, const FlatTable& table, const LaunchFlags& f, const double* scal,
                   const double* scal_jac, const double* inv_scale, const bool* ok, double* partials,
                   int* block_ids, void* stream);

// Copies `len` int64 values from host memory into the device array `dst` through kernel arguments (a few KB a
// launch): no copy from host memory, so it may run while a CUDA graph is captured (the values are part of the
// captured launches) and needs no pinned buffer to outlive it.
void launch_upload(const int64_t* values, int64_t len, int64_t* dst, void* stream);

// Combine the partial sums of every block into per-tensor rows out[n_tensors][4], in block order (fixed:
// deterministic, no atomics).
void launch_finish(const double* partials, const int* block_ids, int total_blocks, double* out, int n_tensors,
                   void* stream);

// Per-pair dot products in float64 through the same partial-sum scheme (a = g, b = s[0]).
void launch_dot(DType dtype, const FlatTable& table, double* partials, int* block_ids, void* stream);

}  // namespace cuda
}  // namespace hyperfused
