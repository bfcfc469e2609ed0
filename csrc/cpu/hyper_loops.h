// Inner loops of the CPU hypergradient passes for float and double, vectorised with at::vec and compiled
// once per instruction set.
//
// hyper_loops_{default,avx2,avx512}.cpp each define CPU_CAPABILITY (torch's convention: at::vec then lives
// in an ISA-specific inline namespace) and a `#pragma GCC target` before including this header;
// hyper_kernels.cpp picks one table of entry points at run time (hyper_loops_api.h).
//
// Every loop works on one chunk [begin, end) of one tensor: full vectors through the formulas of
// hyper_math.h instantiated for at::vec::Vectorized<T>, the tail through the same formulas on scalars.
// Reductions keep one vector accumulator per quantity and combine its lanes, then the tail, in a fixed
// order: the result depends on the chunk only, never on the thread count. -ffp-contract=off keeps a*b+c
// unfused, as in the reference.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "hyper_loops_api.h"

namespace hyperfused {

template <typename V>
struct VecMathOps {
  static inline V sqrt(V x) { return x.sqrt(); }
  static inline V where_pos(V s, V v) { return V::blendv(V(0), v, s > V(0)); }
  // (x > 0) - (x < 0): the comparison masks select 1 and -1 (0 where x is 0, as std's sign)
  static inline V sign(V x) { return V::blendv(V(0), V(1), x > V(0)) - V::blendv(V(0), V(1), x < V(0)); }
};
template <>
struct MathOps<at::vec::Vectorized<double>> : VecMathOps<at::vec::Vectorized<double>> {};

template <>
struct MathOps<at::vec::Vectorized<float>> : VecMathOps<at::vec::Vectorized<float>> {};

namespace HF_ISA_NS {

template <typename V, typename T>
inline V ld(const T* p, int64_t k) {
  if constexpr (std::is_same<V, T>::value) {
    return p[k];
  } else {
    return V::loadu(p + k);
  }
}

template <typename V, typename T>
inline void st(T* p, int64_t k, const V& v) {
  if constexpr (std::is_same<V, T>::value) {
    p[k] = v;
  } else {
    v.store(p + k);
  }
}

// Both forms of the per-tensor scalars (and of Adam's folded Jacobian factors); `get<V>()` and `adam_k<V>()` give
// the one a body is instantiated with.
template <typename T>
struct BothScalars {
  using Vec = at::vec::Vectorized<T>;
  Scalars<T> s;
  Scalars<Vec> v;
  AdamJacK<T> ks;
  AdamJacK<Vec> kv;
  explicit BothScalars(const Scalars<T>& c)
      : s(c), v(cast_scalars<Vec>(c)), ks(adam_jac_consts(c)), kv(cast_adam_jac_consts<Vec>(ks)) {}
  template <typename V>
  const Scalars<V>& get() const {
    if constexpr (std::is_same<V, T>::value) {
      return s;
    } else {
      return v;
    }
  }
  template <typename V>
  const AdamJacK<V>& adam_k() const {
    if constexpr (std::is_same<V, T>::value) {
      return ks;
    } else {
      return kv;
    }
  }
};

// out[0..2] += sum over [begin, end) of g * J_{lr, h1, h2}; out[3] += the number of non-finite g.
// body(V zero, k, j0, j1, j2) fills the Jacobians of the element(s) at k, as V (vector or scalar).
// Software prefetch, 4 KB ahead, of every stream a reduction reads (null pointers are skipped). Measured on the
// machine of bench/RESULTS.md: the read-only reduction passes went from about 28 to 40 GB/s on tensors
// larger than the cache; the hardware prefetcher alone keeps too few lines in flight. The update loop does
// not prefetch: its stores keep enough misses in flight, and prefetching there cost 10-25% on tensors that
// fit the cache (256K-1M elements, AMD EPYC, AVX2) and gained nothing beyond it.
constexpr int64_t kPrefetchBytes = 4096;

template <typename T>
struct Streams {
  const T* p[4];
  inline void prefetch(int64_t k) const {
    constexpr int64_t ahead = kPrefetchBytes / sizeof(T);
    for (int i = 0; i < 4; ++i)
      if (p[i] != nullptr) __builtin_prefetch(p[i] + k + ahead, 0, 3);
  }
};

template <typename T, bool JAC, typename Body>
inline void reduce_loop(const Streams<T>& streams, const T* g, int64_t begin, int64_t end, double* out,
                        Body&& body) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t W = Vec::size();
  Vec a0(0), a1(0), a2(0), bad(0);
  int64_t k = begin;
  for (; k + W <= end; k += W) {
    streams.prefetch(k);
    const Vec gv = Vec::loadu(g + k);
    bad = bad + (gv - gv).ne(Vec(0));        // inf - inf and NaN - NaN are NaN, unequal to 0
    if (JAC) {
      Vec j0(0), j1(0), j2(0);
      body(Vec(0), k, j0, j1, j2);
      a0 = a0 + gv * j0;
      a1 = a1 + gv * j1;
      a2 = a2 + gv * j2;
    }
  }
  T t0 = 0, t1 = 0, t2 = 0, tb = 0;
  for (; k < end; ++k) {
    const T gk = g[k];
    tb += (gk - gk == T(0)) ? T(0) : T(1);
    if (JAC) {
      T j0 = 0, j1 = 0, j2 = 0;
      body(T(0), k, j0, j1, j2);
      t0 += gk * j0;
      t1 += gk * j1;
      t2 += gk * j2;
    }
  }
  __at_align__ T l0[W], l1[W], l2[W], lb[W];
  a0.store(l0);
  a1.store(l1);
  a2.store(l2);
  bad.store(lb);
  double s0 = 0, s1 = 0, s2 = 0, sb = 0;
  for (int64_t l = 0; l < W; ++l) {
    s0 += double(l0[l]);
    s1 += double(l1[l]);
    s2 += double(l2[l]);
    sb += double(lb[l]);
  }
  out[0] += s0 + double(t0);
  out[1] += s1 + double(t1);
  out[2] += s2 + double(t2);
  out[3] += sb + double(tb);
}

// body(V zero, k) updates the element(s) at k in place.
template <typename T, typename Body>
inline void update_loop(int64_t begin, int64_t end, Body&& body) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t W = Vec::size();
  int64_t k = begin;
  for (; k + W <= end; k += W) {
    body(Vec(0), k);
  }
  for (; k < end; ++k) body(T(0), k);
}

