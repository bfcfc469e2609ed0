// The two halves of a step program's step on CPU tensors (hyperfused/optim/program.py), driven from C++: the per-tensor
// scalar tables filled from the level's raw hyperparameter tensors, the passes' ops called through torch's
// dispatcher (so every key and mode sees hyper_reduce_tower, hyper_tower_commit and hyper_update as a Python step
// calls them), and what a taken step leaves behind (step counts, moved flags, the values the next Jacobian is
// rebuilt with) written here. Python fills the same tables in hyperfused/ops/fused.py (scalars); the program tests
// hold the two together bit for bit (tests/test_program.py: every configuration run with and without programs).
#include <ATen/ATen.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "hyperfused/check.h"
#include "hyperfused/kinds.h"
#include "hyperfused/op_sigs.h"

namespace hyperfused {
namespace {

void check_table(const at::Tensor& table, int64_t n) {
  HF_CHECK(table.device().is_cpu() && table.scalar_type() == at::kDouble && table.dim() == 2 &&
               table.size(0) == n && table.size(1) == kTableCols && table.is_contiguous(),
           "program: the table must be a contiguous float64 CPU tensor of shape [", n, ", ", kTableCols, "]");
}

// A one-element CPU tensor's value, read directly (no dispatched op).
double scalar_of(const at::Tensor& t) {
  HF_CHECK(t.device().is_cpu() && t.numel() == 1, "program: expected a one-element CPU tensor");
  double out = 0.0;
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "program_scalar",
                             [&] { out = static_cast<double>(*t.const_data_ptr<scalar_t>()); });
  return out;
}

// Column `col` of the table: one value for every row, or a [n] vector's entries (converted to float64).
void put_column(double* a, int64_t n, int col, const at::Tensor& v) {
  HF_CHECK(v.device().is_cpu() && v.is_contiguous(), "program: the hyperparameters must be contiguous CPU tensors");
  if (v.numel() == 1) {
    const double x = scalar_of(v);
    for (int64_t i = 0; i < n; ++i) a[i * kTableCols + col] = x;
    return;
  }
  HF_CHECK(v.numel() == n, "program: a per-tensor value has ", v.numel(), " entries for ", n, " tensors");
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "program_column", [&] {
    const scalar_t* p = v.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) a[i * kTableCols + col] = static_cast<double>(p[i]);
  });
}

// The value of a learned hyperparameter from its raw tensor r, with hyperfused/ops/reference.py's arithmetic in r's
// dtype (sigma: (tanh r + 1) / 2, tanh by torch's own kernel; square: r * r), so the same bits.
at::Tensor value_of(const at::Tensor& r, int param) {
  if (param == kParamIdentity) return r;
  at::Tensor out = param == kParamSigma ? at::tanh(r) : r.clone();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "program_value", [&] {
    scalar_t* p = out.data_ptr<scalar_t>();
    const scalar_t* q = r.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < out.numel(); ++i) {
      // (each operation rounded to scalar_t, as the tensor ops round it)
      p[i] = param == kParamSigma ? static_cast<scalar_t>(static_cast<scalar_t>(p[i] + scalar_t(1)) / scalar_t(2))
                                  : static_cast<scalar_t>(q[i] * q[i]);
    }
  });
  return out;
}

// The rows' hyperparameter columns (values, the raw lr of a squared lr, sigma' of the sigma-parametrised ones; 0
// in every other column but the step and valid columns, written after) from level 0's raw tensors `hp` (the
// kind's hyperparameters in order). `exact`: per column, the number pass B takes for a fixed hyperparameter
// (NaN: the tensor's value), as fused.scalars is given them.
void fill_values(double* a, int64_t n, int64_t kind, int64_t learn, at::TensorList hp, at::ArrayRef<double> exact) {
  HF_CHECK(static_cast<int>(hp.size()) == kind_hypers(static_cast<int>(kind)), "program: ", hp.size(),
           " hyperparameter tensors for a kind that has ", kind_hypers(static_cast<int>(kind)));
  std::fill(a, a + n * kTableCols, 0.0);
  for (int c = 0; c < static_cast<int>(hp.size()); ++c) {
    const bool learned = (learn & (1 << c)) != 0;
    if (!learned && c < static_cast<int>(exact.size()) && !std::isnan(exact[c])) {
      for (int64_t i = 0; i < n; ++i) a[i * kTableCols + c] = exact[c];
      continue;
    }
    const int param = learned ? kind_param(static_cast<int>(kind), c) : kParamIdentity;
    put_column(a, n, c, value_of(hp[c], param));
    if (learned && param == kParamSquare && c == 0) put_column(a, n, kColRawLr, hp[c]);
    if (learned && param == kParamSigma && c >= 1) {
      const double t = std::tanh(scalar_of(hp[c]));         // in float64, as fused.scalars' host path
      const double ds = (1.0 - t * t) / 2.0;
      for (int64_t i = 0; i < n; ++i) a[i * kTableCols + kColDsig1 + c - 1] = ds;
    }
  }
}

void fill_steps(double* a, int64_t n, const c10::optional<at::Tensor>& steps, double offset) {
  if (!steps.has_value()) return;
  const at::Tensor& s = *steps;
  HF_CHECK(s.numel() == n && s.is_contiguous(), "program: ", s.numel(), " step counts for ", n, " tensors");
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "program_steps", [&] {
    const scalar_t* p = s.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) a[i * kTableCols + kColStep] = static_cast<double>(p[i]) + offset;
  });
}

