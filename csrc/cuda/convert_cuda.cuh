// Storage <-> math conversions of the CUDA kernels (hyper_kernels.cu, agd_kernels.cu): the math type of a
// parameter dtype (float, double for double), and hyper_elem.h's Convert specialised for __half and
// __nv_bfloat16 (torch builds the kernels with their implicit conversions turned off). No torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../hyperfused/hyper_elem.h"

namespace hyperfused {

template <>
struct Convert<float, __half> {
  __host__ __device__ __forceinline__ static float run(__half v) { return __half2float(v); }
};
template <>
struct Convert<__half, float> {
  __host__ __device__ __forceinline__ static __half run(float v) { return __float2half_rn(v); }
};
template <>
struct Convert<float, __nv_bfloat16> {
  __host__ __device__ __forceinline__ static float run(__nv_bfloat16 v) { return __bfloat162float(v); }
};
template <>
struct Convert<__nv_bfloat16, float> {
  __host__ __device__ __forceinline__ static __nv_bfloat16 run(float v) { return __float2bfloat16_rn(v); }
};

namespace cuda {

// The math type of a storage type: float, or double for double.
template <typename S>
struct Math {
  using T = float;
};
template <>
struct Math<double> {
  using T = double;
};
template <typename S>
using math_t = typename Math<S>::T;

// A storage value in its math type.
template <typename S>
__device__ __forceinline__ math_t<S> to_math(S v) {
  return Convert<math_t<S>, S>::run(v);
}

}  // namespace cuda
}  // namespace hyperfused
