// Builds a TowerDesc (tower.h) from the tower ops' arguments; shared by the CPU and CUDA registrations
// (needs ATen: not for .cu files).
//   desc:  [K, block, top_units] then per level k = 0..K: [kind, learn, momentum, per, nstate, nlr, units]
//   eps:   per level kEpsPerLevel values, [eps, eps_root] (hyper_math.h's D(s) = sqrt(s + eps_root) + eps)
//   slots: 8 per level: lr, h1, h2, s0, s1, s2, step, valid (an empty tensor where the level has none; level 0
//          keeps no state here, and its slot 3 holds its learned decoupled decay where it learns one; a level
//          above 0 keeps a step count where its configuration counts steps: kinds.py counts_steps)
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "check.h"
#include "tower.h"

namespace hyperfused {

// The eps argument of the level-0 ops: [eps, eps_root].
inline void check_eps(const char* op, at::ArrayRef<double> eps) {
  HF_CHECK(static_cast<int64_t>(eps.size()) == kEpsPerLevel, op, ": eps must be [eps, eps_root], got ",
              eps.size(), " values");
}

// The kind argument of the ops: an id of kinds.h's table.
inline void check_kind(const char* op, int64_t kind) {
  HF_CHECK(kind >= 0 && kind < kNumKinds, op, ": kind must be an id of the kinds table (0 to ", kNumKinds - 1,
              "), got ", kind);
}

template <typename T>
TowerDesc<T> tower_desc(const char* op, at::IntArrayRef desc, at::ArrayRef<double> eps, at::TensorList slots,
                        at::ScalarType dtype) {
  HF_CHECK(desc.size() >= kTowerHead, op, ": desc too short");
  TowerDesc<T> d;
  d.K = static_cast<int>(desc[0]);
  d.block = desc[1];
  d.top_units = desc[2];
  const int levels = d.K + 1;
  HF_CHECK(d.K >= 1 && levels <= kMaxTowerLevels, op, ": a tower of ", levels, " levels (1 to ",
              kMaxTowerLevels - 1, " above level 0 are supported)");
  HF_CHECK(static_cast<int64_t>(desc.size()) == kTowerHead + kTowerPerLevel * levels &&
                  static_cast<int64_t>(eps.size()) == kEpsPerLevel * levels &&
                  static_cast<int64_t>(slots.size()) == kTowerSlots * levels,
              op, ": desc, eps and slots do not describe ", levels, " levels");
  for (int k = 0; k < levels; ++k) {
    const int64_t* q = desc.data() + kTowerHead + kTowerPerLevel * k;
    TowerLevel<T>& L = d.lv[k];
    L.kind = static_cast<int>(q[0]);
    L.learn = static_cast<int>(q[1]);
    L.momentum = q[2] != 0;
    L.per = q[3] != 0;
    L.nstate = static_cast<int>(q[4]);
    L.nlr = q[5];
    L.units = q[6];
    L.eps = static_cast<T>(eps[kEpsPerLevel * k]);
    L.eps_root = static_cast<T>(eps[kEpsPerLevel * k + 1]);
    HF_CHECK(L.kind >= 0 && L.kind < kNumKinds && L.nstate >= 0 && L.nstate <= kStateSlots, op, ": bad level ", k);
    HF_CHECK(k == 0 || (L.units >= 0 && L.units <= d.block), op, ": level ", k, " optimizes ", L.units,
                " entries, more than the scratch rows hold (", d.block, ")");
    auto ptr = [&](int j, int64_t need) -> T* {
      const at::Tensor& t = slots[kTowerSlots * k + j];
      if (t.numel() == 0) return nullptr;
      HF_CHECK(t.scalar_type() == dtype && t.is_contiguous() && t.numel() >= need, op, ": level ", k,
                  " slot ", j, " must be a contiguous ", dtype, " tensor of at least ", need, " elements");
      return t.data_ptr<T>();
    };
    L.lr = ptr(0, L.per ? L.nlr : 1);
    L.h1 = ptr(1, 1);
    L.h2 = ptr(2, 1);
    if (k == 0) {
      if (L.learn & kLearnDecay) L.decay = ptr(3, 1);     // level 0 keeps no state here: slot 3 is its decay
    } else {
      for (int j = 0; j < kStateSlots; ++j) L.s[j] = ptr(3 + j, L.units);
    }
    L.step = ptr(6, 1);
    const at::Tensor& v = slots[kTowerSlots * k + 7];
    if (v.numel() > 0) {
      HF_CHECK(v.scalar_type() == at::kBool && v.numel() == 1, op, ": level ", k, " valid flag must be bool");
      L.valid = v.data_ptr<bool>();
    }
    HF_CHECK(L.lr != nullptr, op, ": level ", k, " has no lr");
    HF_CHECK(k == 0 || L.nstate == 0 || L.s[L.nstate - 1] != nullptr, op, ": level ", k, " lacks its state");
    HF_CHECK(k == 0 || L.valid != nullptr, op, ": level ", k, " has no valid flag");
    HF_CHECK(k == 0 || !kind_steps(L.kind) || L.step != nullptr, op, ": level ", k,
                " is of a kind that counts steps and has no step count");
    HF_CHECK(!(L.learn & kLearnH1) || L.h1 != nullptr, op, ": level ", k, " learns h1 but has none");
    HF_CHECK(!(L.learn & kLearnH2) || L.h2 != nullptr, op, ": level ", k, " learns beta2 but has none");
    HF_CHECK(!(L.learn & kLearnDecay) || (k == 0 && L.decay != nullptr), op, ": level ", k,
                " learns a decoupled weight decay (level 0 only, its tensor in slot 3)");
  }
  return d;
}

// The D0Map (tower.h) of the reduce-and-tower op: d0_map = [per_lr, column of each learned name of level 0...];
// n rows (tensors). Checks that the flat vector it makes is the one level 1 optimizes.
template <typename T>
D0Map d0_map_of(const char* op, at::IntArrayRef map, int64_t n, const TowerDesc<T>& d) {
  HF_CHECK(map.size() >= 2 && map.size() <= 4, op, ": d0_map must be [per_lr, 1 to 3 columns], got ",
              map.size(), " entries");
  D0Map m;
  m.per_lr = map[0] != 0;
  m.ncols = static_cast<int>(map.size()) - 1;
  int64_t len = 0;
  for (int c = 0; c < m.ncols; ++c) {
    HF_CHECK(map[c + 1] >= 0 && map[c + 1] <= 2, op, ": d0_map column ", map[c + 1], " is not 0, 1 or 2");
    m.col[c] = static_cast<int>(map[c + 1]);
    len += (m.col[c] == 0 && m.per_lr) ? n : 1;
  }
  HF_CHECK(len == d.lv[1].units, op, ": the rows of ", n, " tensors make a delta of ", len,
              " entries; level 1 optimizes ", d.lv[1].units);
  return m;
}

// The tower arguments of the ops that run a pass and then the levels above, parsed once, before the pass writes
// anything (bad arguments must not leave the parameters updated and the tower not): fn(desc, map) is called
// with the TowerDesc<T> of the tower's dtype (float or double) and runs the pass and the tower.
template <typename Fn>
void with_tower_args(const char* op, int64_t n, at::IntArrayRef d0_map, at::IntArrayRef desc,
                     at::ArrayRef<double> eps, at::TensorList slots, Fn&& fn) {
  HF_CHECK(!slots.empty(), op, ": no tower slots");
  const auto dtype = slots[0].scalar_type();
  HF_CHECK(dtype == at::kFloat || dtype == at::kDouble, op, ": the tower's dtype must be float32 or float64, "
              "got ", dtype);
  AT_DISPATCH_FLOATING_TYPES(dtype, "hyperfused_tower", [&] {
    const auto d = tower_desc<scalar_t>(op, desc, eps, slots, dtype);
    fn(d, d0_map_of(op, d0_map, n, d));
  });
}

}  // namespace hyperfused
