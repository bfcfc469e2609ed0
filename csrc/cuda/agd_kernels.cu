// CUDA kernels of Automatic Gradient Descent (docs/MATH.md §7). No torch headers here (see hyper_cuda.h).
//
// sumsq / update: multi-tensor, one block per chunk of one tensor (tables by value, as hyper_kernels.cu).
// A block's first (kThreads / S) * S threads are rows of S slices, so each thread meets one slice only:
// it accumulates one sum (pass A) or reads one coefficient (pass B). Bytes per element (fp32): pass A reads
// g (4); pass B reads w, g and writes w (12).
// gv / gtu: one warp per (output row o, slice s) for g v (the row's d_in elements of slice s, read with
// stride S: coalesced for matrices), one block of 32 x 8 threads per (32 columns, slice, range of rows) for g^T u
// (32 consecutive columns per row read together; the ranges' partial sums then added in order, agd_cuda.h).
// Every sum runs in a fixed order.
#include <cuda_runtime.h>

#include "agd_cuda.h"
#include "convert_cuda.cuh"

namespace hyperfused {
namespace cuda {
namespace {

// The chunk of one tensor that block blockIdx.x of an AgdTable launch covers; its first `stride` threads are
// rows of ns slices (thread j meets slice j % ns only).
struct AgdChunk {
  int t, ns, stride;
  int64_t begin, end;
};

__device__ __forceinline__ AgdChunk agd_block_chunk(const AgdTable& tab) {
  AgdChunk c;
  c.t = tab.block_tensor[blockIdx.x];
  c.ns = tab.slices[c.t];
  const int64_t chunk = agd_chunk(c.ns);
  c.begin = int64_t(tab.block_chunk[blockIdx.x]) * chunk;
  c.end = min(tab.numel[c.t], c.begin + chunk);
  c.stride = (kThreads / c.ns) * c.ns;
  return c;
}

template <typename S>
__global__ void __launch_bounds__(kThreads) agd_sumsq_kernel(AgdTable tab, double* partials, int width) {
  const AgdChunk ch = agd_block_chunk(tab);
  const int ns = ch.ns, stride = ch.stride;
  const S* g = static_cast<const S*>(tab.g[ch.t]);
  math_t<S> acc = 0;
  if (int(threadIdx.x) < stride)
    for (int64_t i = ch.begin + threadIdx.x; i < ch.end; i += stride) {
      const math_t<S> v = to_math(g[i]);
      acc += v * v;
    }
  __shared__ double sh[kThreads];
  sh[threadIdx.x] = int(threadIdx.x) < stride ? double(acc) : 0.0;
  __syncthreads();
  // rows r = tid / ns of one slice each column: halve the number of rows, in a fixed order
  for (int h = stride / ns; h > 1;) {
    const int half = (h + 1) / 2;
    const int r = threadIdx.x / ns;
    if (int(threadIdx.x) < stride && r < h - half) sh[threadIdx.x] += sh[threadIdx.x + half * ns];
    __syncthreads();
    h = half;
  }
  if (int(threadIdx.x) < ns) partials[int64_t(blockIdx.x) * width + threadIdx.x] = sh[threadIdx.x];
}

// One thread per (tensor slot, slice): this launch's block rows of that tensor, in block order, into out.
__global__ void agd_sumsq_finish(AgdTable tab, const double* partials, int width, double* out) {
  const int t = blockIdx.x;
  const int s = threadIdx.x;
  if (t >= tab.n_tensors || s >= tab.slices[t]) return;
  double acc = out[tab.slice_offset[t] + s];
  for (int b = 0; b < tab.n_blocks; ++b)
    if (tab.block_tensor[b] == t) acc += partials[int64_t(b) * width + s];
  out[tab.slice_offset[t] + s] = acc;
}

template <typename S>
__global__ void __launch_bounds__(kThreads) agd_update_kernel(AgdTable tab, const double* coef, const bool* ok) {
  using T = math_t<S>;
  if (ok != nullptr && !*ok) return;
  const AgdChunk ch = agd_block_chunk(tab);
  if (int(threadIdx.x) >= ch.stride) return;
  const T c = T(coef[tab.slice_offset[ch.t] + threadIdx.x % ch.ns]);
  S* x = static_cast<S*>(tab.x[ch.t]);
  const S* g = static_cast<const S*>(tab.g[ch.t]);
  for (int64_t i = ch.begin + threadIdx.x; i < ch.end; i += ch.stride)
    x[i] = Convert<S, T>::run(to_math(x[i]) - c * to_math(g[i]));
}

// g v: warp w of the block handles (o, s) = pair blockIdx.x * warps + w of the (d_out x S) pairs.
template <typename S>
__global__ void __launch_bounds__(256) agd_gv_kernel(const S* g, int64_t d_out, int64_t d_in, int ns,
                                                     const double* v, double* gv, double* sq_rows) {
  const int warps = blockDim.x / 32;
  const int64_t pair = int64_t(blockIdx.x) * warps + threadIdx.x / 32;
  if (pair >= d_out * ns) return;
  const int64_t o = pair / ns;
  const int s = int(pair % ns);
  const int lane = threadIdx.x % 32;
  double acc = 0, sq = 0;
  for (int64_t i = lane; i < d_in; i += 32) {
    const double e = double(to_math(g[(o * d_in + i) * ns + s]));
    acc += e * v[int64_t(s) * d_in + i];
    sq += e * e;
  }
  for (int off = 16; off > 0; off >>= 1) {   // fixed butterfly order
    acc += __shfl_down_sync(0xffffffffu, acc, off);
    sq += __shfl_down_sync(0xffffffffu, sq, off);
  }
  if (lane == 0) {
    gv[int64_t(s) * d_out + o] = acc;
    sq_rows[int64_t(s) * d_out + o] = sq;
  }
}

// g^T u: block (32 columns from blockIdx.x, slice blockIdx.y, row range blockIdx.z of `rows` rows), threads
// (32, 8): thread row y sums the range's rows o = r0 + y, r0 + y + 8, ...; the 8 row sums are then added in order
// into row blockIdx.z of `out` ((ranges, S, d_in): the result itself when there is one range).
template <typename S>
__global__ void __launch_bounds__(256) agd_gtu_kernel(const S* g, int64_t d_out, int64_t d_in, int ns, int64_t rows,
                                                      const double* u, double* out) {
  const int64_t i = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int s = blockIdx.y;
  const int64_t r0 = int64_t(blockIdx.z) * rows;
  const int64_t r1 = min(d_out, r0 + rows);
  double acc = 0;
  if (i < d_in)
    for (int64_t o = r0 + threadIdx.y; o < r1; o += 8)
      acc += double(to_math(g[(o * d_in + i) * ns + s])) * u[int64_t(s) * d_out + o];
  __shared__ double sh[8][32];
  sh[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && i < d_in) {
    double total = 0;
    for (int y = 0; y < 8; ++y) total += sh[y][threadIdx.x];
    out[(int64_t(blockIdx.z) * ns + s) * d_in + i] = total;
  }
}

// The row ranges' partial g^T u added in range order: gtu[j] = sum_z part[z][j], j < n = S * d_in.
__global__ void __launch_bounds__(256) agd_gtu_ranges_kernel(const double* part, int ranges, int64_t n, double* gtu) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  double total = 0;
  for (int z = 0; z < ranges; ++z) total += part[int64_t(z) * n + j];
  gtu[j] = total;
}

// Row normalisation: block = one row of one tensor of the table; 256 threads stride over the row, then a fixed
// shared-memory tree adds their sums (deterministic).
constexpr int kRowThreads = 256;
__global__ void __launch_bounds__(kRowThreads) agd_normalize_rows_kernel(AgdRowTable tab, double* norms) {
  const int64_t row = blockIdx.x;
  int t = 0;
  while (t + 1 < tab.n_tensors && row >= tab.row_begin[t + 1]) ++t;
  const int64_t r = row - tab.row_begin[t], d = tab.width[t];
  const double* xr = tab.x[t] + r * d;
  double ss = 0;
  for (int64_t j = threadIdx.x; j < d; j += kRowThreads) ss += xr[j] * xr[j];
  __shared__ double red[kRowThreads];
  red[threadIdx.x] = ss;
  __syncthreads();
  for (int half = kRowThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) red[threadIdx.x] += red[threadIdx.x + half];
    __syncthreads();
  }
  const double n = sqrt(red[0]);
  if (threadIdx.x == 0) norms[tab.norm_offset[t] + r] = n;
  if (n > 0) {
    double* dr = tab.dst[t] + r * d;
    for (int64_t j = threadIdx.x; j < d; j += kRowThreads) dr[j] = xr[j] / n;
  }
}

template <template <typename> class K, typename... Args>
void by_dtype(DType dtype, Args&&... args) {
  switch (dtype) {
    case DType::kFloat: K<float>::run(args...); break;
    case DType::kDouble: K<double>::run(args...); break;
    case DType::kHalf: K<__half>::run(args...); break;
    default: K<__nv_bfloat16>::run(args...); break;
  }
}

template <typename S>
struct SumsqLaunch {
  static void run(const AgdTable& tab, double* partials, int width, double* out, cudaStream_t st) {
    agd_sumsq_kernel<S><<<tab.n_blocks, kThreads, 0, st>>>(tab, partials, width);
    agd_sumsq_finish<<<tab.n_tensors, kAgdMaxSlices, 0, st>>>(tab, partials, width, out);
  }
};

template <typename S>
struct UpdateLaunch {
  static void run(const AgdTable& tab, const double* coef, const bool* ok, cudaStream_t st) {
    agd_update_kernel<S><<<tab.n_blocks, kThreads, 0, st>>>(tab, coef, ok);
  }
};

template <typename S>
struct GvLaunch {
  static void run(const void* g, int64_t d_out, int64_t d_in, int ns, const double* v, double* gv, double* sq,
                  cudaStream_t st) {
    const int64_t pairs = d_out * ns;
    agd_gv_kernel<S><<<unsigned((pairs + 7) / 8), 256, 0, st>>>(static_cast<const S*>(g), d_out, d_in, ns, v, gv,
                                                                 sq);
  }
};

template <typename S>
struct GtuLaunch {
  static void run(const void* g, int64_t d_out, int64_t d_in, int ns, const double* u, double* gtu,
                  double* scratch, cudaStream_t st) {
    const int splits = agd_gtu_splits(d_out, d_in, ns);
    const int64_t rows = (d_out + splits - 1) / splits;
    const int ranges = int((d_out + rows - 1) / rows);
    const dim3 grid(unsigned((d_in + 31) / 32), unsigned(ns), unsigned(ranges));
    agd_gtu_kernel<S><<<grid, dim3(32, 8), 0, st>>>(static_cast<const S*>(g), d_out, d_in, ns, rows, u,
                                                    ranges > 1 ? scratch : gtu);
    if (ranges > 1) {
      const int64_t n = int64_t(ns) * d_in;
      agd_gtu_ranges_kernel<<<unsigned((n + 255) / 256), 256, 0, st>>>(scratch, ranges, n, gtu);
    }
  }
};

}  // namespace

