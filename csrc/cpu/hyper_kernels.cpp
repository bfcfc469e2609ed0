// CPU kernels of the hypergradient passes (docs/MATH.md §4, §6), multi-tensor and deterministic.
//
//   hyper_reduce  pass A: per tensor, sum(g * J) for every learned hyperparameter, J rebuilt from the state
//                 the last update left behind; also counts non-finite gradient elements.
//   hyper_update  pass B: the update with the new hyperparameters, in place on params and state, skipped
//                 entirely when `ok` is false. In one-pass mode it also returns pass A's sums, taken from the
//                 old state it reads anyway, for the next step.
//   nonfinite_count  one read of the gradients (one-pass mode's guard when no found_inf is supplied).
//
// Work is split into fixed chunks of kReduceBlock elements of one tensor each (a tensor of 1 element is one
// chunk), spread over threads with at::parallel_for. Each chunk's sums are taken in fixed lanes and
// combined in a fixed order, and chunk sums are combined in chunk order: the result is bitwise the same at
// any thread count. Inner loops run over fixed-width lane blocks of branch-free code from hyper_math.h,
// which the compiler vectorises.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../hyperfused/check.h"
#include "../hyperfused/hyper_elem.h"
#include "../hyperfused/tower_desc.h"
#include "hyper_loops_api.h"

