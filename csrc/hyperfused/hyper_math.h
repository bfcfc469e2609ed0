// Per-element math of the hypergradient optimizers (docs/MATH.md §3-§4): the single source of every update and
// Jacobian formula for the compiled kernels. HF_HOST_DEVICE templates over the math type T (float or
// double), branch-free so that loops over them vectorise; the CPU kernels include this header and the CUDA
// kernels will include the same one, so the CPU tests check the math the GPU runs.
//
// The formulas (hyperfused/ops/reference.py is the oracle; docs/MATH.md derives them):
//   SGD      x' = x - lr g,  or with momentum buf' = mu buf + k g (k = 1 at a tensor's first step, 1 - dampening
//            after), x' = x - lr buf', or with Nesterov's momentum x' = x - lr (g + mu buf')
//   Adagrad  G' = G + g^2,  x' = x - lr g / D(G')
//   RMSprop  s' = gamma s + (1 - gamma) g^2,  x' = x - lr g / D(s')               (lr = a^2, gamma = sigma(q))
// with D(s) = sqrt(s + eps_root) + eps: torch's optimizers add eps outside the root (eps_root = 0), the
// paper's package inside (eps = 0, eps_root = its eps); the optimizers pass one or the other.
//   Adam     m' = b1 m + (1-b1) g,  v' = b2 v + (1-b2) g^2,  x' = x - lr mh / (sqrt(vh) + eps)
// A Jacobian J_name = d x' / d raw(name) of the *last* update is rebuilt from the state that update left
// behind and the scalars it used; a hypergradient is the sum over elements of g_next * J.
#pragma once

#include <cmath>

#include "common.h"
#include "kinds.h"

namespace hyperfused {

// The two operations the formulas need beyond + - * /: square root and "v where s > 0, else 0". Scalar
// versions here; the CPU loops specialise MathOps for at::vec::Vectorized so the same formulas run on
// vectors.
// (Hardware reciprocal estimates for the Jacobian terms were tried and measured slower than these exact
// operations on the AVX-512 machine of bench/RESULTS.md: the passes are bound by memory, not the divider.)
template <typename T>
struct MathOps {
  HF_HOST_DEVICE static T sqrt(T x) { return std::sqrt(x); }
  HF_HOST_DEVICE static T where_pos(T s, T v) { return s > T(0) ? v : T(0); }
  HF_HOST_DEVICE static T sign(T x) { return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0)); }
};

// Per-tensor scalars of one update (or of the last update, to rebuild its Jacobian), with everything that
// does not depend on the element precomputed once per tensor.
template <typename T>
struct Scalars {
  T lr;     // learning rate value
  T h1;     // momentum / alpha (gamma) / beta1
  T h2;     // beta2
  T eps;      // added to the denominator outside the square root
  T eps_root;  // Adagrad, RMSprop: added under the square root; Adam: v's initial value
  T raw_lr;  // RMSprop: a with lr = a^2
  T dsig1;   // sigma'(raw h1) for Adam's beta1 and RMSprop's gamma
  T dsig2;   // sigma'(raw beta2)
  // Adam: bias corrections and their derivatives at step t
  T c1, c2;        // 1 - b^t
  T dc1, dc2;      // t b^(t-1) / c^2
  T om1, om2;      // 1 - b1, 1 - b2
  // reciprocals, so that the per-element formulas multiply instead of divide (divisions are what bounds
  // these loops on CPUs: one vector division costs as much as a dozen multiplications)
  T ic1, ic2;      // 1 / c1, 1 / c2
  T ih1c1, ih2c2;  // 1 / (h1 c1), 1 / (h2 c2): Adam's (m - g) / b1 / c1 and (v - g^2) / b2 / c2
  T ih1;           // 1 / h1: RMSprop's 1 / gamma
  T gk;            // SGD: the gradient's weight in the momentum buffer, 1 at the first step, 1 - dampening after
  T decay;         // x's factor before the kind's step: 1 - lr wd of a decoupled weight decay (AdamW, Lion), else 1
};

