// The levels above level 0 of a hypergradient tower (docs/MATH.md §1.2 steps 2-4, §5), on the small vectors of raw
// hyperparameters, as one routine: the CPU op runs it on the host in one thread, the CUDA op in one block of
// threads sharing the entries of the vectors (so a step needs no host round trip, and per-tensor lrs of a
// thousand tensors are not a thousand serial iterations), with the same code. It mirrors the Triton tower kernels
// (hyperfused/ops/triton/tower.py) and the Python tower of hyperfused/optim/base.py, the oracle:
//
//   plan    bottom-up hypergradients delta_k = sum(delta_{k-1} * J_k) (per entry for per-tensor lrs), then
//           top-down tentative updates of every level's raw hyperparameters and state, and the verdict
//           ok = every delta and every new hyperparameter finite (and level 0's flag). Results go to a
//           scratch buffer; nothing the optimizer holds is written.
//   commit  writes the scratch back when ok, and sets every level's valid flag.
//
// Scratch layout (B entries a row): rows 0..K-1 delta_k; rows K..2K-1 the new flat raw hyperparameters of
// level k (rows K + k - 1 for level k - 1's); rows 2K + 4 (k - 1) + j, j = 0..2, level k's new state arrays
// and j = 3 its step. The per-element formulas are hyper_elem.h's: a level above is the same optimizer on a
// small vector.
#pragma once

#include <cmath>
#include <cstdint>

#include "hyper_elem.h"

namespace hyperfused {

template <typename T>
struct TowerLevel {
  int kind = 0, learn = 0, nstate = 0;
  bool momentum = false, per = false;
  int64_t nlr = 1;          // entries of this level's lr (more than one when per-tensor)
  int64_t units = 0;        // k >= 1: length of the flat vector this level optimizes (level k - 1's learned set)
  T eps = T(0), eps_root = T(0);
  T* lr = nullptr;
  T* h1 = nullptr;          // momentum / alpha / beta1 (none for Adagrad)
  T* h2 = nullptr;          // beta2
  T* decay = nullptr;       // level 0 only: its learned decoupled weight decay (kLearnDecay)
  T* s[kStateSlots] = {nullptr, nullptr, nullptr};
  T* step = nullptr;        // the step count, where the level keeps one (Adam; SGD with dampening, whose first
                            // step takes g whole); t = 0 where none
  bool* valid = nullptr;    // k >= 1: whether the level's state holds a last update (its Jacobian exists)
};

template <typename T>
struct TowerDesc {
  int K = 0;                         // the top level
  int64_t block = 0;                 // B: scratch entries a row (>= every units and delta length)
  int64_t top_units = 0;             // length of the top level's flat delta (its learned set)
  TowerLevel<T> lv[kMaxTowerLevels];
};

// How pass A's per-tensor rows [n, 4] (sum g*J_lr, g*J_h1, g*J_h2, non-finite count; float64) become level 0's
// flat hypergradient, the vector level 1 optimizes: per learned name in level 0's order, the column summed over
// the tensors (in tensor order, in T), or for a per-tensor lr the column itself (one entry per tensor).
struct D0Map {
  int ncols = 0;
  int col[3] = {0, 0, 0};   // the rows' column of each learned name
  bool per_lr = false;      // column 0 (lr) is per tensor
};

// Writes the flat delta to d0; returns whether every gradient element was finite (no row counted one).
template <typename T>
HF_HOST_DEVICE bool tower_d0_from_rows(const double* rows, int64_t n, const D0Map& m, T* d0) {
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) finite = finite && rows[i * kRowCols + kRowNonfinite] == 0.0;
  int64_t pos = 0;
  for (int c = 0; c < m.ncols; ++c) {
    const int col = m.col[c];
    if (col == 0 && m.per_lr) {
      for (int64_t i = 0; i < n; ++i) d0[pos + i] = static_cast<T>(rows[i * kRowCols + kColLr]);
      pos += n;
    } else {
      T acc = T(0);
      for (int64_t i = 0; i < n; ++i) acc += static_cast<T>(rows[i * kRowCols + col]);
      d0[pos++] = acc;
    }
  }
  return finite;
}

template <typename T>
HF_HOST_DEVICE bool tower_finite(T x) { return x - x == T(0); }

// The raw lr (entry r of a per-tensor vector), h1, h2 of level k: the current ones, or the tentative ones of
// the scratch row `fresh` (non-null) for the names level k learns.
template <typename T>
HF_HOST_DEVICE void tower_raw(const TowerLevel<T>& L, const T* fresh, int64_t r, T& lr, T& h1, T& h2) {
  lr = L.per ? L.lr[r] : L.lr[0];
  h1 = (kind_hypers(L.kind) > 1 && L.h1 != nullptr) ? L.h1[0] : T(0);
  h2 = (kind_hypers(L.kind) > 2 && L.h2 != nullptr) ? L.h2[0] : T(0);
  if (fresh != nullptr) {
    int64_t pos = 0;
    if (L.learn & kLearnLr) {
      lr = L.per ? fresh[r] : fresh[0];
      pos = L.per ? L.nlr : 1;
    }
    if (L.learn & kLearnH1) h1 = fresh[pos++];
    if (L.learn & kLearnH2) h2 = fresh[pos];
  }
}

