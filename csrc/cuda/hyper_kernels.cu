// CUDA kernels of the hypergradient passes (docs/MATH.md §4, §6). No torch headers here (see hyper_cuda.h).
//
// Multi-tensor scheme: the host cuts every tensor into chunks of kChunk elements and describes them in one flat
// table in device memory (pointers, sizes, block -> (tensor, chunk); hyper_cuda.h FlatTable), kept by the host
// per pointer set; one block per chunk, one launch a pass. Reductions: each block reduces its chunk in shared memory in a fixed tree
// order and writes its partial sums (and its tensor's index) to a workspace row; launch_finish then adds the
// rows of each tensor in block order. No floating-point atomics: results repeat bit for bit. Scalars (per
// tensor: hyperparameter values, step) and the skip flag are read from device memory, so nothing in a step
// needs the host and the step can be captured in a CUDA graph. Indices are 64-bit.
//
// Bytes per parameter of each pass (fp32, docs/MATH.md §6): pass A reads g and the state the Jacobian needs
// (Adam lr only 12, with betas 16); pass B reads w, g, state and writes w, state (Adam 28, +4 when it also
// stores the previous gradient); one-pass mode adds nothing to pass B but the partial sums.
#include <cuda_runtime.h>

#include "../hyperfused/hyper_elem.h"
#include "convert_cuda.cuh"
#include "finish.cuh"
#include "hyper_cuda.h"

