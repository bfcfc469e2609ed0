// Interface between the CUDA registrations of the AGD ops (ops_cuda.cpp, with torch) and their kernels
// (agd_kernels.cu, without torch headers): raw pointers, sizes, a stream.
#pragma once

#include <cstdint>

#include "hyper_cuda.h"

namespace hyperfused {
namespace cuda {

constexpr int kAgdMaxTensors = 32;
constexpr int kAgdMaxBlocks = 320;
// Largest slice count (kh * kw) the kernels take: a block's threads are laid out as rows of S slices.
constexpr int kAgdMaxSlices = kThreads;

// One launch's worth of AGD tensors. A tensor of S slices is cut into chunks of (kChunk / S) * S elements,
// so every chunk starts at slice 0 and thread j of a block always meets slice j % S.
struct AgdTable {
  void* x[kAgdMaxTensors];
  const void* g[kAgdMaxTensors];
  int64_t numel[kAgdMaxTensors];
  int slices[kAgdMaxTensors];
  int64_t slice_offset[kAgdMaxTensors];   // first entry of the tensor in the concatenated per-slice vector
  unsigned char block_tensor[kAgdMaxBlocks];
  int block_chunk[kAgdMaxBlocks];
  int n_tensors;
  int n_blocks;
};

HF_HOST_DEVICE int64_t agd_chunk(int slices) { return (kChunk / slices) * slices; }

// Pass A: per-block per-slice sums of squares into partials[row][width] (row = block of this launch), then
// added in block order into out[slice_offset + s] (out zeroed by the caller; launches are stream-ordered,
// so the sums repeat bit for bit).
void launch_agd_sumsq(DType dtype, const AgdTable& table, double* partials, int width, double* out, void* stream);

// Pass B: x -= coef[slice_offset + slice] * g, nothing written when ok (device flag; may be null) is false.
void launch_agd_update(DType dtype, const AgdTable& table, const double* coef, const bool* ok, void* stream);

// Spectral AGD's half-iterations for one tensor of shape (d_out, d_in, S) (S = 1 for a matrix):
// gv[s][o] = sum_i g[o][i][s] v[s][i] with sq_rows[s][o] = sum_i g[o][i][s]^2 (one read of g), and
// gtu[s][i] = sum_o g[o][i][s] u[s][o]. Fixed summation orders: deterministic.
void launch_agd_gv(DType dtype, const void* g, int64_t d_out, int64_t d_in, int slices, const double* v,
                   double* gv, double* sq_rows, void* stream);
// g^T u runs in blocks of 32 columns of one slice: d_in * S / 32 blocks, too few to fill a GPU for most
// matrices (a 4096 x 4096 matrix: 128; a 50257 x 768 embedding: 24). The rows are then split into
// agd_gtu_splits(...) ranges of at least kGtuMinRows rows, until about kGtuTargetBlocks blocks run: each range's
// column sums go to its own partial row of `scratch` (splits * S * d_in doubles; unused for one split) and a second
// kernel adds the partials in range order. The split count depends on the shape only: deterministic.
constexpr int64_t kGtuTargetBlocks = 2048;
constexpr int64_t kGtuMinRows = 256;
inline int agd_gtu_splits(int64_t d_out, int64_t d_in, int slices) {
  const int64_t blocks = ((d_in + 31) / 32) * slices;
  const int64_t want = (kGtuTargetBlocks + blocks - 1) / blocks;
  const int64_t most = (d_out + kGtuMinRows - 1) / kGtuMinRows;
  const int64_t r = want < most ? want : most;
  return static_cast<int>(r < 1 ? 1 : r);
}
void launch_agd_gtu(DType dtype, const void* g, int64_t d_out, int64_t d_in, int slices, const double* u,
                    double* gtu, double* scratch, void* stream);

// The power iteration's row normalisation for up to kAgdMaxTensors (rows, d) float64 matrices per launch: one
// block per row sums x^2 in a fixed tree order, writes the norm to norms[norm_offset + r] and, when it is not
// zero, dst[r] = x[r] / norm (a zero row leaves dst as it was).
struct AgdRowTable {
  const double* x[kAgdMaxTensors];
  double* dst[kAgdMaxTensors];
  int64_t width[kAgdMaxTensors];
  int64_t row_begin[kAgdMaxTensors + 1];   // block index of each tensor's first row within this launch
  int64_t norm_offset[kAgdMaxTensors];     // each tensor's first row in the norms vector
  int n_tensors;
};

void launch_agd_normalize_rows(const AgdRowTable& table, double* norms, void* stream);

}  // namespace cuda
}  // namespace hyperfused
