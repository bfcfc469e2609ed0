// The hypergradient loops compiled for the avx2 instruction set; see hyper_loops.h. setup.py links this
// file after the default-ISA ones, so shared inline functions keep their default-ISA copies.
#pragma GCC target("avx,avx2,fma,f16c")
// `#pragma GCC target` enables the instructions but not the feature macros the headers test (sleef's
// vector declarations among them): define those that the target implies.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define HF_ISA_NS isa_avx2
#include "hyper_loops.h"

namespace hyperfused {
namespace HF_ISA_NS {
void reduce_f32(const LoopFlags& f, bool with_jac, const float* g, const float* s0, const float* s1,
                const float* s2, int64_t begin, int64_t end, const Scalars<float>& c, double* out) {
  reduce_impl<float>(f, with_jac, g, s0, s1, s2, begin, end, c, out);
}
void reduce_f64(const LoopFlags& f, bool with_jac, const double* g, const double* s0, const double* s1,
                const double* s2, int64_t begin, int64_t end, const Scalars<double>& c, double* out) {
  reduce_impl<double>(f, with_jac, g, s0, s1, s2, begin, end, c, out);
}
void update_f32(const LoopFlags& f, float* x, const float* g, float* s0, float* s1, float* s2, int64_t begin,
                int64_t end, const Scalars<float>& c) {
  update_impl<float>(f, x, g, s0, s1, s2, begin, end, c);
}
void update_f64(const LoopFlags& f, double* x, const double* g, double* s0, double* s1, double* s2,
                int64_t begin, int64_t end, const Scalars<double>& c) {
  update_impl<double>(f, x, g, s0, s1, s2, begin, end, c);
}
}  // namespace HF_ISA_NS
}  // namespace hyperfused