// ------------------------------------------------------------------------------------------ reductions
template <typename T>
void reduce_impl(const LoopFlags& f, bool with_jac, const T* g, const T* s0, const T* s1, const T* s2,
                 int64_t begin, int64_t end, const Scalars<T>& c, double* out) {
  const BothScalars<T> sc(c);
  const bool h1 = (f.learn & kLearnH1) != 0, h12 = (f.learn & (kLearnH1 | kLearnH2)) != 0;
  // prefetch exactly the streams the body reads: an array the caller passes but the body does not use (the
  // previous gradient where only g and s0 enter) would otherwise be pulled through memory for nothing
  const Streams<T> g_only{{g, nullptr, nullptr, nullptr}}, g_s0{{g, s0, nullptr, nullptr}},
      g_s01{{g, s0, s1, nullptr}}, g_s012{{g, s0, s1, s2}}, g_s1{{g, s1, nullptr, nullptr}};
  if (!with_jac) {
    return reduce_loop<T, false>(g_only, g, begin, end, out, [](auto, int64_t, auto&, auto&, auto&) {});
  }
  switch (f.kind) {
    case kSGD:
      if (f.momentum && c.eps_root != T(0)) {  // Nesterov's: J_lr = -(g_prev + mu buf), J_mu = -lr (buf + mu buf_prev)
        const bool lr = (f.learn & kLearnLr) != 0;
        const T* gp = sgd_prev_grad_slot(f.learn, true, true) == 2 ? s2 : s1;
        if (lr && h1) {
          return reduce_loop<T, true>(g_s012, g, begin, end, out, [&](auto z, int64_t k, auto& j0, auto& j1, auto&) {
            using V = decltype(z);
            const auto& cc = sc.template get<V>();
            j0 = sgd_nesterov_jac_lr(ld<V>(gp, k), ld<V>(s0, k), cc.h1);
            j1 = sgd_nesterov_jac_mu(ld<V>(s0, k), ld<V>(s1, k), cc.lr, cc.h1);
          });
        }
        if (h1) {
          return reduce_loop<T, true>(g_s01, g, begin, end, out, [&](auto z, int64_t k, auto&, auto& j1, auto&) {
            using V = decltype(z);
            const auto& cc = sc.template get<V>();
            j1 = sgd_nesterov_jac_mu(ld<V>(s0, k), ld<V>(s1, k), cc.lr, cc.h1);
          });
        }
        return reduce_loop<T, true>(g_s01, g, begin, end, out, [&](auto z, int64_t k, auto& j0, auto&, auto&) {
          using V = decltype(z);
          j0 = sgd_nesterov_jac_lr(ld<V>(gp, k), ld<V>(s0, k), sc.template get<V>().h1);
        });
      }
      if (f.momentum && h1) {  // J_lr = -buf, J_mu = -lr buf_prev
        return reduce_loop<T, true>(g_s01, g, begin, end, out, [&](auto z, int64_t k, auto& j0, auto& j1, auto&) {
          using V = decltype(z);
          j0 = -ld<V>(s0, k);
          j1 = -sc.template get<V>().lr * ld<V>(s1, k);
        });
      }
      // J_lr = -buf (momentum) or -g_prev (no momentum): both are s0
      return reduce_loop<T, true>(g_s0, g, begin, end, out, [&](auto z, int64_t k, auto& j0, auto&, auto&) {
        using V = decltype(z);
        j0 = -ld<V>(s0, k);
      });
    case kAdagrad:
      return reduce_loop<T, true>(g_s01, g, begin, end, out, [&](auto z, int64_t k, auto& j0, auto&, auto&) {
        using V = decltype(z);
        j0 = adagrad_jac_lr(ld<V>(s1, k), ld<V>(s0, k), sc.template get<V>().eps, sc.template get<V>().eps_root);
      });
    case kRMSprop:
      return reduce_loop<T, true>(g_s01, g, begin, end, out, [&](auto z, int64_t k, auto& j0, auto& j1, auto&) {
        using V = decltype(z);
        rmsprop_jac(ld<V>(s1, k), ld<V>(s0, k), sc.template get<V>(), j0, j1);
        if (!h1) j1 = V(0);
      });
    case kAdam:
      if (h12) {
        return reduce_loop<T, true>(g_s012, g, begin, end, out, [&](auto z, int64_t k, auto& j0, auto& j1, auto& j2) {
          using V = decltype(z);
          adam_jac_folded(ld<V>(s0, k), ld<V>(s1, k), ld<V>(s2, k), sc.template get<V>(), sc.template adam_k<V>(),
                          j0, j1, j2);
        });
      }
      return reduce_loop<T, true>(g_s01, g, begin, end, out, [&](auto z, int64_t k, auto& j0, auto&, auto&) {
        using V = decltype(z);
        j0 = adam_jac_lr(ld<V>(s0, k), ld<V>(s1, k), sc.template get<V>());
      });
    case kLion:  // J_lr = -sign(c) of the last update, kept in s1
      return reduce_loop<T, true>(g_s1, g, begin, end, out, [&](auto z, int64_t k, auto& j0, auto&, auto&) {
        using V = decltype(z);
        j0 = -ld<V>(s1, k);
      });
    default:  // no vector loop (has_vector_loop): the caller runs the element path
      return;
  }
}

