// The interface between the torch-facing CPU kernels and the per-ISA inner loops (hyper_loops.h). No
// templates are shared across the ISA translation units: only these plain function declarations.
#pragma once

#include <cstdint>

#include "../hyperfused/hyper_math.h"

namespace hyperfused {

// What a loop needs to know about the variant (set by the caller from the learned mask and the config).
struct LoopFlags {
  int kind;
  int learn;
  bool momentum;
  bool store_prev = true;  // update: write the gradient to the previous-gradient state (false when the
                           // caller keeps the gradient tensor itself as that state)
};

// The kinds with a vectorised loop below; any other kind of kinds.h's table runs the element path of hyper_elem.h
// (the CUDA kernels' per-element code, one element at a time) for float and double too.
inline bool has_vector_loop(int kind) {
  return kind == kSGD || kind == kAdagrad || kind == kRMSprop || kind == kAdam || kind == kLion;
}

// One table of entry points per instruction set.
struct LoopTable {
  const char* isa;
  void (*reduce_f32)(const LoopFlags&, bool, const float*, const float*, const float*, const float*, int64_t,
                     int64_t, const Scalars<float>&, double*);
  void (*reduce_f64)(const LoopFlags&, bool, const double*, const double*, const double*, const double*, int64_t,
                     int64_t, const Scalars<double>&, double*);
  void (*update_f32)(const LoopFlags&, float*, const float*, float*, float*, float*, int64_t, int64_t,
                     const Scalars<float>&);
  void (*update_f64)(const LoopFlags&, double*, const double*, double*, double*, double*, int64_t, int64_t,
                     const Scalars<double>&);
};

#define HF_DECLARE_ISA(NS)                                                                                   \
  namespace NS {                                                                                             \
  void reduce_f32(const LoopFlags& f, bool with_jac, const float* g, const float* s0, const float* s1,       \
                  const float* s2, int64_t begin, int64_t end, const Scalars<float>& c, double* out);         \
  void reduce_f64(const LoopFlags& f, bool with_jac, const double* g, const double* s0, const double* s1,    \
                  const double* s2, int64_t begin, int64_t end, const Scalars<double>& c, double* out);      \
  void update_f32(const LoopFlags& f, float* x, const float* g, float* s0, float* s1, float* s2,             \
                  int64_t begin, int64_t end, const Scalars<float>& c);                                      \
  void update_f64(const LoopFlags& f, double* x, const double* g, double* s0, double* s1, double* s2,        \
                  int64_t begin, int64_t end, const Scalars<double>& c);                                     \
  }

HF_DECLARE_ISA(isa_default)
HF_DECLARE_ISA(isa_avx2)
HF_DECLARE_ISA(isa_avx512)
#undef HF_DECLARE_ISA

// The best table this CPU runs (checked once); HYPERFUSED_CPU_ISA=default|avx2|avx512 caps it.
const LoopTable& loop_table();

}  // namespace hyperfused
