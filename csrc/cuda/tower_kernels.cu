// The levels above level 0 of a tower on the device: csrc/hyperfused/tower.h in a one-thread kernel (the
// vectors are a handful of hyperparameters, or one per tensor with per-tensor lrs), so a step needs no host
// round trip and can be captured in a CUDA graph. No torch headers here.
#include <cuda_runtime.h>

#include "../hyperfused/tower.h"
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

}  // namespace

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
