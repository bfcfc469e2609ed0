// The levels above level 0 (csrc/hyperfused/tower.h) on the host, for CPU tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <barrier>
#include <thread>
#include <tuple>
#include <vector>

#include "../hyperfused/check.h"
#include "../hyperfused/tower_desc.h"

namespace hyperfused {
namespace {

std::tuple<at::Tensor, at::Tensor> hyper_tower_plan_cpu(at::IntArrayRef desc, at::ArrayRef<double> eps,
                                                        at::TensorList slots, const at::Tensor& d0,
                                                        const at::Tensor& finite) {
  HF_CHECK(d0.dim() == 1 && d0.is_contiguous(), "hyper_tower_plan: d0 must be a contiguous vector");
  HF_CHECK(finite.scalar_type() == at::kBool && finite.numel() == 1, "hyper_tower_plan: finite must be bool");
  at::Tensor scr, ok = at::empty({}, at::TensorOptions().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(d0.scalar_type(), "hyper_tower_plan", [&] {
    const auto d = tower_desc<scalar_t>("hyper_tower_plan", desc, eps, slots, d0.scalar_type());
    HF_CHECK(d0.numel() >= d.lv[1].units, "hyper_tower_plan: d0 has ", d0.numel(), " entries, level 1 needs ",
                d.lv[1].units);
    scr = at::zeros({kScratchRowsPerLevel * d.K * d.block}, d0.options());
    ok.fill_(tower_plan<scalar_t>(d, d0.const_data_ptr<scalar_t>(), finite.item<bool>(), scr.data_ptr<scalar_t>()));
  });
  return {scr, ok};
}

void hyper_tower_commit_cpu(at::IntArrayRef desc, at::ArrayRef<double> eps, at::TensorList slots,
                            const at::Tensor& scratch, const at::Tensor& ok) {
  HF_CHECK(ok.scalar_type() == at::kBool && ok.numel() == 1, "hyper_tower_commit: ok must be bool");
  AT_DISPATCH_FLOATING_TYPES(scratch.scalar_type(), "hyper_tower_commit", [&] {
    const auto d = tower_desc<scalar_t>("hyper_tower_commit", desc, eps, slots, scratch.scalar_type());
    HF_CHECK(scratch.is_contiguous() && scratch.numel() == kScratchRowsPerLevel * d.K * d.block,
                "hyper_tower_commit: scratch does not match the tower");
    tower_commit<scalar_t>(d, scratch.const_data_ptr<scalar_t>(), ok.item<bool>());
  });
}

// tower.h's parallel policy on host threads, as the CUDA block runs it (BlockPar in csrc/cuda/tower_kernels.cu):
// the same barriers and the same thread-order sums, so tests without a GPU run the routine's parallel schedule.
struct ThreadsPar {
  int id, n;
  std::barrier<>* bar;
  std::vector<double>* part;
  double* total;
  int tid() const { return id; }
  int nt() const { return n; }
  void sync() const { bar->arrive_and_wait(); }
  template <typename T>
  T sum(T v) const {
    (*part)[id] = static_cast<double>(v);
    sync();
    if (id == 0) {
      T acc = T(0);
      for (int i = 0; i < n; ++i) acc += static_cast<T>((*part)[i]);
      *total = static_cast<double>(acc);
    }
    sync();
    const T out = static_cast<T>(*total);
    sync();
    return out;
  }
  bool all(bool b) const { return sum<double>(b ? 0.0 : 1.0) == 0.0; }
};

// Runs body(par) on n host threads sharing one barrier and one buffer of sums (a CUDA block's stand-in).
template <typename Body>
void on_threads(int n, Body&& body) {
  std::barrier<> bar(n);
  std::vector<double> part(n);
  double total = 0;
  std::vector<std::thread> pool;
  for (int i = 0; i < n; ++i) pool.emplace_back([&, i] { body(ThreadsPar{i, n, &bar, &part, &total}); });
  for (auto& th : pool) th.join();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> tower_plan_threads(at::IntArrayRef desc, at::ArrayRef<double> eps,
                                                      at::TensorList slots, const at::Tensor& d0,
                                                      const at::Tensor& finite, int64_t threads) {
  HF_CHECK(threads >= 1 && threads <= 1024, "_tower_plan_threads: threads must be in [1, 1024], got ", threads);
  HF_CHECK(d0.dim() == 1 && d0.is_contiguous() && d0.is_cpu(), "_tower_plan_threads: d0 must be a contiguous CPU vector");
  HF_CHECK(finite.scalar_type() == at::kBool && finite.numel() == 1, "_tower_plan_threads: finite must be bool");
  at::Tensor scr, ok = at::empty({}, at::TensorOptions().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(d0.scalar_type(), "_tower_plan_threads", [&] {
    const auto d = tower_desc<scalar_t>("_tower_plan_threads", desc, eps, slots, d0.scalar_type());
    HF_CHECK(d0.numel() >= d.lv[1].units, "_tower_plan_threads: d0 has ", d0.numel(), " entries, level 1 needs ",
             d.lv[1].units);
    scr = at::zeros({kScratchRowsPerLevel * d.K * d.block}, d0.options());
    const int n = static_cast<int>(threads);
    std::vector<char> res(n);
    const scalar_t* dp = d0.const_data_ptr<scalar_t>();
    scalar_t* sp = scr.data_ptr<scalar_t>();
    const bool fin = finite.item<bool>();
    on_threads(n, [&](const ThreadsPar& par) { res[par.id] = tower_plan<scalar_t>(d, dp, fin, sp, par); });
    for (int i = 1; i < n; ++i) HF_CHECK(res[i] == res[0], "_tower_plan_threads: the threads' verdicts differ");
    ok.fill_(static_cast<bool>(res[0]));
  });
  return {scr, ok};
}

std::vector<at::Tensor> tower_commit_threads(at::IntArrayRef desc, at::ArrayRef<double> eps, at::TensorList slots,
                                             const at::Tensor& scratch, const at::Tensor& ok, int64_t threads) {
  HF_CHECK(threads >= 1 && threads <= 1024, "_tower_commit_threads: threads must be in [1, 1024], got ", threads);
  HF_CHECK(ok.scalar_type() == at::kBool && ok.numel() == 1, "_tower_commit_threads: ok must be bool");
  std::vector<at::Tensor> out;
  for (const auto& t : slots) out.push_back(t.clone());
  AT_DISPATCH_FLOATING_TYPES(scratch.scalar_type(), "_tower_commit_threads", [&] {
    const auto d = tower_desc<scalar_t>("_tower_commit_threads", desc, eps, out, scratch.scalar_type());
    HF_CHECK(scratch.is_contiguous() && scratch.is_cpu() && scratch.numel() == kScratchRowsPerLevel * d.K * d.block,
             "_tower_commit_threads: scratch does not match the tower");
    const scalar_t* sp = scratch.const_data_ptr<scalar_t>();
    const bool go = ok.item<bool>();
    on_threads(static_cast<int>(threads), [&](const ThreadsPar& par) { tower_commit<scalar_t>(d, sp, go, par); });
  });
  return out;
}

TORCH_LIBRARY_IMPL(hyperfused, CPU, m) {
  m.impl("hyper_tower_plan", &hyper_tower_plan_cpu);
  m.impl("hyper_tower_commit", &hyper_tower_commit_cpu);
}

}  // namespace hyperfused