namespace hyperfused {
namespace {

constexpr int kLanes = 8;
constexpr int kScalCols = kTableCols;  // kinds.h: lr, h1, h2, raw_lr, dsig1, dsig2, t, valid, decay
constexpr int kOutCols = kRowCols;     // kinds.h: sum g*J_lr, g*J_h1, g*J_h2, non-finite count

struct Chunk {
  int64_t tensor, begin, end;
};

std::vector<Chunk> make_chunks(at::TensorList ts) {
  std::vector<Chunk> out;
  for (int64_t i = 0; i < static_cast<int64_t>(ts.size()); ++i) {
    const int64_t n = ts[i].numel();
    for (int64_t b = 0; b < n; b += kReduceBlock) out.push_back({i, b, std::min(n, b + kReduceBlock)});
  }
  return out;
}

// The grain of the passes' parallel_for: below kSerialElements elements in all, the chunks run in the calling
// thread (waking the pool costs more than such a pass, and on a loaded machine a small step waited for busy
// threads); the sums do not depend on it (each chunk's are combined in chunk order).
constexpr int64_t kSerialElements = 65536;

inline int64_t grain_of(const std::vector<Chunk>& chunks) {
  int64_t total = 0;
  for (const auto& ch : chunks) total += ch.end - ch.begin;
  return total < kSerialElements ? std::max<int64_t>(1, static_cast<int64_t>(chunks.size())) : 1;
}

// eps: [eps, eps_root] (hyper_math.h's D(s) = sqrt(s + eps_root) + eps), checked by check_eps
template <typename T>
Scalars<T> scalars_row(const double* row, at::ArrayRef<double> eps) {
  return row_scalars_of<T>(row, eps[0], eps[1]);
}

// The scalars of every tensor, computed once per call (not once per chunk).
template <typename T>
std::vector<Scalars<T>> scalars_table(const double* rows, int64_t n, at::ArrayRef<double> eps) {
  std::vector<Scalars<T>> out;
  out.reserve(n);
  for (int64_t i = 0; i < n; ++i) out.push_back(scalars_row<T>(rows + i * kScalCols, eps));
  return out;
}

template <typename T>
inline T load(const T* p, int64_t i) { return p[i]; }

template <typename S>
inline float load_f(const S* p, int64_t i) { return static_cast<float>(p[i]); }

// Sums of one chunk in fixed lanes: out[0..2] += g * J, out[3] += number of non-finite g.
template <typename scalar_t, typename T, int KIND, bool WITH_JAC>
void chunk_sums(int learn, bool momentum, const Arrays<scalar_t, T>& a, int64_t begin, int64_t end,
                const Scalars<T>& c, double out[kOutCols]) {
  T acc[3][kLanes] = {};
  T bad[kLanes] = {};
  // element i goes to lane (i - begin) % kLanes; the packed path of the CUDA kernels (hyper_elem.h), one element
  // at a time, so the CPU tests check it
  for (int64_t i = begin; i < end; ++i) {
    const int l = static_cast<int>((i - begin) % kLanes);
    jac_pack<1, ElementMem, scalar_t, T>(KIND, learn, momentum, WITH_JAC, a, i, c, T(1), acc[0][l], acc[1][l],
                                         acc[2][l], bad[l]);
  }
  for (int l = 0; l < kLanes; ++l) {
    out[0] += static_cast<double>(acc[0][l]);
    out[1] += static_cast<double>(acc[1][l]);
    out[2] += static_cast<double>(acc[2][l]);
    out[3] += static_cast<double>(bad[l]);
  }
}

template <typename scalar_t, typename T>
Arrays<scalar_t, T> arrays_of(int64_t t, at::TensorList params, at::TensorList grads, at::TensorList s0,
                              at::TensorList s1, at::TensorList s2) {
  Arrays<scalar_t, T> a;
  if (!params.empty()) a.x = params[t].data_ptr<scalar_t>();
  a.g = grads[t].const_data_ptr<scalar_t>();
  if (!s0.empty()) a.s0 = s0[t].data_ptr<T>();
  if (!s1.empty()) a.s1 = s1[t].data_ptr<T>();
  if (!s2.empty()) a.s2 = s2[t].data_ptr<T>();
  return a;
}

template <typename scalar_t, typename T, int KIND>
void chunk_dispatch_sums(int learn, bool momentum, const Arrays<scalar_t, T>& a, const Chunk& ch,
                         const Scalars<T>& c, bool with_jac, double* out) {
  if (with_jac) {
    chunk_sums<scalar_t, T, KIND, true>(learn, momentum, a, ch.begin, ch.end, c, out);
  } else {
    chunk_sums<scalar_t, T, KIND, false>(learn, momentum, a, ch.begin, ch.end, c, out);
  }
}

template <typename scalar_t, typename T>
void sums_for_chunk(int kind, int learn, bool momentum, const Arrays<scalar_t, T>& a, const Chunk& ch,
                    const Scalars<T>& c, bool with_jac, double* out) {
  switch (kind) {  // every kind of kinds.h's table (the op checked the id)
#define HF_KIND_CASE(name, ...) \
  case name:                    \
    chunk_dispatch_sums<scalar_t, T, name>(learn, momentum, a, ch, c, with_jac, out); \
    break;
    HF_KINDS(HF_KIND_CASE)
#undef HF_KIND_CASE
    default: break;
  }
}

// Four elements at a time through registers (update_pack, the CUDA kernels' vector path, moving one element
// at a time here, so the CPU tests check which arrays it loads and stores), then the tail.
template <typename scalar_t, typename T, int KIND>
void update_chunk(int learn, bool momentum, const Arrays<scalar_t, T>& a, const Chunk& ch, const Scalars<T>& c) {
  int64_t i = ch.begin;
  for (; i + 4 <= ch.end; i += 4) update_pack<4, ElementMem, scalar_t, T>(KIND, learn, momentum, a, i, c, T(1));
  for (; i < ch.end; ++i) update_pack<1, ElementMem, scalar_t, T>(KIND, learn, momentum, a, i, c, T(1));
}

template <typename scalar_t, typename T>
void update_for_chunk(int kind, int learn, bool momentum, const Arrays<scalar_t, T>& a, const Chunk& ch,
                      const Scalars<T>& c) {
  // the generic (half, bfloat16) path always writes the previous gradient: its state is float32, so the
  // gradient tensor itself cannot stand in for it
  switch (kind) {
#define HF_KIND_CASE(name, ...)                                    \
  case name:                                                       \
    update_chunk<scalar_t, T, name>(learn, momentum, a, ch, c);    \
    break;
    HF_KINDS(HF_KIND_CASE)
#undef HF_KIND_CASE
    default: break;
  }
}

// One chunk of pass A: the per-ISA loops for float and double, the generic loops for half and bfloat16.
template <typename scalar_t, typename T>
void chunk_reduce(const LoopFlags& f, const Arrays<scalar_t, T>& a, const Chunk& ch, const Scalars<T>& c,
                  bool with_jac, double* out) {
  if (!has_vector_loop(f.kind)) {
    sums_for_chunk<scalar_t, T>(f.kind, f.learn, f.momentum, a, ch, c, with_jac, out);
  } else if constexpr (std::is_same<scalar_t, float>::value) {
    loop_table().reduce_f32(f, with_jac, a.g, a.s0, a.s1, a.s2, ch.begin, ch.end, c, out);
  } else if constexpr (std::is_same<scalar_t, double>::value) {
    loop_table().reduce_f64(f, with_jac, a.g, a.s0, a.s1, a.s2, ch.begin, ch.end, c, out);
  } else {
    sums_for_chunk<scalar_t, T>(f.kind, f.learn, f.momentum, a, ch, c, with_jac, out);
  }
}

template <typename scalar_t, typename T>
void chunk_update(const LoopFlags& f, const Arrays<scalar_t, T>& a, const Chunk& ch, const Scalars<T>& c) {
  if (!has_vector_loop(f.kind)) {
    update_for_chunk<scalar_t, T>(f.kind, f.learn, f.momentum, a, ch, c);
  } else if constexpr (std::is_same<scalar_t, float>::value) {
    loop_table().update_f32(f, a.x, a.g, a.s0, a.s1, a.s2, ch.begin, ch.end, c);
  } else if constexpr (std::is_same<scalar_t, double>::value) {
    loop_table().update_f64(f, a.x, a.g, a.s0, a.s1, a.s2, ch.begin, ch.end, c);
  } else {
    update_for_chunk<scalar_t, T>(f.kind, f.learn, f.momentum, a, ch, c);
  }
}

// Combine chunk sums into per-tensor rows, in chunk order.
at::Tensor combine(const std::vector<Chunk>& chunks, const std::vector<double>& part, int64_t n) {
  auto out = at::zeros({n, kOutCols}, at::TensorOptions().dtype(at::kDouble));
  double* po = out.data_ptr<double>();
  for (size_t k = 0; k < chunks.size(); ++k)
    for (int c = 0; c < kOutCols; ++c) po[chunks[k].tensor * kOutCols + c] += part[k * kOutCols + c];
  return out;
}

void check_lists(const char* op, at::TensorList grads, at::TensorList params, at::TensorList s0,
                 at::TensorList s1, at::TensorList s2, const at::Tensor& scal) {
  const size_t n = grads.size();
  HF_CHECK(params.empty() || params.size() == n, op, ": ", params.size(), " params for ", n, " grads");
  for (auto* lst : {&s0, &s1, &s2})
    HF_CHECK(lst->empty() || lst->size() == n, op, ": a state list has ", lst->size(), " tensors for ", n,
                " grads");
  HF_CHECK(scal.scalar_type() == at::kDouble && scal.dim() == 2 && scal.size(0) == (int64_t)n &&
                  scal.size(1) == kScalCols && scal.is_contiguous(),
              op, ": scalars must be a contiguous float64 tensor of shape [", n, ", ", kScalCols, "]");
  for (size_t i = 0; i < n; ++i) {
    const auto& g = grads[i];
    // Every tensor of element i is walked in memory order, so they must be dense and share one layout.
    HF_CHECK(g.device().is_cpu() && g.is_non_overlapping_and_dense(), op, ": gradient ", i,
                " must be a dense CPU tensor");
    if (!params.empty())
      HF_CHECK(params[i].sizes() == g.sizes() && params[i].strides() == g.strides() &&
                      params[i].scalar_type() == g.scalar_type(),
                  op, ": parameter ", i, " must have the gradient's shape, strides and dtype");
    for (auto* lst : {&s0, &s1, &s2})
      if (!lst->empty())
        HF_CHECK((*lst)[i].sizes() == g.sizes() && (*lst)[i].strides() == g.strides(), op,
                    ": state tensor ", i, " must have the gradient's shape and strides");
    HF_CHECK(g.scalar_type() == grads[0].scalar_type(), op, ": all gradients must share one dtype");
  }
}

template <typename scalar_t>
using math_t = typename std::conditional<std::is_same<scalar_t, double>::value, double, float>::type;

// GradScaler's 1 / scale on CPU: the loops read unscaled copies of the gradients (the caller's gradients stay
// as they were). The CUDA and Triton kernels apply the factor as they load instead.
std::vector<at::Tensor> unscaled(const char* op, at::TensorList grads, const c10::optional<at::Tensor>& inv_scale) {
  const auto& f = *inv_scale;
  HF_CHECK(f.numel() == 1 && f.scalar_type() == at::kDouble && f.device().is_cpu(), op,
              ": inv_scale must be a one-element float64 CPU tensor, got ", f.scalar_type(), " of ", f.numel(),
              " elements on ", f.device());
  const double inv = f.item<double>();
  std::vector<at::Tensor> out;
  out.reserve(grads.size());
  for (const auto& g : grads) out.push_back(g.mul(inv));
  return out;
}

at::Tensor hyper_update_cpu(int64_t kind, int64_t learn, bool momentum, at::ArrayRef<double> eps, at::TensorList params,
                            at::TensorList grads, at::TensorList s0, at::TensorList s1, at::TensorList s2,
                            const at::Tensor& scal, const c10::optional<at::Tensor>& scal_jac,
                            const at::Tensor& ok, const c10::optional<at::Tensor>& inv_scale);

// Pass A.
at::Tensor hyper_reduce_cpu(int64_t kind, int64_t learn, bool momentum, at::ArrayRef<double> eps, at::TensorList grads,
                            at::TensorList s0, at::TensorList s1, at::TensorList s2, const at::Tensor& scal,
                            const c10::optional<at::Tensor>& inv_scale) {
  if (inv_scale.has_value()) {
    const auto g = unscaled("hyper_reduce", grads, inv_scale);
    return hyper_reduce_cpu(kind, learn, momentum, eps, g, s0, s1, s2, scal, c10::nullopt);
  }
  check_lists("hyper_reduce", grads, {}, s0, s1, s2, scal);
  check_eps("hyper_reduce", eps);
  check_kind("hyper_reduce", kind);
  const int64_t n = grads.size();
  const auto chunks = make_chunks(grads);
  std::vector<double> part(chunks.size() * kOutCols, 0.0);
  if (n == 0) return at::zeros({0, kOutCols}, at::TensorOptions().dtype(at::kDouble));
  const double* ps = scal.const_data_ptr<double>();
  const LoopFlags flags{static_cast<int>(kind), static_cast<int>(learn), momentum};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads[0].scalar_type(), "hyper_reduce", [&] {
    using T = math_t<scalar_t>;
    const auto sc = scalars_table<T>(ps, n, eps);
    at::parallel_for(0, chunks.size(), grain_of(chunks), [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        const Chunk& ch = chunks[k];
        const double* row = ps + ch.tensor * kScalCols;
        const bool valid = row[kColValid] != 0.0 && learn != 0;
        const auto a = arrays_of<scalar_t, T>(ch.tensor, {}, grads, s0, s1, s2);
        chunk_reduce<scalar_t, T>(flags, a, ch, sc[ch.tensor], valid, &part[k * kOutCols]);
      }
    });
  });
  return combine(chunks, part, n);
}

