// Schemas of the hyperfused torch ops (namespace `hyperfused`). Backends register their kernels for these
// schemas under their dispatch keys (cpu/ here, cuda/ in the CUDA extension).
#include <torch/extension.h>
#include <torch/library.h>

#include "hyperfused/op_sigs.h"

#include <string>
#include <tuple>
#include <vector>

namespace hyperfused {
std::string cpu_isa();
at::Tensor cuda_table_plan(c10::IntArrayRef numels);
std::tuple<at::Tensor, at::Tensor> tower_plan_threads(at::IntArrayRef desc, at::ArrayRef<double> eps,
                                                      at::TensorList slots, const at::Tensor& d0,
                                                      const at::Tensor& finite, int64_t threads);
std::vector<at::Tensor> tower_commit_threads(at::IntArrayRef desc, at::ArrayRef<double> eps, at::TensorList slots,
                                             const at::Tensor& scratch, const at::Tensor& ok, int64_t threads);
}

TORCH_LIBRARY(hyperfused, m) {
  // Per-pair dot products sum(a[i] * b[i]) accumulated in float64, deterministic (fixed blocks, fixed
  // combination order). Returns a float64 tensor with one entry per pair.
  m.def("multi_tensor_dot(Tensor[] a, Tensor[] b) -> Tensor");
  // Hypergradient passes over one param group (docs/MATH.md §4.5). kind: 0 SGD, 1 Adagrad, 2 RMSprop, 3 Adam;
  // learn: bits 1 lr, 2 momentum/alpha/beta1, 4 beta2. State lists by kind: SGD (momentum_buffer,
  // prev_momentum_buffer) or (prev_grad); Adagrad (sum, prev_grad); RMSprop (square_avg, prev_grad); Adam
  // (exp_avg, exp_avg_sq, prev_grad); absent ones are empty lists. scal: float64 [n, 8] per-tensor scalars
  // (lr, h1, h2, raw_lr, dsigma1, dsigma2, step, valid); in hyper_update's table column 7 says instead whether
  // to write the gradient into the previous-gradient state. Both return float64 [n, 4]: per tensor
  // sum(g*J_lr), sum(g*J_h1), sum(g*J_h2) and the number of non-finite gradient elements. inv_scale (optional,
  // a one-element float64 tensor on the gradients' device): GradScaler's 1 / grad_scale, applied to every
  // gradient element as it is read (the gradients stay as they are, scaled; what the state keeps of them is
  // unscaled).
  m.def("hyper_reduce(int kind, int learn, bool momentum, float[] eps, Tensor[] grads, Tensor[] s0, "
        "Tensor[] s1, Tensor[] s2, Tensor scal, Tensor? inv_scale=None) -> Tensor");
  m.def("hyper_update(int kind, int learn, bool momentum, float[] eps, Tensor(a!)[] params, Tensor[] grads, "
        "Tensor(b!)[] s0, Tensor(c!)[] s1, Tensor(d!)[] s2, Tensor scal, Tensor? scal_jac, Tensor ok, "
        "Tensor? inv_scale=None) -> Tensor");
  m.def("nonfinite_count(Tensor[] grads) -> Tensor");
  // The levels above level 0 of a tower (csrc/hyperfused/tower.h): plan returns (scratch, ok) without writing
  // anything the optimizer holds; commit writes the scratch back into the slots' tensors when ok.
  // desc: [K, block, top_units] + per level [kind, learn, momentum, per, nstate, nlr, units]; eps per level;
  // slots: 8 per level (lr, h1, h2, s0, s1, s2, step, valid; an empty tensor where a level has none).
  m.def("hyper_tower_plan(int[] desc, float[] eps, Tensor[] slots, Tensor d0, Tensor finite) -> (Tensor, Tensor)");
  // hyper_reduce, its finishing step and hyper_tower_plan in one op (on CUDA the finishing kernel runs the tower):
  // returns (rows, scratch, ok). d0_map = [per_lr, the rows' column of each name level 0 learns, in order]: how
  // the rows make level 0's flat hypergradient (columns summed over the tensors in tensor order; a per-tensor lr
  // column as it is, the tensors then being the whole group in order).
  m.def("hyper_reduce_tower(int kind, int learn, bool momentum, float[] eps, Tensor[] grads, Tensor[] s0, "
        "Tensor[] s1, Tensor[] s2, Tensor scal, int[] d0_map, int[] desc, float[] tower_eps, Tensor[] slots, "
        "Tensor? inv_scale=None) -> (Tensor, Tensor, Tensor)");
  // One-pass mode's counterpart: hyper_update with scal_jac (required), its sums finished and the tower's plan
  // run on them (on CUDA in the finishing kernel's launch). Returns (rows, scratch, ok).
  m.def("hyper_update_tower(int kind, int learn, bool momentum, float[] eps, Tensor(a!)[] params, Tensor[] grads, "
        "Tensor(b!)[] s0, Tensor(c!)[] s1, Tensor(d!)[] s2, Tensor scal, Tensor scal_jac, Tensor ok, int[] d0_map, "
        "int[] desc, float[] tower_eps, Tensor[] slots, Tensor? inv_scale=None) -> (Tensor, Tensor, Tensor)");
  m.def("hyper_tower_commit(int[] desc, float[] eps, Tensor(a!)[] slots, Tensor scratch, Tensor ok) -> ()");
  // Automatic Gradient Descent: per-slice sums of squares of every gradient (float64, concatenated), and the
  // update W -= coef[slice] * g (coef: float64, one per slice, concatenated).
  m.def("agd_sumsq(Tensor[] grads, int[] slices) -> Tensor");
  m.def("agd_update(Tensor(a!)[] params, Tensor[] grads, Tensor coef, Tensor? ok=None) -> ()");
  // Spectral AGD's half-iterations on the native layout: g v with the per-slice sums of squares from the same
  // read (vs[t]: float64 (slices, d_in)), and g^T u (us[t]: float64 (slices, d_out)).
  m.def("agd_gv(Tensor[] grads, Tensor[] vs) -> (Tensor, Tensor[])");
  m.def("agd_gtu(Tensor[] grads, Tensor[] us) -> Tensor[]");
  // The power iteration's normalisation, for every row of every (rows, d) float64 tensor at once: writes
  // xs[t][r] / |xs[t][r]| into dsts[t][r] (a row of norm 0 leaves dsts[t][r] as it was) and returns the row
  // norms, concatenated (float64). Each norm is summed in a fixed order: deterministic.
  m.def("agd_normalize_rows(Tensor[] xs, Tensor(a!)[] dsts) -> Tensor");
  // The instruction set the CPU loops run with (default, avx2, avx512).
  m.def("cpu_isa() -> str", &hyperfused::cpu_isa);
  // the CUDA kernels' tensor tables, walked on the host with stand-in pointers (tests; csrc/cuda/tables.h);
  // registered under CompositeExplicitAutograd (below), not as m.def's default CompositeImplicitAutograd, so that
  // its fake implementation (hyperfused/ops/_fake.py) is the one a trace uses
  m.def("_cuda_table_plan(int[] numels) -> Tensor");
  // hyper_tower_plan run by `threads` host threads sharing the vectors' entries as the CUDA block does
  // (csrc/hyperfused/tower.h's parallel policy, emulated with a barrier; tests), CompositeExplicitAutograd as above
  m.def("_tower_plan_threads(int[] desc, float[] eps, Tensor[] slots, Tensor d0, Tensor finite, int threads) -> "
        "(Tensor, Tensor)");
  // hyper_tower_commit by `threads` host threads, as the CUDA block runs it, into copies of the slots (returned;
  // the slots are left as they are)
  m.def("_tower_commit_threads(int[] desc, float[] eps, Tensor[] slots, Tensor scratch, Tensor ok, int threads) -> "
        "Tensor[]");
}