void launch_agd_normalize_rows(const AgdRowTable& table, double* norms, void* stream) {
  const int64_t rows = table.row_begin[table.n_tensors];
  if (rows == 0) return;
  agd_normalize_rows_kernel<<<unsigned(rows), kRowThreads, 0, static_cast<cudaStream_t>(stream)>>>(table, norms);
}

void launch_agd_sumsq(DType dtype, const AgdTable& table, double* partials, int width, double* out, void* stream) {
  if (table.n_blocks == 0) return;
  by_dtype<SumsqLaunch>(dtype, table, partials, width, out, static_cast<cudaStream_t>(stream));
}

void launch_agd_update(DType dtype, const AgdTable& table, const double* coef, const bool* ok, void* stream) {
  if (table.n_blocks == 0) return;
  by_dtype<UpdateLaunch>(dtype, table, coef, ok, static_cast<cudaStream_t>(stream));
}

void launch_agd_gv(DType dtype, const void* g, int64_t d_out, int64_t d_in, int slices, const double* v,
                   double* gv, double* sq_rows, void* stream) {
  if (d_out * d_in * slices == 0) return;
  by_dtype<GvLaunch>(dtype, g, d_out, d_in, slices, v, gv, sq_rows, static_cast<cudaStream_t>(stream));
}

void launch_agd_gtu(DType dtype, const void* g, int64_t d_out, int64_t d_in, int slices, const double* u,
                    double* gtu, double* scratch, void* stream) {
  if (d_out * d_in * slices == 0) return;
  by_dtype<GtuLaunch>(dtype, g, d_out, d_in, slices, u, gtu, scratch, static_cast<cudaStream_t>(stream));
}

}  // namespace cuda
}  // namespace hyperfused