// Pass B (and, with scal_jac given, one-pass mode's sums from the old state).
at::Tensor hyper_update_cpu(int64_t kind, int64_t learn, bool momentum, at::ArrayRef<double> eps, at::TensorList params,
                            at::TensorList grads, at::TensorList s0, at::TensorList s1, at::TensorList s2,
                            const at::Tensor& scal, const c10::optional<at::Tensor>& scal_jac,
                            const at::Tensor& ok, const c10::optional<at::Tensor>& inv_scale) {
  if (inv_scale.has_value()) {
    const auto g = unscaled("hyper_update", grads, inv_scale);
    return hyper_update_cpu(kind, learn, momentum, eps, params, g, s0, s1, s2, scal, scal_jac, ok, c10::nullopt);
  }
  check_lists("hyper_update", grads, params, s0, s1, s2, scal);
  check_eps("hyper_update", eps);
  check_kind("hyper_update", kind);
  HF_CHECK(!params.empty() || grads.empty(), "hyper_update: params are required");
  const bool one_pass = scal_jac.has_value();
  if (one_pass) check_lists("hyper_update", grads, params, s0, s1, s2, *scal_jac);
  const int64_t n = grads.size();
  if (n == 0 || !ok.item<bool>()) return at::zeros({n, kOutCols}, at::TensorOptions().dtype(at::kDouble));
  const auto chunks = make_chunks(grads);
  std::vector<double> part(one_pass ? chunks.size() * kOutCols : 0, 0.0);
  const double* ps = scal.const_data_ptr<double>();
  const double* pj = one_pass ? scal_jac->const_data_ptr<double>() : nullptr;
  const LoopFlags flags{static_cast<int>(kind), static_cast<int>(learn), momentum};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads[0].scalar_type(), "hyper_update", [&] {
    using T = math_t<scalar_t>;
    const auto sc = scalars_table<T>(ps, n, eps);
    const auto sj = one_pass ? scalars_table<T>(pj, n, eps) : std::vector<Scalars<T>>();
    // Chunks in reverse order: pass A (or the non-finite read) has just swept the same arrays in forward order,
    // so the arrays of its last chunks, each thread's most recent, are still in the last-level cache and the
    // update starts there instead of where the cache has long been overwritten. Elementwise, so the order
    // changes no result; one-pass sums still land in their chunk's slot and are combined in chunk order.
    const int64_t last = static_cast<int64_t>(chunks.size()) - 1;
    at::parallel_for(0, chunks.size(), grain_of(chunks), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t k = last - i;
        const Chunk& ch = chunks[k];
        const auto a = arrays_of<scalar_t, T>(ch.tensor, params, grads, s0, s1, s2);
        if (one_pass) {  // sums from the old state, before this chunk is written
          const double* rj = pj + ch.tensor * kScalCols;
          const bool valid = rj[kColValid] != 0.0 && learn != 0;
          chunk_reduce<scalar_t, T>(flags, a, ch, sj[ch.tensor], valid, &part[k * kOutCols]);
        }
        const double* row = ps + ch.tensor * kScalCols;
        LoopFlags fl = flags;
        fl.store_prev = row[kColValid] != 0.0;  // in the update's table this column says "write the previous gradient"
        chunk_update<scalar_t, T>(fl, a, ch, sc[ch.tensor]);
      }
    });
  });
  if (!one_pass) return at::zeros({n, kOutCols}, at::TensorOptions().dtype(at::kDouble));
  return combine(chunks, part, n);
}

