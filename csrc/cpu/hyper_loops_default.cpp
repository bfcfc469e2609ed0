// The hypergradient loops compiled for the default instruction set; see hyper_loops.h. setup.py links this
// file after the default-ISA ones, so shared inline functions keep their default-ISA copies.

#define CPU_CAPABILITY DEFAULT
#define HF_ISA_NS isa_default
#include "hyper_loops.h"