// Values of the raw hyperparameters and the scalars of one update at step t: each learned column through its
// kind's parametrisation (kinds.h kind_param: r^2, or (tanh r + 1) / 2 with sigma' kept for the Jacobian).
template <typename T>
HF_HOST_DEVICE Scalars<T> tower_scalars(const TowerLevel<T>& L, T lr, T h1, T h2, T t) {
  const T raw_lr = lr;
  T v[kHpCols] = {lr, h1, h2};
  T ds[kHpCols] = {T(0), T(0), T(0)};
  for (int col = 0; col < kHpCols; ++col) {
    if (!(L.learn & (1 << col))) continue;
    const int p = kind_param(L.kind, col);
    if (p == kParamSquare) {
      v[col] = v[col] * v[col];
    } else if (p == kParamSigma) {
      const T th = std::tanh(v[col]);
      v[col] = (th + T(1)) / T(2);
      ds[col] = (T(1) - th * th) / T(2);
    }
  }
  return make_scalars<T>(v[0], v[1], v[2], L.eps, L.eps_root, raw_lr, ds[1], ds[2], t);
}

// How tower_plan's loops are shared among threads. SerialPar: one thread does everything (the CPU op, and the
// reference order). A parallel policy (the CUDA finishing kernel's block, csrc/cuda/tower_kernels.cu; the CPU
// test op _tower_plan_threads, csrc/cpu/tower_ops.cpp) runs the same routine in every thread: entry r of a vector
// belongs to thread r % nt, `sync` is a barrier, `sum` adds one value of every thread in thread order (fixed, so
// the result does not depend on scheduling) and gives the total to all, `all` is the AND of every thread's flag.
// With one thread every loop runs in the serial order: SerialPar's results are the routine's serial ones.
struct SerialPar {
  HF_HOST_DEVICE int tid() const { return 0; }
  HF_HOST_DEVICE int nt() const { return 1; }
  HF_HOST_DEVICE void sync() const {}
  template <typename T>
  HF_HOST_DEVICE T sum(T v) const { return v; }
  HF_HOST_DEVICE bool all(bool b) const { return b; }
};