TORCH_LIBRARY_IMPL(hyperfused, CompositeExplicitAutograd, m) {
  m.impl("_cuda_table_plan", &hyperfused::cuda_table_plan);
  m.impl("_tower_plan_threads", &hyperfused::tower_plan_threads);
  m.impl("_tower_commit_threads", &hyperfused::tower_commit_threads);
}

// The Python module `hyperfused._C`: importing it loads the library and runs the registrations above. It also
// holds direct bindings of the passes' ops for eager steps (hyperfused/ops/fused.py): each calls its op through
// torch's dispatcher with a typed handle, so every dispatch key, mode and kernel is the one torch.ops reaches, but
// without torch.ops' Python argument parsing against the schema (a few microseconds of a small model's pass).
namespace hyperfused {
namespace {

// What a Python argument of each C++ type of the signatures is converted to first.
template <typename A>
struct PyArg {
  using type = A;
};
template <>
struct PyArg<at::TensorList> {
  using type = std::vector<at::Tensor>;
};
template <>
struct PyArg<at::ArrayRef<double>> {
  using type = std::vector<double>;
};
template <>
struct PyArg<at::IntArrayRef> {
  using type = std::vector<int64_t>;
};
template <>
struct PyArg<const at::Tensor&> {
  using type = at::Tensor;
};
template <>
struct PyArg<const c10::optional<at::Tensor>&> {
  using type = c10::optional<at::Tensor>;
};

template <typename Sig>
struct Direct;
template <typename Ret, typename... Args>
struct Direct<Ret(Args...)> {
  template <const char* Name>
  static Ret call(typename PyArg<Args>::type... args) {
    return sig::handle<Ret(Args...), Name>().call(args...);
  }
};

}  // namespace

// csrc/cpu/program.cpp: binds a step program's two halves
void bind_program(pybind11::module_& m);
}  // namespace hyperfused

PYBIND11_MODULE(_C, m) {
  using namespace hyperfused;
  using namespace hyperfused::sig;
  namespace py = pybind11;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("multi_tensor_dot", &Direct<SigDot>::call<k_multi_tensor_dot>, nogil);
  m.def("hyper_reduce", &Direct<SigReduce>::call<k_hyper_reduce>, nogil);
  m.def("hyper_update", &Direct<SigUpdate>::call<k_hyper_update>, nogil);
  m.def("nonfinite_count", &Direct<SigNonfinite>::call<k_nonfinite_count>, nogil);
  m.def("hyper_tower_plan", &Direct<SigTowerPlan>::call<k_hyper_tower_plan>, nogil);
  m.def("hyper_reduce_tower", &Direct<SigReduceTower>::call<k_hyper_reduce_tower>, nogil);
  m.def("hyper_update_tower", &Direct<SigUpdateTower>::call<k_hyper_update_tower>, nogil);
  m.def("hyper_tower_commit", &Direct<SigTowerCommit>::call<k_hyper_tower_commit>, nogil);
  bind_program(m);      // a step program's two halves on CPU tensors (hyperfused/optim/program.py)
}