template <typename T>
HF_HOST_DEVICE Scalars<T> make_scalars(T lr, T h1, T h2, T eps, T eps_root, T raw_lr, T dsig1, T dsig2, T t) {
  Scalars<T> s;
  s.lr = lr; s.h1 = h1; s.h2 = h2; s.eps = eps; s.eps_root = eps_root; s.raw_lr = raw_lr; s.dsig1 = dsig1; s.dsig2 = dsig2;
  s.c1 = T(1) - std::pow(h1, t);
  s.c2 = T(1) - std::pow(h2, t);
  s.dc1 = t * std::pow(h1, t - T(1)) / (s.c1 * s.c1);
  s.dc2 = t * std::pow(h2, t - T(1)) / (s.c2 * s.c2);
  s.om1 = T(1) - h1;
  s.om2 = T(1) - h2;
  s.ic1 = T(1) / s.c1;
  s.ic2 = T(1) / s.c2;
  s.ih1c1 = T(1) / (h1 * s.c1);
  s.ih2c2 = T(1) / (h2 * s.c2);
  s.ih1 = T(1) / h1;
  // (SGD's constants are [dampening, nesterov] (kinds.py consts); t = 0 where SGD counts no steps, dampening 0)
  s.gk = t == T(1) ? T(1) : T(1) - eps;
  s.decay = T(1);
  // Adam's Jacobians of its first update: mh_1 = g whatever beta1, and vh_1 = g^2 whatever beta2 when v starts at
  // 0 (eps_root is Adam's initial v, kinds.py consts): exactly 0, so the terms whose difference is 0 are zeroed
  // rather than left to round-off (only Adam's Jacobians read these four)
  if (t == T(1)) {
    s.ih1c1 = T(0);
    s.dc1 = T(0);
    if (eps_root == T(0)) {
      s.ih2c2 = T(0);
      s.dc2 = T(0);
    }
  }
  return s;
}

// The same scalars as another type (e.g. broadcast into vectors): V must be constructible from T.
template <typename V, typename T>
HF_HOST_DEVICE Scalars<V> cast_scalars(const Scalars<T>& c) {
  Scalars<V> o;
  o.lr = V(c.lr); o.h1 = V(c.h1); o.h2 = V(c.h2); o.eps = V(c.eps); o.eps_root = V(c.eps_root); o.raw_lr = V(c.raw_lr);
  o.dsig1 = V(c.dsig1); o.dsig2 = V(c.dsig2); o.c1 = V(c.c1); o.c2 = V(c.c2); o.dc1 = V(c.dc1);
  o.dc2 = V(c.dc2); o.om1 = V(c.om1); o.om2 = V(c.om2); o.ic1 = V(c.ic1); o.ic2 = V(c.ic2);
  o.ih1c1 = V(c.ih1c1); o.ih2c2 = V(c.ih2c2); o.ih1 = V(c.ih1); o.gk = V(c.gk);
  o.decay = V(c.decay);
  return o;
}

// A pass's scalars from its float64 row: every per-tensor scalar (1 - beta, the bias corrections 1 - beta^t and
// their derivatives, the reciprocals) computed in double and rounded once to T, as torch computes 1 - beta and its
// bias corrections in double from the numbers it was given (and as the Triton kernels do). A fixed beta2 = 0.999
// given exactly then yields the T nearest 0.001 for both 1 - beta2 and 1 - beta2^1 (they cancel at the first step,
// v_1 / c_2 = g^2), where forming them in float from a rounded 0.999 is off by 1.3e-5 of their value; RMSprop's
// 1 - alpha, with no bias correction to absorb it, moved a float32 trajectory 4x further from torch's than torch's
// own rounding. (The tower, tower.h, keeps make_scalars in T.) The decoupled weight decay: kColDecay holds
// lr * weight_decay, and x is multiplied by 1 - lw, in T, before the kind's own step (torch's AdamW:
// param.mul_(1 - lr * weight_decay), then the Adam step); lw = 0 leaves the factor 1, and x * 1 is x exactly.
template <typename T>
HF_HOST_DEVICE Scalars<T> row_scalars_of(const double* row, double eps, double eps_root) {
  Scalars<T> s = cast_scalars<T>(make_scalars<double>(row[kColLr], row[kColH1], row[kColH2], eps, eps_root,
                                                      row[kColRawLr], row[kColDsig1], row[kColDsig2], row[kColStep]));
  s.decay = T(1) - T(row[kColDecay]);
  return s;
}

// ------------------------------------------------------------------------------------------------ SGD
template <typename T>
HF_HOST_DEVICE T sgd_step(T x, T g, T lr) { return x - g * lr; }