// The tentative step; returns ok (in every thread). d0: level 0's flat hypergradients (desc.lv[1].units of them);
// finite: whether pass A saw only finite gradients. With per-tensor lrs a level's vectors have one entry per
// tensor: the loops over entries are what the threads share.
template <typename T, typename Par>
HF_HOST_DEVICE bool tower_plan(const TowerDesc<T>& d, const T* d0, bool finite, T* scr, const Par& par) {
  const int K = d.K;
  const int64_t B = d.block;
  const int tid = par.tid(), nt = par.nt();
  bool ok = finite;
  for (int64_t r = tid; r < B; r += nt) scr[r] = r < d.lv[1].units ? d0[r] : T(0);
  for (int64_t r = tid; r < d.lv[1].units; r += nt) ok = ok && tower_finite(scr[r]);
  // 1. bottom-up: delta_k of every level below the top
  for (int k = 1; k < K; ++k) {
    par.sync();                                    // (row k - 1 is complete)
    const TowerLevel<T>& L = d.lv[k];
    const T* g = scr + (k - 1) * B;
    T* out = scr + k * B;
    const T t = L.step != nullptr ? L.step[0] : T(0);
    T zero[1] = {T(0)};
    T sum0 = 0, sum1 = 0, sum2 = 0;
    for (int64_t r = tid; r < B; r += nt) out[r] = T(0);
    for (int64_t r = tid; r < L.units; r += nt) {
      T lr, h1, h2;
      tower_raw<T>(L, nullptr, r, lr, h1, h2);
      const Scalars<T> c = tower_scalars<T>(L, lr, h1, h2, t);
      Arrays<T, T> a;
      a.s0 = L.nstate >= 1 ? L.s[0] + r : zero;
      a.s1 = L.nstate >= 2 ? L.s[1] + r : zero;
      a.s2 = L.nstate >= 3 ? L.s[2] + r : zero;
      T j0, j1, j2;
      element_jac<T, T>(L.kind, L.learn, L.momentum, a, 0, c, j0, j1, j2);
      if (L.per) out[r] = g[r] * j0;
      sum0 += g[r] * j0;
      sum1 += g[r] * j1;
      sum2 += g[r] * j2;
    }
    sum0 = par.sum(sum0);
    sum1 = par.sum(sum1);
    sum2 = par.sum(sum2);
    par.sync();                                    // (every entry zeroed before the sums are written)
    if (tid == 0) {
      int64_t pos = 0;
      if (L.learn & kLearnLr) {
        if (L.per) {
          pos = L.units;
        } else {
          out[0] = sum0;
          pos = 1;
        }
      }
      if (L.learn & kLearnH1) out[pos++] = sum1;
      if (L.learn & kLearnH2) out[pos] = sum2;
    }
    par.sync();
    const bool valid = L.valid != nullptr && L.valid[0];
    const int64_t n_out = k + 1 <= K ? d.lv[k + 1].units : d.top_units;
    for (int64_t r = tid; r < B; r += nt) {
      if (!valid) out[r] = T(0);
      if (r < n_out) ok = ok && tower_finite(out[r]);
    }
  }
  // 2. top-down: level k updates level k - 1's learned raw hyperparameters with its (new) values
  for (int k = K; k >= 1; --k) {
    par.sync();                                    // (rows k - 1 and K + k are complete)
    const TowerLevel<T>& L = d.lv[k];
    const TowerLevel<T>& below = d.lv[k - 1];
    const T* g = scr + (k - 1) * B;
    T* xn = scr + (K + k - 1) * B;
    // level k - 1's learned raw hyperparameters as one flat vector: lr first, then h1, h2, level 0's decay
    const int64_t n_lr = (below.learn & kLearnLr) ? (below.per ? below.nlr : 1) : 0;
    for (int64_t r = tid; r < B; r += nt) xn[r] = r < n_lr ? (below.per ? below.lr[r] : below.lr[0]) : T(0);
    par.sync();
    if (tid == 0) {
      int64_t pos = n_lr;
      if (below.learn & kLearnH1) xn[pos++] = below.h1[0];
      if (below.learn & kLearnH2) xn[pos++] = below.h2[0];
      if (below.learn & kLearnDecay) xn[pos++] = below.decay[0];
    }
    const T* fresh = k < K ? scr + (K + k) * B : nullptr;
    const T t = L.step != nullptr ? L.step[0] + T(1) : T(0);
    T* st = scr + (2 * K + (kStateSlots + 1) * (k - 1)) * B;
    for (int j = 0; j < kStateSlots; ++j)
      for (int64_t r = tid; r < B; r += nt) st[j * B + r] = (j < L.nstate && r < L.units) ? L.s[j][r] : T(0);
    for (int64_t r = tid; r < B; r += nt) st[kStateSlots * B + r] = t;
    par.sync();                                    // (xn is complete)
    for (int64_t r = tid; r < L.units; r += nt) {
      T lr, h1, h2;
      tower_raw<T>(L, fresh, r, lr, h1, h2);
      const Scalars<T> c = tower_scalars<T>(L, lr, h1, h2, t);
      Arrays<T, T> a;
      a.x = xn + r;
      a.g = g + r;
      a.s0 = st + r;
      a.s1 = st + B + r;
      a.s2 = st + 2 * B + r;
      element_update<T, T>(L.kind, L.learn, L.momentum, a, 0, c, g[r]);
      // the previous gradient, where a Jacobian of this level needs it
      const int prev = kind_prev_grad_slot(L.kind, L.momentum);
      if (prev >= 0) st[prev * B + r] = g[r];
      ok = ok && tower_finite(xn[r]);
    }
  }
  return par.all(ok);
}

template <typename T>
HF_HOST_DEVICE bool tower_plan(const TowerDesc<T>& d, const T* d0, bool finite, T* scr) {
  return tower_plan<T>(d, d0, finite, scr, SerialPar{});
}

// Writes the tentative step back (only called, or only acting, when ok), with the threads of `par` sharing the
// entries (each written once, from the scratch only: no barrier needed).
template <typename T, typename Par>
HF_HOST_DEVICE void tower_commit(const TowerDesc<T>& d, const T* scr, bool ok, const Par& par) {
  if (!ok) return;
  const int K = d.K;
  const int64_t B = d.block;
  const int tid = par.tid(), nt = par.nt();
  for (int k = 1; k <= K; ++k) {
    const TowerLevel<T>& below = d.lv[k - 1];
    const T* xn = scr + (K + k - 1) * B;
    int64_t pos = 0;
    if (below.learn & kLearnLr) {
      if (below.per) {
        for (int64_t r = tid; r < below.nlr; r += nt) below.lr[r] = xn[r];
        pos = below.nlr;
      } else {
        if (tid == 0) below.lr[0] = xn[pos];
        ++pos;
      }
    }
    if (tid == 0) {
      if (below.learn & kLearnH1) below.h1[0] = xn[pos++];
      if (below.learn & kLearnH2) below.h2[0] = xn[pos++];
      if (below.learn & kLearnDecay) below.decay[0] = xn[pos];
    }
    const TowerLevel<T>& L = d.lv[k];
    const T* st = scr + (2 * K + (kStateSlots + 1) * (k - 1)) * B;
    for (int j = 0; j < L.nstate && j < kStateSlots; ++j)
      for (int64_t r = tid; r < L.units; r += nt) L.s[j][r] = st[j * B + r];
    if (tid == 0) {
      if (L.step != nullptr) L.step[0] = st[kStateSlots * B];
      if (L.valid != nullptr) L.valid[0] = true;
    }
  }
}

template <typename T>
HF_HOST_DEVICE void tower_commit(const TowerDesc<T>& d, const T* scr, bool ok) {
  tower_commit<T>(d, scr, ok, SerialPar{});
}

}  // namespace hyperfused
