// The levels above level 0 (csrc/hyperfused/tower.h) on the host, for CPU tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

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

}  // namespace

TORCH_LIBRARY_IMPL(hyperfused, CPU, m) {
  m.impl("hyper_tower_plan", &hyper_tower_plan_cpu);
  m.impl("hyper_tower_commit", &hyper_tower_commit_cpu);
}

}  // namespace hyperfused
