// Interface between the CUDA registrations of the tower ops (ops_cuda.cpp) and their kernels
// (tower_kernels.cu, without torch headers).
#pragma once

#include "../hyperfused/tower.h"

namespace hyperfused {
namespace cuda {

void launch_tower_plan(const TowerDesc<float>& d, const float* d0, const bool* finite, float* scr, bool* ok,
                       void* stream);
void launch_tower_plan(const TowerDesc<double>& d, const double* d0, const bool* finite, double* scr, bool* ok,
                       void* stream);
void launch_tower_commit(const TowerDesc<float>& d, const float* scr, const bool* ok, void* stream);
void launch_tower_commit(const TowerDesc<double>& d, const double* scr, const bool* ok, void* stream);

}  // namespace cuda
}  // namespace hyperfused
