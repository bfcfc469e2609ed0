// One element of a hypergradient pass, for the loops that work element by element: the CPU kernels' generic
// path (half, bfloat16) and the CUDA kernels. Which state array feeds which formula of hyper_math.h is decided
// here once. State arrays by kind: SGD (momentum_buffer, prev_momentum_buffer, prev_grad) or (prev_grad); Adagrad
// (sum, prev_grad); RMSprop (square_avg, prev_grad); Adam (exp_avg, exp_avg_sq, prev_grad). Those that exist are
// packed into s0, s1, s2 in that order (kinds.py). SGD's per-level constants are [dampening, nesterov]: a
// Scalars' eps and eps_root.
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

template <typename T>
HF_HOST_DEVICE T* slot_of(T* s0, T* s1, T* s2, int k) { return k == 0 ? s0 : (k == 1 ? s1 : s2); }

// The Jacobian contributions of one element: j[0..2] for lr, h1, h2.
template <typename scalar_t, typename T>
HF_HOST_DEVICE void element_jac(int kind, int learn, bool momentum, const Arrays<scalar_t, T>& a, int64_t i,
                                const Scalars<T>& c, T& j0, T& j1, T& j2) {
  j0 = j1 = j2 = T(0);
  switch (kind) {
    case kSGD:
      if (momentum && sgd_nesterov(c)) {
        if (learn & kLearnLr) j0 = sgd_nesterov_jac_lr(slot_of(a.s0, a.s1, a.s2, sgd_prev_grad_slot(learn, true, true))[i],
                                                   a.s0[i], c.h1);
        if (learn & kLearnH1) j1 = sgd_nesterov_jac_mu(a.s0[i], a.s1[i], c.lr, c.h1);
      } else if (momentum) {
        j0 = -a.s0[i];                        // -buf
        if (learn & kLearnH1) j1 = -c.lr * a.s1[i];  // -lr buf_prev
      } else {
        j0 = -a.s0[i];                        // -g_prev
      }
      break;
    case kAdagrad:
      j0 = adagrad_jac_lr(a.s1[i], a.s0[i], c.eps, c.eps_root);
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
    case kLion:
      j0 = -a.s1[i];                          // -sign(c) of the last update
      break;
  }
}

