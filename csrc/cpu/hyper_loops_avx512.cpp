// The hypergradient loops compiled for the avx512 instruction set; see hyper_loops.h. setup.py links this
// file after the default-ISA ones, so shared inline functions keep their default-ISA copies.
#pragma GCC target("avx,avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq")
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
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define HF_ISA_NS isa_avx512
#include "hyper_loops.h"
