// One element of a hypergradient pass, for the loops that work element by element: the CPU kernels' generic
// path (half, bfloat16) and the CUDA kernels. Which state array feeds which formula of hyper_math.h is decided
// here once. State arrays by kind: SGD (momentum_buffer, prev_momentum_buffer) or (prev_grad); Adagrad (sum,
// prev_grad); RMSprop (square_avg, prev_grad); Adam (exp_avg, exp_avg_sq, prev_grad).
#pragma once

#include <cstdint>

#include "hyper_math.h"

namespace hyperfused {

// Conversion between a parameter's storage type and the math type. static_cast by default; the CUDA kernels
// specialise it for __half and __nv_bfloat16 (torch builds them with the implicit conversions turned off).
template <typename To, typename From>
struct Convert {
  HF_HOST_DEVICE static To run(From v) { return static_cast<To>(v); }
};

// Per-element view of one tensor's arrays; state is in the math type T, params/grads in scalar_t.
template <typename scalar_t, typename T>
struct Arrays {
  scalar_t* x = nullptr;
  const scalar_t* g = nullptr;
  T* s0 = nullptr;
  T* s1 = nullptr;
  T* s2 = nullptr;
};

// The Jacobian contributions of one element: j[0..2] for lr, h1, h2.
template <typename scalar_t, typename T>
HF_HOST_DEVICE void element_jac(int kind, int learn, bool momentum, const Arrays<scalar_t, T>& a, int64_t i,
                                const Scalars<T>& c, T& j0, T& j1, T& j2) {
  j0 = j1 = j2 = T(0);
  switch (kind) {
    case kSGD:
      if (momentum) {
        j0 = -a.s0[i];                        // -buf
        if (learn & kLearnH1) j1 = -c.lr * a.s1[i];  // -lr buf_prev
      } else {
        j0 = -a.s0[i];                        // -g_prev
      }
      break;
    case kAdagrad:
      j0 = adagrad_jac_lr(a.s1[i], a.s0[i], c.eps);
      break;
    case kRMSprop:
      rmsprop_jac(a.s1[i], a.s0[i], c, j0, j1);
      break;
    case kAdam:
      if (learn & (kLearnH1 | kLearnH2)) {
        adam_jac(a.s0[i], a.s1[i], a.s2[i], c, j0, j1, j2);
      } else {
        j0 = adam_jac_lr(a.s0[i], a.s1[i], c);
      }
      break;
  }
}

// One element of the update; writes x and state.
template <typename scalar_t, typename T>
HF_HOST_DEVICE void element_update(int kind, int learn, bool momentum, const Arrays<scalar_t, T>& a, int64_t i,
                           const Scalars<T>& c, T g) {
  const T x = Convert<T, scalar_t>::run(a.x[i]);
  T xn;
  switch (kind) {
    case kSGD:
      if (momentum) {
        T buf = a.s0[i];
        if (learn & kLearnH1) a.s1[i] = buf;    // previous buffer, for J_momentum
        xn = sgd_momentum_step(x, g, buf, c.lr, c.h1);
        a.s0[i] = buf;
      } else {
        xn = sgd_step(x, g, c.lr);
        if (learn & kLearnLr) a.s0[i] = g;      // previous gradient
      }
      break;
    case kAdagrad: {
      T G = a.s0[i];
      xn = adagrad_step(x, g, G, c.lr, c.eps);
      a.s0[i] = G;
      if (learn) a.s1[i] = g;
      break;
    }
    case kRMSprop: {
      T s = a.s0[i];
      xn = rmsprop_step(x, g, s, c.lr, c.h1, c.eps);
      a.s0[i] = s;
      if (learn) a.s1[i] = g;
      break;
    }
    default: {  // kAdam
      T m = a.s0[i], v = a.s1[i];
      xn = adam_step(x, g, m, v, c);
      a.s0[i] = m;
      a.s1[i] = v;
      if (learn & (kLearnH1 | kLearnH2)) a.s2[i] = g;
      break;
    }
  }
  a.x[i] = Convert<scalar_t, T>::run(xn);
}

}  // namespace hyperfused