// One element of the update; writes x and state.
template <typename scalar_t, typename T>
HF_HOST_DEVICE void element_update(int kind, int learn, bool momentum, const Arrays<scalar_t, T>& a, int64_t i,
                           const Scalars<T>& c, T g) {
  const T x = Convert<T, scalar_t>::run(a.x[i]) * c.decay;   // (decoupled weight decay first; 1 without)
  T xn;
  switch (kind) {
    case kSGD:
      if (momentum) {
        T buf = a.s0[i];
        if (learn & kLearnH1) a.s1[i] = buf;    // previous buffer, for J_momentum
        if (sgd_nesterov(c)) {
          xn = sgd_nesterov_step(x, g, buf, c.lr, c.h1);
          const int pg = sgd_prev_grad_slot(learn, true, true);
          if (pg >= 0) slot_of(a.s0, a.s1, a.s2, pg)[i] = g;   // previous gradient, for J_lr
        } else if (c.eps != T(0)) {
          xn = sgd_dampened_step(x, g, buf, c.lr, c.h1, c.gk);
        } else {
          xn = sgd_momentum_step(x, g, buf, c.lr, c.h1);
        }
        a.s0[i] = buf;
      } else {
        xn = sgd_step(x, g, c.lr);
        if (learn & kLearnLr) a.s0[i] = g;      // previous gradient
      }
      break;
    case kAdagrad: {
      T G = a.s0[i];
      xn = adagrad_step(x, g, G, c.lr, c.eps, c.eps_root);
      a.s0[i] = G;
      if (learn) a.s1[i] = g;
      break;
    }
    case kRMSprop: {
      T s = a.s0[i];
      xn = rmsprop_step(x, g, s, c.lr, c.h1, c.om1, c.eps, c.eps_root);
      a.s0[i] = s;
      if (learn) a.s1[i] = g;
      break;
    }
    case kLion: {
      T m = a.s0[i], s;
      xn = lion_step(x, g, m, s, c);
      a.s0[i] = m;
      if (learn & kLearnLr) a.s1[i] = s;      // the sign, for J_lr
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

// Which state arrays the update reads before writing (which = 0, 1, 2 for s0, s1, s2), and which it writes:
// the packed paths below move exactly these, as element_update above touches them. The arrays holding a
// previous value (prev_grad, the previous momentum buffer) are written by the update and read only by pass A.
HF_HOST_DEVICE bool update_reads(int kind, bool momentum, int which) {
  return which == 0 ? (kind != kSGD || momentum) : (which == 1 && kind == kAdam);
}
HF_HOST_DEVICE bool update_writes(int kind, int learn, bool momentum, bool nesterov, int which) {
  if (kind == kSGD && momentum && which > 0)   // the previous buffer (s1, learning mu), Nesterov's gradient
    return (which == 1 && (learn & kLearnH1) != 0) || sgd_prev_grad_slot(learn, true, nesterov) == which;
  if (which == 0) return kind != kSGD || momentum || (learn & kLearnLr) != 0;
  if (which == 1)
    return kind == kAdam || ((kind == kAdagrad || kind == kRMSprop) && learn != 0) ||
           (kind == kLion && (learn & kLearnLr) != 0);
  return kind == kAdam && (learn & (kLearnH1 | kLearnH2)) != 0;
}

// Moves N consecutive elements between an array and registers, one at a time; the CUDA kernels use a
// specialisation that moves them in one 16-byte access.
struct ElementMem {
  template <typename P, int N>
  HF_HOST_DEVICE static void load(const P* p, P (&out)[N]) {
    for (int e = 0; e < N; ++e) out[e] = p[e];
  }
  template <typename P, int N>
  HF_HOST_DEVICE static void store(P* p, const P (&in)[N]) {
    for (int e = 0; e < N; ++e) p[e] = in[e];
  }
};

// The arrays of N elements held in registers, standing for `a`'s: x, g and the state slots `a` has.
template <int N, typename scalar_t, typename T>
HF_HOST_DEVICE Arrays<scalar_t, T> in_registers(const Arrays<scalar_t, T>& a, scalar_t (&x)[N], scalar_t (&g)[N],
                                                T (&s0)[N], T (&s1)[N], T (&s2)[N]) {
  Arrays<scalar_t, T> r;
  r.x = x;
  r.g = g;
  r.s0 = a.s0 != nullptr ? s0 : nullptr;
  r.s1 = a.s1 != nullptr ? s1 : nullptr;
  r.s2 = a.s2 != nullptr ? s2 : nullptr;
  return r;
}

// The sums g * J of N elements held in registers (`r`: their state as loaded; `g`: their gradients) and the
// non-finite count, added in element order (`with_jac` false: the count only).
template <int N, typename scalar_t, typename T>
HF_HOST_DEVICE void jac_sums(int kind, int learn, bool momentum, bool with_jac, const Arrays<scalar_t, T>& r,
                             const scalar_t (&g)[N], const Scalars<T>& c, T inv, T& acc0, T& acc1, T& acc2, T& bad) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int e = 0; e < N; ++e) {
    const T ge = Convert<T, scalar_t>::run(g[e]) * inv;
    bad += (ge - ge == T(0)) ? T(0) : T(1);
    if (with_jac) {
      T j0, j1, j2;
      element_jac<scalar_t, T>(kind, learn, momentum, r, e, c, j0, j1, j2);
      acc0 += ge * j0;
      acc1 += ge * j1;
      acc2 += ge * j2;
    }
  }
}

// The update of N elements held in registers (`r`, whose x, g, s0, s1, s2 are the arrays below), stored back to
// elements [i, i + N) of `a`: x and the state arrays the update writes.
template <int N, typename Mem, typename scalar_t, typename T>
HF_HOST_DEVICE void update_regs(int kind, int learn, bool momentum, const Arrays<scalar_t, T>& a, int64_t i,
                                const Arrays<scalar_t, T>& r, scalar_t (&x)[N], const scalar_t (&g)[N], T (&s0)[N],
                                T (&s1)[N], T (&s2)[N], const Scalars<T>& c, T inv) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int e = 0; e < N; ++e)
    element_update<scalar_t, T>(kind, learn, momentum, r, e, c, Convert<T, scalar_t>::run(g[e]) * inv);
  Mem::store(a.x + i, x);
  const bool nest = kind == kSGD && sgd_nesterov(c);
  if (a.s0 != nullptr && update_writes(kind, learn, momentum, nest, 0)) Mem::store(a.s0 + i, s0);
  if (a.s1 != nullptr && update_writes(kind, learn, momentum, nest, 1)) Mem::store(a.s1 + i, s1);
  if (a.s2 != nullptr && update_writes(kind, learn, momentum, nest, 2)) Mem::store(a.s2 + i, s2);
}