namespace hyperfused {
namespace cuda {
namespace {

// kVec elements in one access: 16 bytes for float32 (8 for half and bfloat16, 2 x 16 for float64).
template <typename P, int N>
struct alignas(sizeof(P) * N) Pack {
  P v[N];
};

struct VecMem {
  template <typename P, int N>
  __device__ __forceinline__ static void load(const P* p, P (&out)[N]) {
    const Pack<P, N> pk = *reinterpret_cast<const Pack<P, N>*>(p);
#pragma unroll
    for (int e = 0; e < N; ++e) out[e] = pk.v[e];
  }
  template <typename P, int N>
  __device__ __forceinline__ static void store(P* p, const P (&in)[N]) {
    Pack<P, N> pk;
#pragma unroll
    for (int e = 0; e < N; ++e) pk.v[e] = in[e];
    *reinterpret_cast<Pack<P, N>*>(p) = pk;
  }
};

template <typename T>
__device__ __forceinline__ Scalars<T> row_scalars(const double* row, const LaunchFlags& f, T) {
  return row_scalars_of<T>(row, f.eps, f.eps_root);
}

template <typename S, typename T, typename Table>
__device__ __forceinline__ Arrays<S, T> arrays(const Table& tab, int t) {
  Arrays<S, T> a;
  a.x = static_cast<S*>(tab.x[t]);
  a.g = static_cast<const S*>(tab.g[t]);
  a.s0 = static_cast<T*>(tab.s[0][t]);
  a.s1 = static_cast<T*>(tab.s[1][t]);
  a.s2 = static_cast<T*>(tab.s[2][t]);
  return a;
}

// Sum acc[0..3] over the block in a fixed order; thread 0 writes the row.
struct Sums {
  double v[4];
};

__device__ __forceinline__ void block_sums(const Sums acc, double* partials, int* block_ids, int row, int tensor) {
  __shared__ double sh[4][kThreads];
#pragma unroll
  for (int q = 0; q < 4; ++q) sh[q][threadIdx.x] = acc.v[q];
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
#pragma unroll
      for (int q = 0; q < 4; ++q) sh[q][threadIdx.x] += sh[q][threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
#pragma unroll
    for (int q = 0; q < kRowCols; ++q) partials[int64_t(row) * kRowCols + q] = sh[q][0];
    block_ids[row] = tensor;
  }
}

// One element of pass A: the non-finite count and, where the Jacobian is valid, the sums g * J.
template <typename S, typename T>
__device__ __forceinline__ void element_sums(int KIND, const LaunchFlags& f, bool valid, const Arrays<S, T>& a,
                                             int64_t i, const Scalars<T>& c, T g, T& s0, T& s1, T& s2, T& bad) {
  bad += (g - g == T(0)) ? T(0) : T(1);
  if (valid) {
    T j0, j1, j2;
    element_jac<S, T>(KIND, f.learn, f.momentum, a, i, c, j0, j1, j2);
    s0 += g * j0;
    s1 += g * j1;
    s2 += g * j2;
  }
}

template <typename S, typename T, int KIND>
__device__ __forceinline__ Sums chunk_sums(const Arrays<S, T>& a, const LaunchFlags& f, bool valid,
                                           const Scalars<T>& c, T inv, int64_t begin, int64_t end) {
  T s0 = 0, s1 = 0, s2 = 0, bad = 0;
  int64_t tail = begin;
  if (f.aligned) {   // chunks start at multiples of kChunk: aligned when the arrays are
    const int64_t packs = (end - begin) / kVec;
    for (int64_t v = threadIdx.x; v < packs; v += kThreads)
      jac_pack<kVec, VecMem, S, T>(KIND, f.learn, f.momentum, valid, a, begin + v * kVec, c, inv, s0, s1, s2, bad);
    tail = begin + packs * kVec;
  }
  // unaligned arrays, and the chunk's tail, element by element (jac_pack<1> here gave an sm_90 spill)
  for (int64_t i = tail + threadIdx.x; i < end; i += kThreads)
    element_sums<S, T>(KIND, f, valid, a, i, c, Convert<T, S>::run(a.g[i]) * inv, s0, s1, s2, bad);
  return Sums{{double(s0), double(s1), double(s2), double(bad)}};
}

template <typename S, int KIND>
__global__ void __launch_bounds__(kThreads)
    reduce_kernel(FlatTable tab, LaunchFlags f, bool with_jac, const double* scal, const double* inv_scale,
                  double* partials, int* block_ids) {
  using T = typename Math<S>::T;
  const int t = static_cast<int>(tab.block_tensor[blockIdx.x]);
  const int64_t begin = int64_t(tab.block_chunk[blockIdx.x]) * kChunk;
  const int64_t end = min(tab.numel[t], begin + kChunk);
  const double* row = scal + int64_t(tab.global_index[t]) * kTableCols;
  const bool valid = with_jac && row[kColValid] != 0.0 && f.learn != 0;
  const Scalars<T> c = row_scalars(row, f, T(0));
  const T inv = inv_scale != nullptr ? T(*inv_scale) : T(1);
  const Sums acc = chunk_sums<S, T, KIND>(arrays<S, T>(tab, t), f, valid, c, inv, begin, end);
  block_sums(acc, partials, block_ids, blockIdx.x, static_cast<int>(tab.global_index[t]));
}

template <typename S, int KIND>
__global__ void __launch_bounds__(kThreads)
    update_kernel(FlatTable tab, LaunchFlags f, const double* scal, const double* scal_jac,
                  const double* inv_scale, const bool* ok, double* partials, int* block_ids) {
  using T = typename Math<S>::T;
  const int t = static_cast<int>(tab.block_tensor[blockIdx.x]);
  const int64_t begin = int64_t(tab.block_chunk[blockIdx.x]) * kChunk;
  const int64_t end = min(tab.numel[t], begin + kChunk);
  const Arrays<S, T> a = arrays<S, T>(tab, t);
  const bool go = *ok;
  const T inv = inv_scale != nullptr ? T(*inv_scale) : T(1);   // GradScaler's 1 / scale (1: unscaled gradients)
  const Scalars<T> c = row_scalars(scal + int64_t(tab.global_index[t]) * kTableCols, f, T(0));
  if (scal_jac != nullptr) {
    // one-pass mode, one read of the chunk: each element's sums from the old state, then (where the step is
    // taken) its update, by the same thread from the same registers; the partial sums in the order of pass A
    const double* rj = scal_jac + int64_t(tab.global_index[t]) * kTableCols;
    const bool valid = rj[kColValid] != 0.0 && f.learn != 0;
    const Scalars<T> cj = row_scalars(rj, f, T(0));
    T s0 = 0, s1 = 0, s2 = 0, bad = 0;
    int64_t tail = begin;
    if (f.aligned) {
      const int64_t packs = (end - begin) / kVec;
      for (int64_t v = threadIdx.x; v < packs; v += kThreads)
        update_jac_pack<kVec, VecMem, S, T>(KIND, f.learn, f.momentum, valid, go, a, begin + v * kVec, c, cj, inv,
                                            s0, s1, s2, bad);
      tail = begin + packs * kVec;
    }
    for (int64_t i = tail + threadIdx.x; i < end; i += kThreads) {
      const T g = Convert<T, S>::run(a.g[i]) * inv;
      element_sums<S, T>(KIND, f, valid, a, i, cj, g, s0, s1, s2, bad);
      if (go) element_update<S, T>(KIND, f.learn, f.momentum, a, i, c, g);
    }
    block_sums(Sums{{double(s0), double(s1), double(s2), double(bad)}}, partials, block_ids, blockIdx.x,
               static_cast<int>(tab.global_index[t]));
    return;
  }
  if (!go) return;
  int64_t tail = begin;
  if (f.aligned) {
    const int64_t packs = (end - begin) / kVec;
    for (int64_t v = threadIdx.x; v < packs; v += kThreads)
      update_pack<kVec, VecMem, S, T>(KIND, f.learn, f.momentum, a, begin + v * kVec, c, inv);
    tail = begin + packs * kVec;
  }
  // unaligned arrays, and the chunk's tail, element by element in place (update_pack<1> here gave more spills)
  for (int64_t i = tail + threadIdx.x; i < end; i += kThreads)
    element_update<S, T>(KIND, f.learn, f.momentum, a, i, c, Convert<T, S>::run(a.g[i]) * inv);
}

template <typename S>
__global__ void __launch_bounds__(kThreads)
    dot_kernel(FlatTable tab, double* partials, int* block_ids) {
  const int t = static_cast<int>(tab.block_tensor[blockIdx.x]);
  const int64_t begin = int64_t(tab.block_chunk[blockIdx.x]) * kChunk;
  const int64_t end = min(tab.numel[t], begin + kChunk);
  const S* x = static_cast<const S*>(tab.g[t]);
  const S* y = static_cast<const S*>(tab.s[0][t]);
  double acc = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads)
    acc += double(Convert<float, S>::run(x[i])) * double(Convert<float, S>::run(y[i]));
  block_sums(Sums{{acc, 0, 0, 0}}, partials, block_ids, blockIdx.x, static_cast<int>(tab.global_index[t]));
}

template <>
__global__ void __launch_bounds__(kThreads)
    dot_kernel<double>(FlatTable tab, double* partials, int* block_ids) {
  const int t = static_cast<int>(tab.block_tensor[blockIdx.x]);
  const int64_t begin = int64_t(tab.block_chunk[blockIdx.x]) * kChunk;
  const int64_t end = min(tab.numel[t], begin + kChunk);
  const double* x = static_cast<const double*>(tab.g[t]);
  const double* y = static_cast<const double*>(tab.s[0][t]);
  double acc = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) acc += x[i] * y[i];
  block_sums(Sums{{acc, 0, 0, 0}}, partials, block_ids, blockIdx.x, static_cast<int>(tab.global_index[t]));
}

// One thread per tensor adds that tensor's rows in block order.
__global__ void finish_kernel(const double* partials, const int* block_ids, int total_blocks, double* out,
                              int n_tensors) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t < n_tensors) finish_row(partials, block_ids, total_blocks, out, t);
}