void bump(const at::Tensor& t) { t.unsafeGetTensorImpl()->bump_version(); }

}  // namespace

// Pass A and the levels' plan of a program's step: table A from `used` (the raw values of the last update), the
// step counts and the flags `valid`, then hyper_reduce_tower. Returns (scratch, ok) as the op does.
std::tuple<at::Tensor, at::Tensor> program_reduce(int64_t kind, int64_t learn, bool momentum,
                                                  std::vector<double> eps, std::vector<at::Tensor> grads,
                                                  std::vector<at::Tensor> s0, std::vector<at::Tensor> s1,
                                                  std::vector<at::Tensor> s2, std::vector<at::Tensor> used,
                                                  c10::optional<at::Tensor> steps, at::Tensor valid, at::Tensor table,
                                                  std::vector<int64_t> d0_map, std::vector<int64_t> desc,
                                                  std::vector<double> tower_eps, std::vector<at::Tensor> slots) {
  const int64_t n = static_cast<int64_t>(grads.size());
  check_table(table, n);
  HF_CHECK(valid.numel() == n && valid.scalar_type() == at::kBool && valid.is_contiguous(),
           "program: valid must be a contiguous bool tensor of ", n, " flags");
  double* a = table.data_ptr<double>();
  fill_values(a, n, kind, learn, used, {});
  fill_steps(a, n, steps, 0.0);
  const bool* v = valid.const_data_ptr<bool>();
  for (int64_t i = 0; i < n; ++i) a[i * kTableCols + kColValid] = v[i] ? 1.0 : 0.0;
  auto out = sig::handle<sig::SigReduceTower, sig::k_hyper_reduce_tower>().call(
      kind, learn, momentum, eps, grads, s0, s1, s2, table, d0_map, desc, tower_eps, slots, c10::nullopt);
  return {std::get<1>(out), std::get<2>(out)};
}

// The rest of a program's step with the verdict `ok`: the levels' commit (with `scratch`), table B from `hp` (the
// new raw values; `exact`, `store` as fused.scalars and fused.hyper_update give them), hyper_update, and where the
// step was taken: the step counts + 1, and where level 0 learns (`learned`) the moved flags set and `used` given
// hp's values. Writes done here move the tensors' version counters, as torch's in-place ops do. Returns whether
// the step was taken.
bool program_update(int64_t kind, int64_t learn, bool momentum, std::vector<double> eps,
                    std::vector<at::Tensor> params, std::vector<at::Tensor> grads, std::vector<at::Tensor> s0,
                    std::vector<at::Tensor> s1, std::vector<at::Tensor> s2, std::vector<at::Tensor> hp,
                    std::vector<double> exact, std::vector<double> store, c10::optional<at::Tensor> steps,
                    at::Tensor moved, std::vector<at::Tensor> used, at::Tensor table, std::vector<int64_t> desc,
                    std::vector<double> tower_eps, std::vector<at::Tensor> slots, c10::optional<at::Tensor> scratch,
                    at::Tensor ok, bool learned) {
  const int64_t n = static_cast<int64_t>(grads.size());
  check_table(table, n);
  HF_CHECK(static_cast<int64_t>(store.size()) == n, "program: ", store.size(), " store flags for ", n, " tensors");
  HF_CHECK(used.size() == hp.size() || !learned, "program: used has ", used.size(), " tensors, hp ", hp.size());
  if (scratch.has_value())
    sig::handle<sig::SigTowerCommit, sig::k_hyper_tower_commit>().call(desc, tower_eps, slots, *scratch, ok);
  double* a = table.data_ptr<double>();
  fill_values(a, n, kind, learn, hp, exact);
  fill_steps(a, n, steps, 1.0);
  for (int64_t i = 0; i < n; ++i) a[i * kTableCols + kColValid] = store[i];
  sig::handle<sig::SigUpdate, sig::k_hyper_update>().call(kind, learn, momentum, eps, params, grads, s0, s1, s2,
                                                          table, c10::nullopt, ok, c10::nullopt);
  HF_CHECK(ok.device().is_cpu() && ok.numel() == 1 && ok.scalar_type() == at::kBool,
           "program: ok must be a one-element bool CPU tensor");
  const bool taken = *ok.const_data_ptr<bool>();
  if (!taken) return false;
  if (steps.has_value()) {
    const at::Tensor& s = *steps;
    AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "program_count", [&] {
      scalar_t* p = s.data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) p[i] += scalar_t(1);
    });
    bump(s);
  }
  if (learned) {
    HF_CHECK(moved.numel() == n && moved.scalar_type() == at::kBool && moved.is_contiguous(),
             "program: moved must be a contiguous bool tensor of ", n, " flags");
    std::fill(moved.data_ptr<bool>(), moved.data_ptr<bool>() + n, true);
    bump(moved);
    for (size_t k = 0; k < hp.size(); ++k) {
      HF_CHECK(used[k].scalar_type() == hp[k].scalar_type() && used[k].numel() == hp[k].numel() &&
                   used[k].is_contiguous() && hp[k].is_contiguous(),
               "program: used and hp must hold contiguous tensors of the same dtype and size");
      std::memcpy(used[k].data_ptr(), hp[k].const_data_ptr(), hp[k].nbytes());
      bump(used[k]);
    }
  }
  return true;
}

void bind_program(pybind11::module_& m) {
  const auto nogil = pybind11::call_guard<pybind11::gil_scoped_release>();
  m.def("program_reduce", &program_reduce, nogil);
  m.def("program_update", &program_update, nogil);
}

}  // namespace hyperfused