template <typename T>
HF_HOST_DEVICE T sgd_momentum_step(T x, T g, T& buf, T lr, T mu) {
  buf = buf * mu + g;
  return x - buf * lr;
}

// SGD's constants are [dampening, nesterov] (a Scalars' eps, eps_root). With momentum: whether the update is Nesterov's, and the slot of its previous gradient (Nesterov's learning
// lr; -1: none). Without momentum the previous gradient, if kept, is s0.
template <typename T>
HF_HOST_DEVICE bool sgd_nesterov(const Scalars<T>& c) { return c.eps_root != T(0); }
HF_HOST_DEVICE int sgd_prev_grad_slot(int learn, bool momentum, bool nesterov) {
  if (!momentum) return (learn & kLearnLr) ? 0 : -1;
  if (!nesterov || !(learn & kLearnLr)) return -1;
  return (learn & kLearnH1) ? 2 : 1;
}

// with dampening: buf' = mu buf + k g (k: Scalars::gk)
template <typename T>
HF_HOST_DEVICE T sgd_dampened_step(T x, T g, T& buf, T lr, T mu, T k) {
  buf = buf * mu + g * k;
  return x - buf * lr;
}

// Nesterov's (dampening 0): x' = x - lr (g + mu buf')
template <typename T>
HF_HOST_DEVICE T sgd_nesterov_step(T x, T g, T& buf, T lr, T mu) {
  buf = buf * mu + g;
  return x - (g + buf * mu) * lr;
}

// Nesterov's Jacobians of the last update (buf = buf_{t-1}, prev_buf = buf_{t-2}, g_prev = g_{t-1}, mu and lr its
// values): J_lr = -(g_prev + mu buf), J_mu = -lr (buf + mu prev_buf)
template <typename T>
HF_HOST_DEVICE T sgd_nesterov_jac_lr(T g_prev, T buf, T mu) { return -(g_prev + buf * mu); }
template <typename T>
HF_HOST_DEVICE T sgd_nesterov_jac_mu(T buf, T prev_buf, T lr, T mu) { return -lr * (buf + mu * prev_buf); }

// ------------------------------------------------------------------------------------------------ Adagrad
template <typename T>
HF_HOST_DEVICE T adagrad_step(T x, T g, T& G, T lr, T eps, T eps_root) {
  G = G + g * g;
  return x - lr * g / (MathOps<T>::sqrt(G + eps_root) + eps);
}

// J_lr = -g_prev / D(G)
template <typename T>
HF_HOST_DEVICE T adagrad_jac_lr(T g_prev, T G, T eps, T eps_root) {
  return -g_prev / (MathOps<T>::sqrt(G + eps_root) + eps);
}

// ------------------------------------------------------------------------------------------------ RMSprop
template <typename T>
HF_HOST_DEVICE T rmsprop_step(T x, T g, T& s, T lr, T gamma, T om, T eps, T eps_root) {   // om = 1 - gamma
  s = gamma * s + om * (g * g);
  return x - lr * g / (MathOps<T>::sqrt(s + eps_root) + eps);
}

// With R = sqrt(s + eps_root), D = R + eps: J_a = -2 a g / D and
// J_q = lr g (s_{t-2} - g^2) / (2 R D^2) sigma'(q) (0 where R = 0), with s_{t-2} - g^2 = (s - g^2) / gamma
template <typename T>
HF_HOST_DEVICE void rmsprop_jac(T g_prev, T s, const Scalars<T>& c, T& j_lr, T& j_alpha) {
  const T R = MathOps<T>::sqrt(s + c.eps_root);
  const T rD = T(1) / (R + c.eps);
  j_lr = T(-2) * c.raw_lr * g_prev * rD;
  j_alpha = MathOps<T>::where_pos(
      R, c.lr * g_prev * ((s - g_prev * g_prev) * c.ih1) * (T(0.5) * rD * rD / R) * c.dsig1);
}

// ------------------------------------------------------------------------------------------------ Adam
template <typename T>
HF_HOST_DEVICE T adam_step(T x, T g, T& m, T& v, const Scalars<T>& c) {
  m = c.h1 * m + c.om1 * g;
  v = c.h2 * v + c.om2 * g * g;
  const T mh = m * c.ic1;
  const T vh = v * c.ic2;
  return x - c.lr * (mh / (MathOps<T>::sqrt(vh) + c.eps));
}