// The levels above from a pass's rows: level 0's flat hypergradient made from them, then the tower's plan.
template <typename T>
std::tuple<at::Tensor, at::Tensor> tower_from_rows(const at::Tensor& rows, const TowerDesc<T>& d, const D0Map& m) {
  std::vector<T> d0(static_cast<size_t>(d.lv[1].units));
  const bool finite = tower_d0_from_rows<T>(rows.const_data_ptr<double>(), rows.size(0), m, d0.data());
  at::Tensor scr = at::zeros({kScratchRowsPerLevel * d.K * d.block},
                             at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  auto ok = at::empty({}, at::TensorOptions().dtype(at::kBool));
  ok.fill_(tower_plan<T>(d, d0.data(), finite, scr.data_ptr<T>()));
  return {scr, ok};
}

// Pass A and the levels above.
std::tuple<at::Tensor, at::Tensor, at::Tensor> hyper_reduce_tower_cpu(
    int64_t kind, int64_t learn, bool momentum, at::ArrayRef<double> eps, at::TensorList grads, at::TensorList s0,
    at::TensorList s1, at::TensorList s2, const at::Tensor& scal, at::IntArrayRef d0_map, at::IntArrayRef desc,
    at::ArrayRef<double> tower_eps, at::TensorList slots, const c10::optional<at::Tensor>& inv_scale) {
  at::Tensor rows, scr, ok;
  with_tower_args("hyper_reduce_tower", grads.size(), d0_map, desc, tower_eps, slots,
                  [&](const auto& d, const D0Map& m) {
    rows = hyper_reduce_cpu(kind, learn, momentum, eps, grads, s0, s1, s2, scal, inv_scale);
    std::tie(scr, ok) = tower_from_rows(rows, d, m);
  });
  return {rows, scr, ok};
}

// One-pass mode's pass B and the levels above.
std::tuple<at::Tensor, at::Tensor, at::Tensor> hyper_update_tower_cpu(
    int64_t kind, int64_t learn, bool momentum, at::ArrayRef<double> eps, at::TensorList params, at::TensorList grads,
    at::TensorList s0, at::TensorList s1, at::TensorList s2, const at::Tensor& scal, const at::Tensor& scal_jac,
    const at::Tensor& ok, at::IntArrayRef d0_map, at::IntArrayRef desc, at::ArrayRef<double> tower_eps,
    at::TensorList slots, const c10::optional<at::Tensor>& inv_scale) {
  HF_CHECK(scal_jac.defined(), "hyper_update_tower: scal_jac is required (one-pass mode)");
  at::Tensor rows, scr, tok;
  with_tower_args("hyper_update_tower", grads.size(), d0_map, desc, tower_eps, slots,
                  [&](const auto& d, const D0Map& m) {
    rows = hyper_update_cpu(kind, learn, momentum, eps, params, grads, s0, s1, s2, scal, scal_jac, ok, inv_scale);
    std::tie(scr, tok) = tower_from_rows(rows, d, m);
  });
  return {rows, scr, tok};
}

// One read of the gradients: the number of non-finite elements per tensor (float64, shape [n]).
at::Tensor nonfinite_count_cpu(at::TensorList grads) {
  const int64_t n = grads.size();
  auto scal = at::zeros({n, kScalCols}, at::TensorOptions().dtype(at::kDouble));
  auto rows = hyper_reduce_cpu(kSGD, 0, false, {0.0, 0.0}, grads, {}, {}, {}, scal, c10::nullopt);
  return rows.select(1, kOutCols - 1).contiguous();
}

}  // namespace

