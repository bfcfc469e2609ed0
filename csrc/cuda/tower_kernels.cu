// The levels above level 0 of a tower on the device: csrc/hyperfused/tower.h in one block whose threads share the
// entries of the vectors (a handful of hyperparameters, or one per tensor with per-tensor lrs), so a step needs no
// host round trip and can be captured in a CUDA graph. No torch headers here.
#include <cuda_runtime.h>

#include "../hyperfused/tower.h"
#include "finish.cuh"
#include "tower_cuda.h"

namespace hyperfused {
namespace cuda {
namespace {

// Threads of the kernels that run the tower (a power of two: the trees below halve it).
constexpr int kFinishThreads = 256;

// tower_plan's policy for one block (tower.h SerialPar): entry r to thread r % blockDim.x, barriers, sums added in
// thread order by thread 0 (fixed: the result does not depend on scheduling).
struct BlockPar {
  __host__ __device__ int tid() const {
#ifdef __CUDA_ARCH__
    return threadIdx.x;
#else
    return 0;
#endif
  }
  __host__ __device__ int nt() const {
#ifdef __CUDA_ARCH__
    return blockDim.x;
#else
    return 1;
#endif
  }
  __host__ __device__ void sync() const {
#ifdef __CUDA_ARCH__
    __syncthreads();
#endif
  }
  template <typename T>
  __host__ __device__ T sum(T v) const {
#ifdef __CUDA_ARCH__
    __shared__ double part[kFinishThreads];
    __shared__ double total;
    part[threadIdx.x] = static_cast<double>(v);      // (exact for float; summed in T below)
    __syncthreads();
    if (threadIdx.x == 0) {
      T acc = T(0);
      for (int i = 0; i < static_cast<int>(blockDim.x); ++i) acc += static_cast<T>(part[i]);
      total = static_cast<double>(acc);
    }
    __syncthreads();
    const T out = static_cast<T>(total);
    __syncthreads();                                  // (part and total are free again)
    return out;
#else
    return v;
#endif
  }
  __host__ __device__ bool all(bool b) const {
#ifdef __CUDA_ARCH__
    return __syncthreads_and(b) != 0;
#else
    return b;
#endif
  }
};

template <typename T>
__global__ void __launch_bounds__(kFinishThreads) tower_commit_kernel(TowerDesc<T> d, const T* scr, const bool* ok) {
  tower_commit<T>(d, scr, *ok, BlockPar{});
}

template <typename T>
__global__ void __launch_bounds__(kFinishThreads) tower_plan_kernel(TowerDesc<T> d, const T* d0, const bool* finite,
                                                                    T* scr, bool* ok) {
  const bool res = tower_plan<T>(d, d0, *finite, scr, BlockPar{});
  if (threadIdx.x == 0) *ok = res;
}


// Pass A's finishing step and the levels above in one launch: one block; its threads add the partial sums of
// the tensors (each tensor's in block order, as finish_kernel), then turn the rows into level 0's flat hypergradient
// together (d0_from_rows_block), and run the tower's plan on it together (BlockPar).

// tower_d0_from_rows (tower.h) by the whole block: each learned column's sum over the n tensors as per-thread sums
// of the rows threadIdx.x, + blockDim.x, ... in order, then a tree over the threads in a fixed order (the result
// depends on n only, not on scheduling; it rounds differently from the serial sum of the C++ op, as the partial
// sums before it do); a per-tensor lr column copied by all threads; the non-finite counts alike. Before, thread 0
// did it alone, O(n) serial loads per column at the end of every step.
template <typename T>
__device__ bool d0_from_rows_block(const double* rows, int n, const D0Map& m, T* d0) {
  __shared__ T red[kFinishThreads];
  __shared__ int bad[kFinishThreads];
  const int tid = threadIdx.x;
  int nb = 0;
  for (int i = tid; i < n; i += blockDim.x) nb += rows[int64_t(i) * kRowCols + kRowNonfinite] != 0.0;
  bad[tid] = nb;
  int64_t pos = 0;
  for (int c = 0; c < m.ncols; ++c) {
    const int col = m.col[c];
    if (col == 0 && m.per_lr) {
      for (int i = tid; i < n; i += blockDim.x) d0[pos + i] = static_cast<T>(rows[int64_t(i) * kRowCols + kColLr]);
      pos += n;
      continue;
    }
    T acc = T(0);
    for (int i = tid; i < n; i += blockDim.x) acc += static_cast<T>(rows[int64_t(i) * kRowCols + col]);
    red[tid] = acc;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
      if (tid < half) red[tid] += red[tid + half];
      __syncthreads();
    }
    if (tid == 0) d0[pos] = red[0];
    __syncthreads();                 // (red is reused by the next column)
    ++pos;
  }
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half >>= 1) {
    if (tid < half) bad[tid] += bad[tid + half];
    __syncthreads();
  }
  return bad[0] == 0;                // (every thread reads the same total; d0 is visible to all after the barrier)
}

template <typename T>
__global__ void __launch_bounds__(kFinishThreads) finish_tower_kernel(const double* partials, const int* block_ids,
                                                                      int total_blocks, double* rows, int n,
                                                                      D0Map m, TowerDesc<T> d, T* d0, T* scr,
                                                                      bool* ok) {
  for (int t = threadIdx.x; t < n; t += blockDim.x) finish_row(partials, block_ids, total_blocks, rows, t);
  __syncthreads();
  const bool finite = d0_from_rows_block<T>(rows, n, m, d0);
  const bool res = tower_plan<T>(d, d0, finite, scr, BlockPar{});
  if (threadIdx.x == 0) *ok = res;
}

template <typename T>
void finish_tower(const double* partials, const int* block_ids, int total_blocks, double* rows, int n,
                  const D0Map& m, const TowerDesc<T>& d, T* d0, T* scr, bool* ok, void* stream) {
  finish_tower_kernel<T><<<1, kFinishThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      partials, block_ids, total_blocks, rows, n, m, d, d0, scr, ok);
}

}  // namespace

