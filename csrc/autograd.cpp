// The Autograd kernels of the hyperfused ops: none of them is differentiable (they are an optimizer's passes, run
// under torch.no_grad()). Without a kernel of its own, an op of a library gets torch's boxed autograd fallback,
// which packs every argument into an IValue and unpacks it again on every call: about 4 us of a small model's
// pass whose op takes a few dozen tensors. Here each op passes straight on to the kernels below autograd
// (unboxed, as torch's own Autograd kernels do), after one check: with grad mode on, a tensor that requires grad
// is refused with a message, since no graph would be recorded through the op.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "hyperfused/check.h"
#include "hyperfused/op_sigs.h"

namespace hyperfused {
namespace {

inline bool wants_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool wants_grad(const c10::optional<at::Tensor>& t) { return t.has_value() && wants_grad(*t); }
inline bool wants_grad(at::TensorList ts) {
  for (const auto& t : ts)
    if (wants_grad(t)) return true;
  return false;
}
template <typename T>
inline bool wants_grad(const T&) {
  return false;
}

template <typename Sig>
struct NoGrad;

// NoGrad<Ret(Args...)>::kernel<Name>: the Autograd kernel of op hyperfused::Name, whose C++ signature is Sig
// (checked against the schema at the first call, by typed()).
template <typename Ret, typename... Args>
struct NoGrad<Ret(Args...)> {
  template <const char* Name>
  static Ret kernel(Args... args) {
    const auto& op = sig::handle<Ret(Args...), Name>();
    if (at::GradMode::is_enabled()) {
      const bool any = (wants_grad(args) || ...);
      HF_CHECK(!any, Name, ": the hyperfused ops are not differentiable, and a tensor passed in requires grad; "
               "call the op under torch.no_grad() (the optimizers do)");
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(args...);
  }
};

using namespace sig;

}  // namespace
}  // namespace hyperfused

TORCH_LIBRARY_IMPL(hyperfused, Autograd, m) {
  using namespace hyperfused;
  m.impl("multi_tensor_dot", &NoGrad<SigDot>::kernel<k_multi_tensor_dot>);
  m.impl("hyper_reduce", &NoGrad<SigReduce>::kernel<k_hyper_reduce>);
  m.impl("hyper_update", &NoGrad<SigUpdate>::kernel<k_hyper_update>);
  m.impl("nonfinite_count", &NoGrad<SigNonfinite>::kernel<k_nonfinite_count>);
  m.impl("hyper_tower_plan", &NoGrad<SigTowerPlan>::kernel<k_hyper_tower_plan>);
  m.impl("hyper_reduce_tower", &NoGrad<SigReduceTower>::kernel<k_hyper_reduce_tower>);
  m.impl("hyper_update_tower", &NoGrad<SigUpdateTower>::kernel<k_hyper_update_tower>);
  m.impl("hyper_tower_commit", &NoGrad<SigTowerCommit>::kernel<k_hyper_tower_commit>);
  m.impl("agd_sumsq", &NoGrad<SigAgdSumsq>::kernel<k_agd_sumsq>);
  m.impl("agd_update", &NoGrad<SigAgdUpdate>::kernel<k_agd_update>);
  m.impl("agd_gv", &NoGrad<SigAgdGv>::kernel<k_agd_gv>);
  m.impl("agd_gtu", &NoGrad<SigAgdGtu>::kernel<k_agd_gtu>);
  m.impl("agd_normalize_rows", &NoGrad<SigAgdNormalize>::kernel<k_agd_normalize_rows>);
}