#define HF_TABLE(NS, NAME) LoopTable{NAME, &NS::reduce_f32, &NS::reduce_f64, &NS::update_f32, &NS::update_f64}

const LoopTable& loop_table() {
  static const LoopTable table = [] {
    const char* cap = std::getenv("HYPERFUSED_CPU_ISA");
    const bool allow512 = !cap || std::strcmp(cap, "avx512") == 0;
    const bool allow2 = allow512 || (cap && std::strcmp(cap, "avx2") == 0);
    __builtin_cpu_init();
    if (allow512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
      return HF_TABLE(isa_avx512, "avx512");
    if (allow2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return HF_TABLE(isa_avx2, "avx2");
    return HF_TABLE(isa_default, "default");
  }();
  return table;
}

std::string cpu_isa() { return loop_table().isa; }

TORCH_LIBRARY_IMPL(hyperfused, CPU, m) {
  m.impl("hyper_reduce", &hyper_reduce_cpu);
  m.impl("hyper_update", &hyper_update_cpu);
  m.impl("nonfinite_count", &nonfinite_count_cpu);
  m.impl("hyper_reduce_tower", &hyper_reduce_tower_cpu);
  m.impl("hyper_update_tower", &hyper_update_tower_cpu);
}

}  // namespace hyperfused