// J_lr = -u
template <typename T>
HF_HOST_DEVICE T adam_jac_lr(T m, T v, const Scalars<T>& c) {
  return -((m * c.ic1) / (MathOps<T>::sqrt(v * c.ic2) + c.eps));
}

// J_b1 = -lr [(m_prev - g)/c1 + m t b1^(t-1)/c1^2] / (S + eps) sigma'(b1),  m_prev - g = (m - g) / b1
// J_b2 = lr mh / (S + eps)^2 / (2 S) [(v_prev - g^2)/c2 + v t b2^(t-1)/c2^2] sigma'(b2), 0 where S = 0
template <typename T>
HF_HOST_DEVICE void adam_jac(T m, T v, T g_prev, const Scalars<T>& c, T& j_lr, T& j_b1, T& j_b2) {
  const T mh = m * c.ic1;
  const T S = MathOps<T>::sqrt(v * c.ic2);
  const T rden = T(1) / (S + c.eps);
  j_lr = -(mh * rden);
  const T dmh = (m - g_prev) * c.ih1c1 + m * c.dc1;
  j_b1 = -c.lr * dmh * rden * c.dsig1;
  const T dvh = (v - g_prev * g_prev) * c.ih2c2 + v * c.dc2;
  const T term = c.lr * mh * (rden * rden) / (T(2) * S) * dvh * c.dsig2;
  j_b2 = MathOps<T>::where_pos(S, term);
}

// The same Jacobians with the per-tensor factors folded, for the CPU's vector loops (float, double): 9 fewer
// vector operations per element, and that pass is bound by arithmetic there, not memory. The GPU kernels (and
// the CPU's half/bfloat16 loops) keep adam_jac above: with these five more constants live, ptxas spilled in
// three sm_90 kernels that had none.
template <typename T>
struct AdamJacK {
  T nic1;    // -1 / c1
  T a1, a2;  // ih1c1 + dc1, ih2c2 + dc2
  T nlrd1;   // -lr sigma'(b1)
  T nhlrd2;  // -lr sigma'(b2) / 2
};

template <typename T>
inline AdamJacK<T> adam_jac_consts(const Scalars<T>& c) {
  return AdamJacK<T>{-c.ic1, c.ih1c1 + c.dc1, c.ih2c2 + c.dc2, -c.lr * c.dsig1, -c.lr * c.dsig2 * T(0.5)};
}

template <typename V, typename T>
inline AdamJacK<V> cast_adam_jac_consts(const AdamJacK<T>& k) {
  return AdamJacK<V>{V(k.nic1), V(k.a1), V(k.a2), V(k.nlrd1), V(k.nhlrd2)};
}

// (m - g)/(b1 c1) + m dc1 = m a1 - g/(b1 c1);  J_b2 = (-lr sigma'(b2) / 2) J_lr / (S + eps) [v a2 - g^2/(b2 c2)] / S
template <typename T>
inline void adam_jac_folded(T m, T v, T g_prev, const Scalars<T>& c, const AdamJacK<T>& k, T& j_lr, T& j_b1,
                            T& j_b2) {
  const T S = MathOps<T>::sqrt(v * c.ic2);
  const T rden = T(1) / (S + c.eps);
  j_lr = (m * k.nic1) * rden;
  const T dmh = m * k.a1 - g_prev * c.ih1c1;
  j_b1 = (k.nlrd1 * rden) * dmh;
  const T dvh = v * k.a2 - (g_prev * g_prev) * c.ih2c2;
  const T term = k.nhlrd2 * (j_lr * rden) * dvh / S;
  j_b2 = MathOps<T>::where_pos(S, term);
}

// ------------------------------------------------------------------------------------------------ Lion
// c = b1 m + (1 - b1) g, s = sign(c), x' = x - lr s, m' = b2 m + (1 - b2) g; J_lr = -s (s kept as prev_sign)
template <typename T>
HF_HOST_DEVICE T lion_step(T x, T g, T& m, T& s, const Scalars<T>& c) {
  s = MathOps<T>::sign(c.h1 * m + c.om1 * g);
  m = c.h2 * m + c.om2 * g;
  return x - c.lr * s;
}

}  // namespace hyperfused