// Every kind of kinds.h's table (the registration checked the id), instantiated for the storage type S.
template <template <typename, int> class Launch, typename S, typename... Args>
void by_kind_of(int kind, Args&&... args) {
#define HF_KIND_CASE(name, ...) \
  case name:                    \
    Launch<S, name>::run(args...); \
    break;
  switch (kind) { HF_KINDS(HF_KIND_CASE) default: break; }
#undef HF_KIND_CASE
}

template <template <typename, int> class Launch, typename... Args>
void by_kind(DType dtype, int kind, Args&&... args) {
  switch (dtype) {
    case DType::kFloat: by_kind_of<Launch, float>(kind, args...); break;
    case DType::kDouble: by_kind_of<Launch, double>(kind, args...); break;
    case DType::kHalf: by_kind_of<Launch, __half>(kind, args...); break;
    default: by_kind_of<Launch, __nv_bfloat16>(kind, args...); break;
  }
}

template <typename S, int KIND>
struct ReduceLaunch {
  static void run(const FlatTable& tab, const LaunchFlags& f, bool with_jac, const double* scal,
                  const double* inv_scale, double* partials, int* block_ids, cudaStream_t stream) {
    reduce_kernel<S, KIND><<<tab.n_blocks, kThreads, 0, stream>>>(tab, f, with_jac, scal, inv_scale, partials,
                                                                  block_ids);
  }
};

