// The C++ signatures of the hyperfused ops' schemas (ops.cpp), for the code that calls the ops through torch's
// dispatcher with typed handles: their Autograd kernels (autograd.cpp) and their direct Python bindings (ops.cpp).
// A signature that does not match its schema is refused at the first call (typed()); the tests call every op.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>
#include <vector>

namespace hyperfused {
namespace sig {

using c10::optional;
using DoubleList = at::ArrayRef<double>;
using TL = at::TensorList;
using T = at::Tensor;
using T2 = std::tuple<at::Tensor, at::Tensor>;
using T3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

#define HF_OP_NAME(name) inline constexpr char k_##name[] = "hyperfused::" #name;
HF_OP_NAME(multi_tensor_dot)
HF_OP_NAME(hyper_reduce)
HF_OP_NAME(hyper_update)
HF_OP_NAME(nonfinite_count)
HF_OP_NAME(hyper_tower_plan)
HF_OP_NAME(hyper_reduce_tower)
HF_OP_NAME(hyper_update_tower)
HF_OP_NAME(hyper_tower_commit)
HF_OP_NAME(agd_sumsq)
HF_OP_NAME(agd_update)
HF_OP_NAME(agd_gv)
HF_OP_NAME(agd_gtu)
HF_OP_NAME(agd_normalize_rows)
#undef HF_OP_NAME

// the C++ signatures of the schemas in ops.cpp
using SigDot = T(TL, TL);
using SigReduce = T(int64_t, int64_t, bool, DoubleList, TL, TL, TL, TL, const T&, const optional<T>&);
using SigUpdate = T(int64_t, int64_t, bool, DoubleList, TL, TL, TL, TL, TL, const T&, const optional<T>&, const T&,
                    const optional<T>&);
using SigNonfinite = T(TL);
using SigTowerPlan = T2(at::IntArrayRef, DoubleList, TL, const T&, const T&);
using SigReduceTower = T3(int64_t, int64_t, bool, DoubleList, TL, TL, TL, TL, const T&, at::IntArrayRef,
                          at::IntArrayRef, DoubleList, TL, const optional<T>&);
using SigUpdateTower = T3(int64_t, int64_t, bool, DoubleList, TL, TL, TL, TL, TL, const T&, const T&, const T&,
                          at::IntArrayRef, at::IntArrayRef, DoubleList, TL, const optional<T>&);
using SigTowerCommit = void(at::IntArrayRef, DoubleList, TL, const T&, const T&);
using SigAgdSumsq = T(TL, at::IntArrayRef);
using SigAgdUpdate = void(TL, TL, const T&, const optional<T>&);
using SigAgdGv = std::tuple<T, std::vector<T>>(TL, TL);
using SigAgdGtu = std::vector<T>(TL, TL);
using SigAgdNormalize = T(TL, TL);

// handle<Sig, k_name>(): the typed handle of op hyperfused::name, found once.
template <typename Sig, const char* Name>
const c10::TypedOperatorHandle<Sig>& handle() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(Name, "").template typed<Sig>();
  return op;
}

}  // namespace sig
}  // namespace hyperfused
