// Shared definitions for hyperfused's kernels. Per-element math lives in headers like this one, written as
// HF_HOST_DEVICE inline functions, so the CPU kernels (and the CPU tests) exercise the same code the CUDA
// kernels compile. No torch headers here: .cu files include this directly.
#pragma once

// Per-element functions are always inlined: the CPU loops are compiled once per ISA (default, AVX2,
// AVX-512), and an out-of-line copy shared between those translation units could carry another ISA's code.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define HF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HF_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace hyperfused {

// Fixed reduction block: partial sums are taken over blocks of this many elements and combined in block
// order, so a reduction gives bitwise the same result at any thread count.
// 32768 elements (128 KB of float32 per array) keeps the per-chunk work (scalars, pointers, a call) well
// under 1% of the chunk's time while leaving hundreds of chunks per thread on large models.
constexpr long kReduceBlock = 32768;

HF_HOST_DEVICE double fma_acc(double acc, double a, double b) { return acc + a * b; }

}  // namespace hyperfused