// The update of elements [i, i + N) through registers: the arrays it reads are loaded N elements at a time,
// element_update runs on the registers, and the arrays it writes are stored back (Mem: how N elements move).
// `inv` multiplies each gradient as it is read (GradScaler's 1 / scale; 1 otherwise).
template <int N, typename Mem, typename scalar_t, typename T>
HF_HOST_DEVICE void update_pack(int kind, int learn, bool momentum, const Arrays<scalar_t, T>& a, int64_t i,
                                const Scalars<T>& c, T inv) {
  scalar_t x[N], g[N];
  T s0[N], s1[N], s2[N];
  Mem::load(a.x + i, x);
  Mem::load(a.g + i, g);
  if (a.s0 != nullptr && update_reads(kind, momentum, 0)) Mem::load(a.s0 + i, s0);
  if (a.s1 != nullptr && update_reads(kind, momentum, 1)) Mem::load(a.s1 + i, s1);
  const Arrays<scalar_t, T> r = in_registers<N>(a, x, g, s0, s1, s2);
  update_regs<N, Mem>(kind, learn, momentum, a, i, r, x, g, s0, s1, s2, c, inv);
}

// One-pass mode's pass B over elements [i, i + N): g and the state are loaded once; the sums g * J of the last
// update (scalars `cj`, where `with_jac`) and the non-finite count are taken from those registers, then, where
// `go` (the step's verdict), the update runs on the same registers (scalars `c`) and is stored. The chunk
// streams from memory once (jac_pack then update_pack read it twice).
template <int N, typename Mem, typename scalar_t, typename T>
HF_HOST_DEVICE void update_jac_pack(int kind, int learn, bool momentum, bool with_jac, bool go,
                                    const Arrays<scalar_t, T>& a, int64_t i, const Scalars<T>& c,
                                    const Scalars<T>& cj, T inv, T& acc0, T& acc1, T& acc2, T& bad) {
  scalar_t x[N], g[N];
  T s0[N], s1[N], s2[N];
  Mem::load(a.g + i, g);
  if (a.s0 != nullptr && (with_jac || (go && update_reads(kind, momentum, 0)))) Mem::load(a.s0 + i, s0);
  if (a.s1 != nullptr && (with_jac || (go && update_reads(kind, momentum, 1)))) Mem::load(a.s1 + i, s1);
  if (a.s2 != nullptr && with_jac) Mem::load(a.s2 + i, s2);
  const Arrays<scalar_t, T> r = in_registers<N>(a, x, g, s0, s1, s2);
  jac_sums<N>(kind, learn, momentum, with_jac, r, g, cj, inv, acc0, acc1, acc2, bad);
  if (!go) return;
  Mem::load(a.x + i, x);
  update_regs<N, Mem>(kind, learn, momentum, a, i, r, x, g, s0, s1, s2, c, inv);
}

// Pass A over elements [i, i + N) through registers: g (times inv) and every state array given, then the
// sums g * J and the non-finite count in element order.
template <int N, typename Mem, typename scalar_t, typename T>
HF_HOST_DEVICE void jac_pack(int kind, int learn, bool momentum, bool with_jac, const Arrays<scalar_t, T>& a,
                             int64_t i, const Scalars<T>& c, T inv, T& acc0, T& acc1, T& acc2, T& bad) {
  scalar_t g[N];
  T s0[N], s1[N], s2[N];
  Mem::load(a.g + i, g);
  Arrays<scalar_t, T> r;
  if (with_jac) {
    if (a.s0 != nullptr) Mem::load(a.s0 + i, s0);
    if (a.s1 != nullptr) Mem::load(a.s1 + i, s1);
    if (a.s2 != nullptr) Mem::load(a.s2 + i, s2);
    r.s0 = a.s0 != nullptr ? s0 : nullptr;
    r.s1 = a.s1 != nullptr ? s1 : nullptr;
    r.s2 = a.s2 != nullptr ? s2 : nullptr;
  }
  jac_sums<N>(kind, learn, momentum, with_jac, r, g, c, inv, acc0, acc1, acc2, bad);
}

}  // namespace hyperfused
