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
// Pass A's finishing step (partials -> rows [n, 4]) and the tower's plan on the rows, in one launch.
void launch_finish_tower(const double* partials, const int* block_ids, int total_blocks, double* rows, int n,
                         const D0Map& m, const TowerDesc<float>& d, float* d0, float* scr, bool* ok, void* stream);
void launch_finish_tower(const double* partials, const int* block_ids, int total_blocks, double* rows, int n,
                         const D0Map& m, const TowerDesc<double>& d, double* d0, double* scr, bool* ok,
                         void* stream);
void launch_tower_commit(const TowerDesc<float>& d, const float* scr, const bool* ok, void* stream);
void launch_tower_commit(const TowerDesc<double>& d, const double* scr, const bool* ok, void* stream);

}  // namespace cuda
}  // namespace hyperfused
