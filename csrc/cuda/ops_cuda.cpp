// CUDA registrations of the hyperfused ops (same schemas as csrc/ops.cpp; the CPU kernels' contract).
// This file holds the torch side (checks, workspaces, the current stream); the kernels are in
// hyper_kernels.cu, compiled by nvcc without torch headers.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "../hyperfused/check.h"
#include "../hyperfused/tower_desc.h"
#include "agd_cuda.h"
#include "hyper_cuda.h"
#include "tables.h"
#include "tower_cuda.h"

namespace hyperfused {
namespace cuda {
namespace {

constexpr int kScalCols = kTableCols;   // kinds.h
constexpr int kOutCols = kRowCols;

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default: HF_CHECK(false, "hyperfused CUDA kernels: unsupported dtype ", t.scalar_type());
  }
  return DType::kFloat;
}

int64_t total_blocks(at::TensorList grads) {
  int64_t b = 0;
  for (const auto& g : grads) b += (g.numel() + kChunk - 1) / kChunk;
  return b;
}

// ---------------------------------------------------------------------------------------------------------
// The flat tables of the hypergradient passes (hyper_cuda.h FlatTable), kept in device memory per (device, stream,
// pointers, sizes): a step that sees the same tensors at the same addresses as an earlier one (the caching
// allocator's steady state) uploads nothing and launches each pass once. A new pointer set uploads its table
// through kernel arguments (launch_upload), so no host memory is read by the launches.
//
// While a CUDA graph is captured, tables are made for that capture alone (its id is part of the key): the upload is
// recorded, not run, so the table holds its values only once the graph replays, and no eager call or other capture
// may take it. Those tables are kept for the life of the process (the graph's launches read them at every replay,
// and nothing says when a graph is gone): 8 bytes per tensor and list plus 16 per 64K-element chunk, per captured
// pointer set. The eager tables are dropped when 64 of them are kept.
struct TableEntry {
  at::Tensor dev;        // int64 [layout.size()]
  FlatLayout layout;
};

std::mutex g_tables_mu;
std::unordered_map<std::string, TableEntry> g_tables;      // eager
std::unordered_map<std::string, TableEntry> g_captured;    // made during a capture: kept
constexpr size_t kMaxTables = 64;

// The table of a call, and the tensor holding it: the caller keeps that tensor until its launch is enqueued (a
// table dropped from the cache by another thread in between is then freed only after, and its memory, reused on
// this stream, only after the launch in stream order).
std::pair<FlatTable, at::Tensor> flat_table_on_device(at::TensorList params, at::TensorList grads, at::TensorList s0,
                                                      at::TensorList s1, at::TensorList s2, cudaStream_t stream) {
  const int64_t n = grads.size();
  auto ptr = [&](int list, int64_t i) -> uintptr_t {
    const at::TensorList* lists[5] = {&params, &grads, &s0, &s1, &s2};
    const at::TensorList& l = *lists[list];
    return l.empty() ? 0 : reinterpret_cast<uintptr_t>(l[i].data_ptr());
  };
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  unsigned long long capture_id = 0;
  C10_CUDA_CHECK(cudaStreamGetCaptureInfo(stream, &capture, &capture_id));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  // the key: device, stream, capture (0: none), then every pointer and size (what the table is made of)
  std::vector<int64_t> key;
  key.reserve(static_cast<size_t>(6 * n + 3));
  key.push_back(grads[0].get_device());
  key.push_back(static_cast<int64_t>(reinterpret_cast<uintptr_t>(stream)));
  key.push_back(capturing ? static_cast<int64_t>(capture_id) : 0);
  for (int64_t i = 0; i < n; ++i) {
    for (int list = 0; list < 5; ++list) key.push_back(static_cast<int64_t>(ptr(list, i)));
    key.push_back(grads[i].numel());
  }
  std::string k(reinterpret_cast<const char*>(key.data()), key.size() * sizeof(int64_t));
  std::lock_guard<std::mutex> lock(g_tables_mu);
  auto& cache = capturing ? g_captured : g_tables;
  auto it = cache.find(k);
  if (it == cache.end()) {
    FlatLayout layout;
    const std::vector<int64_t> host = flat_table(
        n, [&](int64_t i) { return grads[i].numel(); }, ptr, &layout);
    if (!capturing && cache.size() >= kMaxTables) cache.clear();
    TableEntry entry;
    entry.layout = layout;
    entry.dev = at::empty({std::max<int64_t>(layout.size(), 1)}, grads[0].options().dtype(at::kLong));
    launch_upload(host.data(), layout.size(), entry.dev.data_ptr<int64_t>(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    it = cache.emplace(std::move(k), std::move(entry)).first;
  }
  const TableEntry& e = it->second;
  const FlatLayout& L = e.layout;
  const int64_t* base = e.dev.data_ptr<int64_t>();
  FlatTable t;
  t.x = reinterpret_cast<void* const*>(base + L.ptr(0));
  t.g = reinterpret_cast<const void* const*>(base + L.ptr(1));
  for (int j = 0; j < 3; ++j) t.s[j] = reinterpret_cast<void* const*>(base + L.ptr(2 + j));
  t.numel = base + L.numel();
  t.global_index = base + L.index();
  t.block_tensor = base + L.block_tensor();
  t.block_chunk = base + L.block_chunk();
  t.n_tensors = static_cast<int>(n);
  t.n_blocks = static_cast<int>(L.blocks);
  return {t, e.dev};
}

void check(const char* op, at::TensorList grads, at::TensorList params, at::TensorList s0, at::TensorList s1,
           at::TensorList s2, const at::Tensor& scal) {
  const size_t n = grads.size();
  HF_CHECK(params.empty() || params.size() == n, op, ": ", params.size(), " params for ", n, " grads");
  for (auto* lst : {&s0, &s1, &s2})
    HF_CHECK(lst->empty() || lst->size() == n, op, ": a state list has ", lst->size(), " tensors for ", n, " grads");
  HF_CHECK(scal.is_cuda() && scal.scalar_type() == at::kDouble && scal.dim() == 2 && scal.size(0) == (int64_t)n &&
                  scal.size(1) == kScalCols && scal.is_contiguous(),
              op, ": scalars must be a contiguous float64 CUDA tensor of shape [", n, ", ", kScalCols, "]");
  for (size_t i = 0; i < n; ++i) {
    const auto& g = grads[i];
    HF_CHECK(g.is_cuda() && g.is_contiguous(), op, ": gradient ", i, " must be a contiguous CUDA tensor");
    HF_CHECK(g.scalar_type() == grads[0].scalar_type(), op, ": all gradients must share one dtype");
    HF_CHECK(g.get_device() == grads[0].get_device(), op, ": all tensors must be on one device");
    if (!params.empty())
      HF_CHECK(params[i].is_contiguous() && params[i].numel() == g.numel() &&
                      params[i].scalar_type() == g.scalar_type() && params[i].is_cuda(),
                  op, ": parameter ", i, " must be a contiguous CUDA tensor with the gradient's size and dtype");
    const auto math = g.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    for (auto* lst : {&s0, &s1, &s2})
      if (!lst->empty())
        HF_CHECK((*lst)[i].is_contiguous() && (*lst)[i].numel() == g.numel() && (*lst)[i].is_cuda() &&
                        (*lst)[i].scalar_type() == math,
                    op, ": state tensor ", i, " must be a contiguous CUDA tensor of the gradient's size in ", math);
  }
}

at::Tensor finish(const at::Tensor& partials, const at::Tensor& ids, int64_t n, cudaStream_t stream) {
  auto out = at::empty({n, kOutCols}, partials.options());
  launch_finish(partials.data_ptr<double>(), ids.data_ptr<int>(), static_cast<int>(partials.size(0)),
                out.data_ptr<double>(), static_cast<int>(n), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// Whether every array starts at a multiple of kVec elements' bytes (the kernels' packed loads then apply).
bool vec_aligned(std::initializer_list<at::TensorList> lists) {
  for (const auto& l : lists)
    for (const auto& t : l)
      if (reinterpret_cast<uintptr_t>(t.data_ptr()) % (kVec * t.element_size()) != 0) return false;
  return true;
}

// GradScaler's 1 / scale: a one-element float64 tensor on the gradients' device, read by the kernels.
const double* inv_scale_ptr(const char* op, const c10::optional<at::Tensor>& inv_scale, const at::Tensor& g0) {
  if (!inv_scale.has_value()) return nullptr;
  const auto& f = *inv_scale;
  HF_CHECK(f.numel() == 1 && f.scalar_type() == at::kDouble && f.is_contiguous() && f.device() == g0.device(),
              op, ": inv_scale must be a one-element float64 tensor on ", g0.device(), ", got ", f.scalar_type(),
              " of ", f.numel(), " elements on ", f.device());
  return f.data_ptr<double>();
}

// Pass A's kernels: the per-block partial sums and the blocks' tensor indices.
std::tuple<at::Tensor, at::Tensor> reduce_partials(const char* op, int64_t kind, int64_t learn, bool momentum,
                                                   at::ArrayRef<double> eps, at::TensorList grads, at::TensorList s0,
                                                   at::TensorList s1, at::TensorList s2, const at::Tensor& scal,
                                                   const c10::optional<at::Tensor>& inv_scale, cudaStream_t stream) {
  const int64_t blocks = total_blocks(grads);
  // (every block writes its own row and id: no fill needed, which would be two more launches a pass)
  auto partials = at::empty({blocks, kOutCols}, scal.options());
  auto ids = at::empty({blocks}, scal.options().dtype(at::kInt));
  check_eps(op, eps);
  check_kind(op, kind);
  const LaunchFlags f{static_cast<int>(kind), static_cast<int>(learn), momentum, eps[0], eps[1],
                      vec_aligned({grads, s0, s1, s2})};
  const DType dt = dtype_of(grads[0]);
  const double* inv = inv_scale_ptr(op, inv_scale, grads[0]);
  const auto [tab, keep] = flat_table_on_device({}, grads, s0, s1, s2, stream);
  launch_reduce(dt, tab, f, /*with_jac=*/true, scal.data_ptr<double>(), inv, partials.data_ptr<double>(),
                ids.data_ptr<int>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {partials, ids};
}

at::Tensor hyper_reduce_cuda(int64_t kind, int64_t learn, bool momentum, at::ArrayRef<double> eps, at::TensorList grads,
                             at::TensorList s0, at::TensorList s1, at::TensorList s2, const at::Tensor& scal,
                             const c10::optional<at::Tensor>& inv_scale) {
  check("hyper_reduce", grads, {}, s0, s1, s2, scal);
  const int64_t n = grads.size();
  if (n == 0) return at::zeros({0, kOutCols}, scal.options());
  const c10::cuda::CUDAGuard guard(grads[0].device());
  auto stream = at::cuda::getCurrentCUDAStream();
  auto [partials, ids] = reduce_partials("hyper_reduce", kind, learn, momentum, eps, grads, s0, s1, s2, scal,
                                         inv_scale, stream.stream());
  return finish(partials, ids, n, stream.stream());
}

void check_slots_on(const char* op, at::TensorList slots, const at::Device& device);

// One kernel: the partial sums finished into rows and the levels above run on them (tower_kernels.cu).
template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_and_tower(const at::Tensor& partials, const at::Tensor& ids,
                                                                int64_t n, const TowerDesc<T>& d, const D0Map& m,
                                                                cudaStream_t stream) {
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  auto rows = at::empty({n, kOutCols}, partials.options());
  auto ok = at::empty({}, partials.options().dtype(at::kBool));
  at::Tensor d0 = at::empty({d.lv[1].units}, partials.options().dtype(dtype));
  at::Tensor scr = at::zeros({kScratchRowsPerLevel * d.K * d.block}, partials.options().dtype(dtype));
  launch_finish_tower(partials.data_ptr<double>(), ids.data_ptr<int>(), static_cast<int>(partials.size(0)),
                      rows.data_ptr<double>(), static_cast<int>(n), m, d, d0.data_ptr<T>(), scr.data_ptr<T>(),
                      ok.data_ptr<bool>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {rows, scr, ok};
}

// The ops that run a pass and then the levels above: the tower arguments are parsed before the pass writes
// anything (with_tower_args), then partials(stream) runs the pass's kernels and returns their per-block sums, and
// one kernel finishes those sums and runs the tower (tower_kernels.cu). Returns (rows, scratch, ok).
template <typename Partials>
std::tuple<at::Tensor, at::Tensor, at::Tensor> pass_then_tower(const char* op, at::TensorList grads,
                                                               at::IntArrayRef d0_map, at::IntArrayRef desc,
                                                               at::ArrayRef<double> tower_eps, at::TensorList slots,
                                                               Partials&& partials) {
  const int64_t n = grads.size();
  HF_CHECK(n > 0 && !slots.empty(), op, ": no gradients or no tower slots");
  check_slots_on(op, slots, grads[0].device());
  const c10::cuda::CUDAGuard guard(grads[0].device());
  auto stream = at::cuda::getCurrentCUDAStream();
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  with_tower_args(op, n, d0_map, desc, tower_eps, slots, [&](const auto& d, const D0Map& m) {
    auto [sums, ids] = partials(stream.stream());
    out = finish_and_tower(sums, ids, n, d, m, stream.stream());
  });
  return out;
}

// Pass A, then one kernel that finishes its sums and runs the levels above.
std::tuple<at::Tensor, at::Tensor, at::Tensor> hyper_reduce_tower_cuda(
    int64_t kind, int64_t learn, bool momentum, at::ArrayRef<double> eps, at::TensorList grads, at::TensorList s0,
    at::TensorList s1, at::TensorList s2, const at::Tensor& scal, at::IntArrayRef d0_map, at::IntArrayRef desc,
    at::ArrayRef<double> tower_eps, at::TensorList slots, const c10::optional<at::Tensor>& inv_scale) {
  check("hyper_reduce_tower", grads, {}, s0, s1, s2, scal);
  return pass_then_tower("hyper_reduce_tower", grads, d0_map, desc, tower_eps, slots, [&](cudaStream_t stream) {
    return reduce_partials("hyper_reduce_tower", kind, learn, momentum, eps, grads, s0, s1, s2, scal, inv_scale,
                           stream);
  });
}

void check_update(const char* op, at::TensorList params, at::TensorList grads, at::TensorList s0, at::TensorList s1,
                  at::TensorList s2, const at::Tensor& scal, const c10::optional<at::Tensor>& scal_jac,
                  const at::Tensor& ok) {
  check(op, grads, params, s0, s1, s2, scal);
  HF_CHECK(ok.is_cuda() && ok.scalar_type() == at::kBool && ok.numel() == 1,
              op, ": ok must be a one-element bool CUDA tensor (the skip flag stays on the device)");
  if (scal_jac.has_value()) check(op, grads, params, s0, s1, s2, *scal_jac);
}

// Pass B's kernels; with scal_jac (one-pass mode) also the per-block partial sums and their tensor indices.
std::tuple<at::Tensor, at::Tensor> update_partials(const char* op, int64_t kind, int64_t learn, bool momentum,
                                                   at::ArrayRef<double> eps, at::TensorList params, at::TensorList grads,
                                                   at::TensorList s0, at::TensorList s1, at::TensorList s2,
                                                   const at::Tensor& scal, const c10::optional<at::Tensor>& scal_jac,
                                                   const at::Tensor& ok, const c10::optional<at::Tensor>& inv_scale,
                                                   cudaStream_t stream) {
  const bool one_pass = scal_jac.has_value();
  const int64_t blocks = total_blocks(grads);
  auto partials = at::empty({one_pass ? blocks : 1, kOutCols}, scal.options());   // (as in reduce_partials)
  auto ids = at::empty({one_pass ? blocks : 1}, scal.options().dtype(at::kInt));
  check_eps(op, eps);
  check_kind(op, kind);
  const LaunchFlags f{static_cast<int>(kind), static_cast<int>(learn), momentum, eps[0], eps[1],
                      vec_aligned({params, grads, s0, s1, s2})};
  const DType dt = dtype_of(grads[0]);
  const double* inv = inv_scale_ptr(op, inv_scale, grads[0]);
  // (without one-pass mode no block writes its partial sums: the workspace is one unused row)
  const auto [tab, keep] = flat_table_on_device(params, grads, s0, s1, s2, stream);
  launch_update(dt, tab, f, scal.data_ptr<double>(),
                one_pass ? scal_jac->data_ptr<double>() : nullptr, inv, ok.data_ptr<bool>(),
                partials.data_ptr<double>(), ids.data_ptr<int>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {partials, ids};
}

at::Tensor hyper_update_cuda(int64_t kind, int64_t learn, bool momentum, at::ArrayRef<double> eps, at::TensorList params,
                             at::TensorList grads, at::TensorList s0, at::TensorList s1, at::TensorList s2,
                             const at::Tensor& scal, const c10::optional<at::Tensor>& scal_jac, const at::Tensor& ok,
                             const c10::optional<at::Tensor>& inv_scale) {
  check_update("hyper_update", params, grads, s0, s1, s2, scal, scal_jac, ok);
  const int64_t n = grads.size();
  if (n == 0) return at::zeros({0, kOutCols}, scal.options());
  const c10::cuda::CUDAGuard guard(grads[0].device());
  auto stream = at::cuda::getCurrentCUDAStream();
  auto [partials, ids] = update_partials("hyper_update", kind, learn, momentum, eps, params, grads, s0, s1, s2,
                                         scal, scal_jac, ok, inv_scale, stream.stream());
  if (!scal_jac.has_value()) return at::zeros({n, kOutCols}, scal.options());
  return finish(partials, ids, n, stream.stream());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hyper_update_tower_cuda(
    int64_t kind, int64_t learn, bool momentum, at::ArrayRef<double> eps, at::TensorList params, at::TensorList grads,
    at::TensorList s0, at::TensorList s1, at::TensorList s2, const at::Tensor& scal, const at::Tensor& scal_jac,
    const at::Tensor& ok, at::IntArrayRef d0_map, at::IntArrayRef desc, at::ArrayRef<double> tower_eps,
    at::TensorList slots, const c10::optional<at::Tensor>& inv_scale) {
  check_update("hyper_update_tower", params, grads, s0, s1, s2, scal, scal_jac, ok);
  return pass_then_tower("hyper_update_tower", grads, d0_map, desc, tower_eps, slots, [&](cudaStream_t stream) {
    return update_partials("hyper_update_tower", kind, learn, momentum, eps, params, grads, s0, s1, s2, scal,
                           scal_jac, ok, inv_scale, stream);
  });
}

at::Tensor nonfinite_count_cuda(at::TensorList grads) {
  const int64_t n = grads.size();
  HF_CHECK(n > 0, "nonfinite_count: no gradients");
  const c10::cuda::CUDAGuard guard(grads[0].device());
  auto opts = grads[0].options().dtype(at::kDouble);
  auto scal = at::zeros({n, kScalCols}, opts);
  check("nonfinite_count", grads, {}, {}, {}, {}, scal);
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t blocks = total_blocks(grads);
  auto partials = at::empty({blocks, kOutCols}, opts);      // (every block writes its row, as in reduce_partials)
  auto ids = at::empty({blocks}, opts.dtype(at::kInt));
  const LaunchFlags f{kSGD, 0, false, 0.0, 0.0, vec_aligned({grads})};
  const DType dt = dtype_of(grads[0]);
  const auto [tab, keep] = flat_table_on_device({}, grads, {}, {}, {}, stream.stream());
  launch_reduce(dt, tab, f, /*with_jac=*/false, scal.data_ptr<double>(), nullptr, partials.data_ptr<double>(),
                ids.data_ptr<int>(), stream.stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return finish(partials, ids, n, stream.stream()).select(1, kOutCols - 1).contiguous();
}

at::Tensor multi_tensor_dot_cuda(at::TensorList a, at::TensorList b) {
  HF_CHECK(a.size() == b.size(), "multi_tensor_dot: got ", a.size(), " tensors in a and ", b.size(), " in b");
  const int64_t n = a.size();
  if (n == 0) return at::zeros({0}, at::TensorOptions().dtype(at::kDouble).device(at::kCUDA));
  const c10::cuda::CUDAGuard guard(a[0].device());
  std::vector<at::Tensor> ac, bc;
  for (int64_t i = 0; i < n; ++i) {
    HF_CHECK(a[i].sizes() == b[i].sizes() && a[i].scalar_type() == b[i].scalar_type() && a[i].is_cuda() &&
                    b[i].is_cuda() && a[i].scalar_type() == a[0].scalar_type(),
                "multi_tensor_dot: pair ", i, " must be CUDA tensors of one shape and dtype");
    ac.push_back(a[i].contiguous());
    bc.push_back(b[i].contiguous());
  }
  auto opts = a[0].options().dtype(at::kDouble);
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t blocks = total_blocks(ac);
  auto partials = at::empty({blocks, kOutCols}, opts);      // (every block writes its row, as in reduce_partials)
  auto ids = at::empty({blocks}, opts.dtype(at::kInt));
  const DType dt = dtype_of(ac[0]);
  const auto [tab, keep] = flat_table_on_device({}, ac, bc, {}, {}, stream.stream());
  launch_dot(dt, tab, partials.data_ptr<double>(), ids.data_ptr<int>(), stream.stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return finish(partials, ids, n, stream.stream()).select(1, 0).contiguous();
}

// ---------------------------------------------------------------------------------------------------------
// Automatic Gradient Descent's ops on CUDA, composed of ATen CUDA operations (one launch or a few per
// tensor, deterministic reductions) rather than fused multi-tensor kernels: correct and registered, not yet
// tuned. Layout as on CPU: element (o, i, s) of a contiguous (d_out, d_in[, kh, kw]) tensor is at
// (o * d_in + i) * S + s.
int64_t slices_of(const at::Tensor& t) { return t.dim() == 2 ? 1 : t.size(2) * t.size(3); }

// AGD: fill AgdTables chunk by chunk (a chunk of a tensor with S slices is (kChunk / S) * S elements) and call
// `launch(table)` whenever one is full; a tensor whose chunks do not fit continues in the next table.
template <typename Launch>
void for_agd_tables(at::TensorList params, at::TensorList grads, const std::vector<int64_t>& slices,
                    Launch&& launch) {
  std::vector<int64_t> first(grads.size() + 1, 0);     // each tensor's first entry in the per-slice vectors
  for (size_t i = 0; i < grads.size(); ++i) first[i + 1] = first[i] + slices[i];
  walk<AgdTable, kAgdMaxTensors, kAgdMaxBlocks>(
      static_cast<int64_t>(grads.size()),
      [&](int64_t i) {
        return std::pair<int64_t, int64_t>(grads[i].numel(), agd_chunk(static_cast<int>(slices[i])));
      },
      [&](AgdTable& tab, int slot, int64_t i) {
        tab.x[slot] = params.empty() ? nullptr : params[i].data_ptr();
        tab.g[slot] = grads[i].data_ptr();
        tab.numel[slot] = grads[i].numel();
        tab.slices[slot] = static_cast<int>(slices[i]);
        tab.slice_offset[slot] = first[i];
      },
      [&](const AgdTable& tab, int) { launch(tab); });
}

void check_agd(const char* op, at::TensorList grads, const std::vector<int64_t>& slices) {
  for (size_t i = 0; i < grads.size(); ++i) {
    const auto& g = grads[i];
    HF_CHECK(g.is_cuda() && g.is_contiguous(), op, ": gradient ", i, " must be a contiguous CUDA tensor");
    HF_CHECK(g.scalar_type() == grads[0].scalar_type(), op, ": all gradients must share one dtype");
    HF_CHECK(slices[i] >= 1 && slices[i] <= kAgdMaxSlices && g.numel() % slices[i] == 0, op, ": gradient ", i,
                " of ", g.numel(), " elements cannot have ", slices[i], " slices (at most ", kAgdMaxSlices, ")");
  }
}

at::Tensor agd_sumsq_cuda(at::TensorList grads, at::IntArrayRef slices) {
  HF_CHECK(grads.size() == slices.size(), "agd_sumsq: ", grads.size(), " gradients but ", slices.size(),
              " slice counts");
  const std::vector<int64_t> sl(slices.begin(), slices.end());
  if (grads.empty()) return at::zeros({0}, at::TensorOptions().dtype(at::kDouble).device(at::kCUDA));
  check_agd("agd_sumsq", grads, sl);
  const c10::cuda::CUDAGuard guard(grads[0].device());
  int64_t total = 0, width = 1;
  for (auto s : sl) {
    total += s;
    width = std::max(width, s);
  }
  auto out = at::zeros({total}, grads[0].options().dtype(at::kDouble));
  auto partials = at::empty({kAgdMaxBlocks, width}, out.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  for_agd_tables({}, grads, sl, [&](const AgdTable& tab) {
    launch_agd_sumsq(dtype_of(grads[0]), tab, partials.data_ptr<double>(), static_cast<int>(width),
                     out.data_ptr<double>(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// ok (optional one-element bool on the device): read by the kernel, which writes nothing when it is false, so the
// skip decision needs no host synchronisation
void agd_update_cuda(at::TensorList params, at::TensorList grads, const at::Tensor& coef,
                     const c10::optional<at::Tensor>& ok) {
  HF_CHECK(params.size() == grads.size(), "agd_update: ", params.size(), " params for ", grads.size(), " grads");
  std::vector<int64_t> sl;
  int64_t total = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    HF_CHECK(p.is_cuda() && p.is_contiguous() && p.sizes() == grads[i].sizes() &&
                    p.scalar_type() == grads[i].scalar_type() && (p.dim() == 2 || p.dim() == 4),
                "agd_update: parameter ", i, " must be a contiguous CUDA matrix or 4-D kernel shaped like its gradient");
    sl.push_back(slices_of(p));
    total += sl.back();
  }
  HF_CHECK(coef.scalar_type() == at::kDouble && coef.numel() == total, "agd_update: coef must be float64 with ",
              total, " entries (one per slice), got ", coef.numel());
  if (ok.has_value())
    HF_CHECK(ok->scalar_type() == at::kBool && ok->numel() == 1 && ok->is_cuda(),
                "agd_update: ok must be a one-element bool CUDA tensor");
  if (params.empty()) return;
  check_agd("agd_update", grads, sl);
  const c10::cuda::CUDAGuard guard(params[0].device());
  auto c = coef.to(params[0].device()).contiguous();
  at::Tensor okd = ok.has_value() ? ok->to(params[0].device()).contiguous() : at::Tensor();
  const bool* okp = ok.has_value() ? okd.data_ptr<bool>() : nullptr;
  auto stream = at::cuda::getCurrentCUDAStream();
  for_agd_tables(params, grads, sl, [&](const AgdTable& tab) {
    launch_agd_update(dtype_of(grads[0]), tab, c.data_ptr<double>(), okp, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, std::vector<at::Tensor>> agd_gv_cuda(at::TensorList grads, at::TensorList vs) {
  HF_CHECK(grads.size() == vs.size(), "agd_gv: ", grads.size(), " gradients but ", vs.size(), " vectors");
  std::vector<at::Tensor> sq, gv;
  for (size_t t = 0; t < grads.size(); ++t) {
    const auto& g = grads[t];
    HF_CHECK(g.is_cuda() && g.is_contiguous() && (g.dim() == 2 || g.dim() == 4), "agd_gv: gradient ", t,
                " must be a contiguous CUDA matrix or 4-D kernel");
    const c10::cuda::CUDAGuard guard(g.device());
    const int64_t S = slices_of(g), d_out = g.size(0), d_in = g.size(1);
    auto v = vs[t].to(g.device(), at::kDouble).contiguous();
    HF_CHECK(v.numel() == S * d_in, "agd_gv: vector ", t, " must have shape (", S, ", ", d_in, ")");
    auto out = at::empty({S, d_out}, g.options().dtype(at::kDouble));
    auto rows = at::empty({S, d_out}, out.options());
    launch_agd_gv(dtype_of(g), g.data_ptr(), d_out, d_in, static_cast<int>(S), v.data_ptr<double>(),
                  out.data_ptr<double>(), rows.data_ptr<double>(), at::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sq.push_back(rows.sum(1));
    gv.push_back(out);
  }
  auto all_sq = sq.empty() ? at::zeros({0}, at::TensorOptions().dtype(at::kDouble).device(at::kCUDA)) : at::cat(sq);
  return {all_sq, gv};
}

std::vector<at::Tensor> agd_gtu_cuda(at::TensorList grads, at::TensorList us) {
  HF_CHECK(grads.size() == us.size(), "agd_gtu: ", grads.size(), " gradients but ", us.size(), " vectors");
  std::vector<at::Tensor> out;
  for (size_t t = 0; t < grads.size(); ++t) {
    const auto& g = grads[t];
    HF_CHECK(g.is_cuda() && g.is_contiguous() && (g.dim() == 2 || g.dim() == 4), "agd_gtu: gradient ", t,
                " must be a contiguous CUDA matrix or 4-D kernel");
    const c10::cuda::CUDAGuard guard(g.device());
    const int64_t S = slices_of(g), d_out = g.size(0), d_in = g.size(1);
    auto u = us[t].to(g.device(), at::kDouble).contiguous();
    HF_CHECK(u.numel() == S * d_out, "agd_gtu: vector ", t, " must have shape (", S, ", ", d_out, ")");
    auto o = at::empty({S, d_in}, g.options().dtype(at::kDouble));
    const int splits = agd_gtu_splits(d_out, d_in, static_cast<int>(S));
    at::Tensor scratch;          // the row ranges' partial sums (agd_cuda.h)
    if (splits > 1) scratch = at::empty({int64_t(splits) * S * d_in}, o.options());
    launch_agd_gtu(dtype_of(g), g.data_ptr(), d_out, d_in, static_cast<int>(S), u.data_ptr<double>(),
                   o.data_ptr<double>(), splits > 1 ? scratch.data_ptr<double>() : nullptr,
                   at::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    out.push_back(o);
  }
  return out;
}

at::Tensor agd_normalize_rows_cuda(at::TensorList xs, at::TensorList dsts) {
  HF_CHECK(xs.size() == dsts.size(), "agd_normalize_rows: ", xs.size(), " tensors but ", dsts.size(),
              " destinations");
  int64_t total = 0;
  for (size_t t = 0; t < xs.size(); ++t) {
    const auto& x = xs[t];
    const auto& d = dsts[t];
    HF_CHECK(x.is_cuda() && x.scalar_type() == at::kDouble && x.is_contiguous() && x.dim() == 2,
                "agd_normalize_rows: tensor ", t, " must be a contiguous float64 CUDA matrix (rows, d), got ",
                x.scalar_type(), " of shape ", x.sizes(), " on ", x.device());
    HF_CHECK(d.device() == x.device() && d.scalar_type() == at::kDouble && d.is_contiguous() &&
                    d.numel() == x.numel(),
                "agd_normalize_rows: destination ", t, " must be a contiguous float64 tensor of ", x.numel(),
                " elements on ", x.device());
    HF_CHECK(x.device() == xs[0].device(), "agd_normalize_rows: all tensors must be on one device");
    total += x.size(0);
  }
  if (xs.empty()) return at::empty({0}, at::TensorOptions().dtype(at::kDouble));
  const c10::cuda::CUDAGuard guard(xs[0].device());
  auto norms = at::empty({total}, xs[0].options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AgdRowTable tab{};
  int64_t offset = 0;
  for (size_t t = 0; t < xs.size(); ++t) {   // a row of width 0 gets norm 0 from the kernel, like any zero row
    if (tab.n_tensors == kAgdMaxTensors) {
      launch_agd_normalize_rows(tab, norms.data_ptr<double>(), stream.stream());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      tab = AgdRowTable{};
    }
    const int k = tab.n_tensors++;
    tab.x[k] = xs[t].const_data_ptr<double>();
    tab.dst[k] = dsts[t].data_ptr<double>();
    tab.width[k] = xs[t].size(1);
    tab.norm_offset[k] = offset;
    tab.row_begin[k + 1] = tab.row_begin[k] + xs[t].size(0);
    offset += xs[t].size(0);
  }
  if (tab.n_tensors > 0) {
    launch_agd_normalize_rows(tab, norms.data_ptr<double>(), stream.stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return norms;
}

// The levels above level 0 in one-thread kernels: nothing here reads a device value.
void check_slots_on(const char* op, at::TensorList slots, const at::Device& device) {
  for (const auto& t : slots)
    HF_CHECK(t.numel() == 0 || t.device() == device, op, ": every slot must be on ", device);
}

std::tuple<at::Tensor, at::Tensor> hyper_tower_plan_cuda(at::IntArrayRef desc, at::ArrayRef<double> eps,
                                                         at::TensorList slots, const at::Tensor& d0,
                                                         const at::Tensor& finite) {
  HF_CHECK(d0.is_cuda() && d0.dim() == 1 && d0.is_contiguous(), "hyper_tower_plan: d0 must be a contiguous "
              "CUDA vector");
  HF_CHECK(finite.device() == d0.device() && finite.scalar_type() == at::kBool && finite.numel() == 1,
              "hyper_tower_plan: finite must be a one-element bool tensor on ", d0.device());
  check_slots_on("hyper_tower_plan", slots, d0.device());
  const c10::cuda::CUDAGuard guard(d0.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor scr, ok = at::empty({}, d0.options().dtype(at::kBool));
  auto fin = finite.reshape({}).contiguous();
  AT_DISPATCH_FLOATING_TYPES(d0.scalar_type(), "hyper_tower_plan", [&] {
    const auto d = tower_desc<scalar_t>("hyper_tower_plan", desc, eps, slots, d0.scalar_type());
    HF_CHECK(d0.numel() >= d.lv[1].units, "hyper_tower_plan: d0 has ", d0.numel(), " entries, level 1 needs ",
                d.lv[1].units);
    scr = at::zeros({kScratchRowsPerLevel * d.K * d.block}, d0.options());
    launch_tower_plan(d, d0.data_ptr<scalar_t>(), fin.data_ptr<bool>(), scr.data_ptr<scalar_t>(),
                      ok.data_ptr<bool>(), stream.stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {scr, ok};
}

void hyper_tower_commit_cuda(at::IntArrayRef desc, at::ArrayRef<double> eps, at::TensorList slots,
                             const at::Tensor& scratch, const at::Tensor& ok) {
  HF_CHECK(scratch.is_cuda() && ok.device() == scratch.device() && ok.scalar_type() == at::kBool &&
                  ok.numel() == 1,
              "hyper_tower_commit: scratch and ok must be CUDA tensors (ok a one-element bool)");
  check_slots_on("hyper_tower_commit", slots, scratch.device());
  const c10::cuda::CUDAGuard guard(scratch.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  auto okc = ok.reshape({}).contiguous();
  AT_DISPATCH_FLOATING_TYPES(scratch.scalar_type(), "hyper_tower_commit", [&] {
    const auto d = tower_desc<scalar_t>("hyper_tower_commit", desc, eps, slots, scratch.scalar_type());
    HF_CHECK(scratch.is_contiguous() && scratch.numel() == kScratchRowsPerLevel * d.K * d.block,
                "hyper_tower_commit: scratch does not match the tower");
    launch_tower_commit(d, scratch.data_ptr<scalar_t>(), okc.data_ptr<bool>(), stream.stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(hyperfused, CUDA, m) {
  m.impl("hyper_tower_plan", &hyper_tower_plan_cuda);
  m.impl("hyper_tower_commit", &hyper_tower_commit_cuda);
  m.impl("agd_normalize_rows", &agd_normalize_rows_cuda);
  m.impl("agd_sumsq", &agd_sumsq_cuda);
  m.impl("agd_update", &agd_update_cuda);
  m.impl("agd_gv", &agd_gv_cuda);
  m.impl("agd_gtu", &agd_gtu_cuda);
  m.impl("hyper_reduce", &hyper_reduce_cuda);
  m.impl("hyper_reduce_tower", &hyper_reduce_tower_cuda);
  m.impl("hyper_update_tower", &hyper_update_tower_cuda);
  m.impl("hyper_update", &hyper_update_cuda);
  m.impl("nonfinite_count", &nonfinite_count_cuda);
  m.impl("multi_tensor_dot", &multi_tensor_dot_cuda);
}

}  // namespace cuda
}  // namespace hyperfused

// `import hyperfused._C_cuda` loads this library and runs the registration above (after hyperfused._C has
// defined the schemas).
#include <Python.h>
static struct PyModuleDef hyperfused_cuda_module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C_cuda(void) { return PyModule_Create(&hyperfused_cuda_module); }
