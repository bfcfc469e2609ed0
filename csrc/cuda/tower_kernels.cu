// The levels above level 0 of a tower on the device: csrc/hyperfused/tower.h in a one-thread kernel (the
// vectors are a handful of hyperparameters, or one per tensor with per-tensor lrs), so a step needs no host
// round trip and can be captured in a CUDA graph. No torch headers here.
#include <cuda_runtime.h>

#include "../hyperfused/tower.h"
#include "finish.cuh"
#include "tower_cuda.h"

namespace hyperfused {
namespace cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(1) tower_plan_kernel(TowerDesc<T> d, const T* d0, const bool* finite, T* scr,
                                                       bool* ok) {
  *ok = tower_plan<T>(d, d0, *finite, scr);
}

template <typename T>
__global__ void __launch_bounds__(1) tower_commit_kernel(TowerDesc<T> d, const T* scr, const bool* ok) {
  tower_commit<T>(d, scr, *ok);
}

// Pass A's finishing step and the levels above in one launch: one block; its threads add the partial sums of
// the tensors (each tensor's in block order, as finish_kernel), then thread 0 turns the rows into level 0's flat
// hypergradient and runs the tower's plan on it.
constexpr int kFinishThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kFinishThreads) finish_tower_kernel(const double* partials, const int* block_ids,
                                                                      int total_blocks, double* rows, int n,
                                                                      D0Map m, TowerDesc<T> d, T* d0, T* scr,
                                                                      bool* ok) {
  for (int t = threadIdx.x; t < n; t += blockDim.x) finish_row(partials, block_ids, total_blocks, rows, t);
  __syncthreads();
  if (threadIdx.x == 0) {
    const bool finite = tower_d0_from_rows<T>(rows, n, m, d0);
    *ok = tower_plan<T>(d, d0, finite, scr);
  }
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
  tower_plan_kernel<float><<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(d, d0, finite, scr, ok);
}
void launch_tower_plan(const TowerDesc<double>& d, const double* d0, const bool* finite, double* scr, bool* ok,
                       void* stream) {
  tower_plan_kernel<double><<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(d, d0, finite, scr, ok);
}
void launch_tower_commit(const TowerDesc<float>& d, const float* scr, const bool* ok, void* stream) {
  tower_commit_kernel<float><<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(d, scr, ok);
}
void launch_tower_commit(const TowerDesc<double>& d, const double* scr, const bool* ok, void* stream) {
  tower_commit_kernel<double><<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(d, scr, ok);
}

}  // namespace cuda
}  // namespace hyperfused
