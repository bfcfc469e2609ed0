// What an optimizer kind is, for the compiled kernels: the mirror of hyperfused/kinds.py (the one table every
// layer reads). tests/test_kinds.py parses this header and checks every entry against the Python table, so
// the two cannot drift. No torch headers: .cu files include this directly.
#pragma once

#include "common.h"

namespace hyperfused {

// ---------------------------------------------------------------------------------------------- widths
constexpr int kHpCols = 3;           // hyperparameter columns: lr, h1 (momentum / alpha / beta1), h2 (beta2)
constexpr int kStateSlots = 3;       // element-wise state arrays per tensor (s0, s1, s2)
constexpr int kRowCols = 4;          // a pass's float64 row per tensor: sum g*J per column, non-finite count
constexpr int kTableCols = 9;        // the float64 per-tensor scalar table of a pass
constexpr int kEpsPerLevel = 2;      // [eps, eps_root]
constexpr int kMaxTowerLevels = 8;   // levels 0..7 (a taller tower runs the Python tower)
constexpr int kTowerHead = 3;        // the tower ops' desc: [K, block, top_units] ...
constexpr int kTowerPerLevel = 7;    // ... then per level [kind, learn, momentum, per, nstate, nlr, units]
constexpr int kTowerSlots = 8;       // tensors per level: lr, h1, h2, s0, s1, s2, step, valid
// The tower's scratch holds, per level above 0, rows of `block` entries: its delta, its new raw hyperparameters,
// its new state arrays and its step (tower.h)
constexpr int kScratchRowsPerLevel = 2 + kStateSlots + 1;

// Columns of the scalar table
constexpr int kColLr = 0, kColH1 = 1, kColH2 = 2, kColRawLr = 3, kColDsig1 = 4, kColDsig2 = 5, kColStep = 6,
              kColValid = 7, kColDecay = 8;
// (kColDecay, the update's table only: lr * weight_decay of a decoupled decay (AdamW, Lion); the update multiplies
// x by 1 minus it before the kind's own step, in the math type; 0 where there is none: x * 1 is x exactly)
// Column of a row that counts non-finite gradient elements
constexpr int kRowNonfinite = 3;

// Bits of the "learned" mask: one per hyperparameter column, and in the towers level 0's learned decoupled weight
// decay (not a kernel column: the level-0 passes take lr * weight_decay in kColDecay; an entry of the flat vector
// level 1 optimizes, after the columns' entries).
enum LearnBit : int { kLearnLr = 1, kLearnH1 = 2, kLearnH2 = 4, kLearnDecay = 8 };

// Parametrisations of a learned hyperparameter (raw r -> value): r, (tanh r + 1) / 2, r^2.
constexpr int kParamIdentity = 0, kParamSigma = 1, kParamSquare = 2;

// ---------------------------------------------------------------------------------------------- the kinds
// X(enum name, id, hyperparameters, parametrisation of columns 0 1 2, slot of the previous gradient without /
// with momentum (-1: none), counts steps)
#define HF_KINDS(X)                                                                       \
  X(kSGD, 0, 2, kParamIdentity, kParamIdentity, kParamIdentity, 0, -1, 0)               \
  X(kAdagrad, 1, 1, kParamIdentity, kParamIdentity, kParamIdentity, 1, 1, 0)            \
  X(kRMSprop, 2, 2, kParamSquare, kParamSigma, kParamIdentity, 1, 1, 0)                 \
  X(kAdam, 3, 3, kParamIdentity, kParamSigma, kParamSigma, 2, 2, 1)                    \
  X(kLion, 4, 3, kParamIdentity, kParamIdentity, kParamIdentity, -1, -1, 0)

#define HF_KIND_ENUM(name, id, nhp, p0, p1, p2, prev, prev_mom, steps) name = id,
enum Kind : int { HF_KINDS(HF_KIND_ENUM) kNumKinds };
#undef HF_KIND_ENUM

// How many hyperparameters kind `kind` has (columns 0 .. n-1).
HF_HOST_DEVICE int kind_hypers(int kind) {
#define HF_KIND_CASE(name, id, nhp, p0, p1, p2, prev, prev_mom, steps) \
  if (kind == id) return nhp;
  HF_KINDS(HF_KIND_CASE)
#undef HF_KIND_CASE
  return 0;
}

// The parametrisation of column `col` of kind `kind` when it is learned.
HF_HOST_DEVICE int kind_param(int kind, int col) {
#define HF_KIND_CASE(name, id, nhp, p0, p1, p2, prev, prev_mom, steps) \
  if (kind == id) return col == 0 ? p0 : (col == 1 ? p1 : p2);
  HF_KINDS(HF_KIND_CASE)
#undef HF_KIND_CASE
  return kParamIdentity;
}

// The state slot that holds the previous gradient (-1: none) of kind `kind` with every hyperparameter learned.
HF_HOST_DEVICE int kind_prev_grad_slot(int kind, bool momentum) {
#define HF_KIND_CASE(name, id, nhp, p0, p1, p2, prev, prev_mom, steps) \
  if (kind == id) return momentum ? prev_mom : prev;
  HF_KINDS(HF_KIND_CASE)
#undef HF_KIND_CASE
  return -1;
}

// Whether kind `kind` keeps a per-tensor step count.
HF_HOST_DEVICE bool kind_steps(int kind) {
#define HF_KIND_CASE(name, id, nhp, p0, p1, p2, prev, prev_mom, steps) \
  if (kind == id) return steps != 0;
  HF_KINDS(HF_KIND_CASE)
#undef HF_KIND_CASE
  return false;
}

}  // namespace hyperfused