template <typename S, int KIND>
struct UpdateLaunch {
  static void run(const FlatTable& tab, const LaunchFlags& f, const double* scal, const double* scal_jac,
                  const double* inv_scale, const bool* ok, double* partials, int* block_ids, cudaStream_t stream) {
    update_kernel<S, KIND><<<tab.n_blocks, kThreads, 0, stream>>>(tab, f, scal, scal_jac, inv_scale, ok,
                                                                  partials, block_ids);
  }
};

// launch_upload's piece: the values travel as the kernel's argument (4 KB is every architecture's limit).
constexpr int kUploadLen = 500;
struct UploadPiece {
  int64_t v[kUploadLen];
};

__global__ void upload_kernel(UploadPiece piece, int len, int64_t* dst) {
  for (int i = threadIdx.x; i < len; i += blockDim.x) dst[i] = piece.v[i];
}

}  // namespace

void launch_reduce(DType dtype, const FlatTable& table, const LaunchFlags& f, bool with_jac, const double* scal,
                   const double* inv_scale, double* partials, int* block_ids, void* stream) {
  if (table.n_blocks == 0) return;
  by_kind<ReduceLaunch>(dtype, f.kind, table, f, with_jac, scal, inv_scale, partials, block_ids,
                        static_cast<cudaStream_t>(stream));
}

void launch_update(DType dtype, const FlatTable& table, const LaunchFlags& f, const double* scal,
                   const double* scal_jac, const double* inv_scale, const bool* ok, double* partials,
                   int* block_ids, void* stream) {
  if (table.n_blocks == 0) return;
  by_kind<UpdateLaunch>(dtype, f.kind, table, f, scal, scal_jac, inv_scale, ok, partials, block_ids,
                        static_cast<cudaStream_t>(stream));
}

void launch_upload(const int64_t* values, int64_t len, int64_t* dst, void* stream) {
  for (int64_t at = 0; at < len; at += kUploadLen) {
    const int k = static_cast<int>(len - at < kUploadLen ? len - at : kUploadLen);
    UploadPiece piece;
    for (int i = 0; i < k; ++i) piece.v[i] = values[at + i];
    upload_kernel<<<1, 128, 0, static_cast<cudaStream_t>(stream)>>>(piece, k, dst + at);
  }
}

void launch_finish(const double* partials, const int* block_ids, int total_blocks, double* out, int n_tensors,
                   void* stream) {
  if (n_tensors == 0) return;
  const int threads = 128;
  finish_kernel<<<(n_tensors + threads - 1) / threads, threads, 0, static_cast<cudaStream_t>(stream)>>>(
      partials, block_ids, total_blocks, out, n_tensors);
}

void launch_dot(DType dtype, const FlatTable& table, double* partials, int* block_ids, void* stream) {
  if (table.n_blocks == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat: dot_kernel<float><<<table.n_blocks, kThreads, 0, s>>>(table, partials, block_ids); break;
    case DType::kDouble: dot_kernel<double><<<table.n_blocks, kThreads, 0, s>>>(table, partials, block_ids); break;
    case DType::kHalf: dot_kernel<__half><<<table.n_blocks, kThreads, 0, s>>>(table, partials, block_ids); break;
    default: dot_kernel<__nv_bfloat16><<<table.n_blocks, kThreads, 0, s>>>(table, partials, block_ids); break;
  }
}

}  // namespace cuda
}  // namespace hyperfused