// ------------------------------------------------------------------------------------------ updates
// The weights at k as the kind's step takes them: times the decoupled weight decay's factor 1 - lr wd (exactly x
// where there is none: the factor is 1).
template <typename V, typename T>
inline V x_decayed(const T* x, int64_t k, const BothScalars<T>& sc) {
  return ld<V>(x, k) * sc.template get<V>().decay;
}

template <typename T>
void update_impl(const LoopFlags& f, T* x, const T* g, T* s0, T* s1, T* s2, int64_t begin, int64_t end,
                 const Scalars<T>& c) {
  const BothScalars<T> sc(c);
  const bool h1 = (f.learn & kLearnH1) != 0;
  // which kinds write the previous gradient (docs/MATH.md §4.5), unless the caller keeps the gradient itself
  const bool lr = (f.learn & kLearnLr) != 0 && f.store_prev;
  const bool h12 = (f.learn & (kLearnH1 | kLearnH2)) != 0 && f.store_prev;
  const bool any = f.learn != 0 && f.store_prev;
  switch (f.kind) {
    case kSGD:
      if (f.momentum && c.eps_root != T(0)) {     // Nesterov's (dampening 0)
        const int pg = sgd_prev_grad_slot(f.learn, true, true);
        T* prev = !f.store_prev ? nullptr : (pg == 1 ? s1 : (pg == 2 ? s2 : nullptr));
        return update_loop<T>(begin, end, [&](auto z, int64_t k) {
          using V = decltype(z);
          const auto& cc = sc.template get<V>();
          const V gk = ld<V>(g, k);
          V buf = ld<V>(s0, k);
          if (h1) st<V>(s1, k, buf);                  // the buffer before the update, for J_momentum
          st<V>(x, k, sgd_nesterov_step(x_decayed<V>(x, k, sc), gk, buf, cc.lr, cc.h1));
          st<V>(s0, k, buf);
          if (prev != nullptr) st<V>(prev, k, gk);    // the previous gradient, for J_lr
        });
      }
      if (f.momentum && c.eps != T(0)) {          // dampening: buf' = mu buf + k g, k = 1 at the first step
        return update_loop<T>(begin, end, [&](auto z, int64_t k) {
          using V = decltype(z);
          const auto& cc = sc.template get<V>();
          V buf = ld<V>(s0, k);
          if (h1) st<V>(s1, k, buf);
          st<V>(x, k, sgd_dampened_step(x_decayed<V>(x, k, sc), ld<V>(g, k), buf, cc.lr, cc.h1, cc.gk));
          st<V>(s0, k, buf);
        });
      }
      if (f.momentum) {
        return update_loop<T>(begin, end, [&](auto z, int64_t k) {
          using V = decltype(z);
          const auto& cc = sc.template get<V>();
          V buf = ld<V>(s0, k);
          if (h1) st<V>(s1, k, buf);                  // the buffer before the update, for J_momentum
          st<V>(x, k, sgd_momentum_step(x_decayed<V>(x, k, sc), ld<V>(g, k), buf, cc.lr, cc.h1));
          st<V>(s0, k, buf);
        });
      }
      return update_loop<T>(begin, end, [&](auto z, int64_t k) {
        using V = decltype(z);
        const V gk = ld<V>(g, k);
        st<V>(x, k, sgd_step(x_decayed<V>(x, k, sc), gk, sc.template get<V>().lr));
        if (lr) st<V>(s0, k, gk);                       // the previous gradient, for J_lr
      });
    case kAdagrad:
      return update_loop<T>(begin, end, [&](auto z, int64_t k) {
        using V = decltype(z);
        const auto& cc = sc.template get<V>();
        const V gk = ld<V>(g, k);
        V G = ld<V>(s0, k);
        st<V>(x, k, adagrad_step(x_decayed<V>(x, k, sc), gk, G, cc.lr, cc.eps, cc.eps_root));
        st<V>(s0, k, G);
        if (any) st<V>(s1, k, gk);
      });
    case kRMSprop:
      return update_loop<T>(begin, end, [&](auto z, int64_t k) {
        using V = decltype(z);
        const auto& cc = sc.template get<V>();
        const V gk = ld<V>(g, k);
        V s = ld<V>(s0, k);
        st<V>(x, k, rmsprop_step(x_decayed<V>(x, k, sc), gk, s, cc.lr, cc.h1, cc.om1, cc.eps, cc.eps_root));
        st<V>(s0, k, s);
        if (any) st<V>(s1, k, gk);
      });
    case kAdam:
      return update_loop<T>(begin, end, [&](auto z, int64_t k) {
        using V = decltype(z);
        const V gk = ld<V>(g, k);
        V m = ld<V>(s0, k), v = ld<V>(s1, k);
        st<V>(x, k, adam_step(x_decayed<V>(x, k, sc), gk, m, v, sc.template get<V>()));
        st<V>(s0, k, m);
        st<V>(s1, k, v);
        if (h12) st<V>(s2, k, gk);                      // the previous gradient, for J_beta
      });
    case kLion: {
      const bool keep_sign = (f.learn & kLearnLr) != 0;  // sign(c), for J_lr (not a gradient: always written)
      return update_loop<T>(begin, end, [&](auto z, int64_t k) {
        using V = decltype(z);
        V m = ld<V>(s0, k), s;
        st<V>(x, k, lion_step(x_decayed<V>(x, k, sc), ld<V>(g, k), m, s, sc.template get<V>()));
        st<V>(s0, k, m);
        if (keep_sign) st<V>(s1, k, s);
      });
    }
    default:  // no vector loop (has_vector_loop): the caller runs the element path
      return;
  }
}

// The entry points declared in hyper_loops_api.h, for this translation unit's instruction set.
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
