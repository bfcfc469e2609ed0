// CPU kernel of hyperfused::multi_tensor_dot: deterministic multi-tensor dot products.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../hyperfused/check.h"
#include "../hyperfused/common.h"

namespace hyperfused {
namespace {

template <typename scalar_t>
double dot_one(const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = a.numel();
  if (n == 0) return 0.0;
  const scalar_t* pa = a.const_data_ptr<scalar_t>();
  const scalar_t* pb = b.const_data_ptr<scalar_t>();
  const int64_t nblocks = (n + kReduceBlock - 1) / kReduceBlock;
  std::vector<double> partial(nblocks, 0.0);
  // Each block is summed by exactly one thread in element order; blocks are combined in block order.
  at::parallel_for(0, nblocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t lo = blk * kReduceBlock;
      const int64_t hi = std::min(n, lo + kReduceBlock);
      double acc = 0.0;
      for (int64_t i = lo; i < hi; ++i) {
        acc = fma_acc(acc, static_cast<double>(pa[i]), static_cast<double>(pb[i]));
      }
      partial[blk] = acc;
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

at::Tensor multi_tensor_dot_cpu(at::TensorList a, at::TensorList b) {
  HF_CHECK(a.size() == b.size(), "multi_tensor_dot: got ", a.size(), " tensors in a and ", b.size(), " in b");
  auto out = at::empty({static_cast<int64_t>(a.size())}, at::TensorOptions().dtype(at::kDouble));
  double* po = out.data_ptr<double>();
  for (size_t i = 0; i < a.size(); ++i) {
    HF_CHECK(a[i].sizes() == b[i].sizes(), "multi_tensor_dot: pair ", i, " has shapes ", a[i].sizes(),
                " and ", b[i].sizes());
    HF_CHECK(a[i].scalar_type() == b[i].scalar_type(), "multi_tensor_dot: pair ", i, " has dtypes ",
                a[i].scalar_type(), " and ", b[i].scalar_type());
    HF_CHECK(a[i].device().is_cpu() && b[i].device().is_cpu(), "multi_tensor_dot: pair ", i,
                " is not on the CPU");
    const at::Tensor ca = a[i].contiguous();
    const at::Tensor cb = b[i].contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ca.scalar_type(), "multi_tensor_dot", [&] {
      po[i] = dot_one<scalar_t>(ca, cb);
    });
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(hyperfused, CPU, m) { m.impl("multi_tensor_dot", &multi_tensor_dot_cpu); }

}  // namespace hyperfused