void launch_finish_tower(const double* partials, const int* block_ids, int total_blocks, double* rows, int n,
                         const D0Map& m, const TowerDesc<float>& d, float* d0, float* scr, bool* ok, void* stream) {
  finish_tower<float>(partials, block_ids, total_blocks, rows, n, m, d, d0, scr, ok, stream);
}
void launch_finish_tower(const double* partials, const int* block_ids, int total_blocks, double* rows, int n,
                         const D0Map& m, const TowerDesc<double>& d, double* d0, double* scr, bool* ok,
                         void* stream) {
  finish_tower<double>(partials, block_ids, total_blocks, rows, n, m, d, d0, scr, ok, stream);
}

void launch_tower_plan(const TowerDesc<float>& d, const float* d0, const bool* finite, float* scr, bool* ok,
                       void* stream) {
  tower_plan_kernel<float><<<1, kFinishThreads, 0, static_cast<cudaStream_t>(stream)>>>(d, d0, finite, scr, ok);
}
void launch_tower_plan(const TowerDesc<double>& d, const double* d0, const bool* finite, double* scr, bool* ok,
                       void* stream) {
  tower_plan_kernel<double><<<1, kFinishThreads, 0, static_cast<cudaStream_t>(stream)>>>(d, d0, finite, scr, ok);
}
void launch_tower_commit(const TowerDesc<float>& d, const float* scr, const bool* ok, void* stream) {
  tower_commit_kernel<float><<<1, kFinishThreads, 0, static_cast<cudaStream_t>(stream)>>>(d, scr, ok);
}
void launch_tower_commit(const TowerDesc<double>& d, const double* scr, const bool* ok, void* stream) {
  tower_commit_kernel<double><<<1, kFinishThreads, 0, static_cast<cudaStream_t>(stream)>>>(d, scr, ok);
}

}  // namespace cuda
}  // namespace hyperfused
