// Builds a TowerDesc (tower.h) from the tower ops' arguments; shared by the CPU and CUDA registrations
// (needs ATen: not for .cu files).
//   desc:  [K, block, top_units] then per level k = 0..K: [kind, learn, momentum, per, nstate, nlr, units]
//   eps:   per level
//   slots: 8 per level: lr, h1, h2, s0, s1, s2, step, valid (an empty tensor where the level has none)
#pragma once

#include <ATen/ATen.h>

#include "tower.h"

namespace hyperfused {

constexpr int kTowerHead = 3, kTowerPerLevel = 7, kTowerSlots = 8;

template <typename T>
TowerDesc<T> tower_desc(const char* op, at::IntArrayRef desc, at::ArrayRef<double> eps, at::TensorList slots,
                        at::ScalarType dtype) {
  TORCH_CHECK(desc.size() >= kTowerHead, op, ": desc too short");
  TowerDesc<T> d;
  d.K = static_cast<int>(desc[0]);
  d.block = desc[1];
  d.top_units = desc[2];
  const int levels = d.K + 1;
  TORCH_CHECK(d.K >= 1 && levels <= kMaxTowerLevels, op, ": a tower of ", levels, " levels (1 to ",
              kMaxTowerLevels - 1, " above level 0 are supported)");
  TORCH_CHECK(static_cast<int64_t>(desc.size()) == kTowerHead + kTowerPerLevel * levels &&
                  static_cast<int64_t>(eps.size()) == levels &&
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
    L.eps = static_cast<T>(eps[k]);
    TORCH_CHECK(L.kind >= 0 && L.kind <= 3 && L.nstate >= 0 && L.nstate <= 3, op, ": bad level ", k);
    TORCH_CHECK(k == 0 || (L.units >= 0 && L.units <= d.block), op, ": level ", k, " optimizes ", L.units,
                " entries, more than the scratch rows hold (", d.block, ")");
    auto ptr = [&](int j, int64_t need) -> T* {
      const at::Tensor& t = slots[kTowerSlots * k + j];
      if (t.numel() == 0) return nullptr;
      TORCH_CHECK(t.scalar_type() == dtype && t.is_contiguous() && t.numel() >= need, op, ": level ", k,
                  " slot ", j, " must be a contiguous ", dtype, " tensor of at least ", need, " elements");
      return t.data_ptr<T>();
    };
    L.lr = ptr(0, L.per ? L.nlr : 1);
    L.h1 = ptr(1, 1);
    L.h2 = ptr(2, 1);
    for (int j = 0; j < 3; ++j) L.s[j] = ptr(3 + j, k == 0 ? 0 : L.units);
    L.step = ptr(6, 1);
    const at::Tensor& v = slots[kTowerSlots * k + 7];
    if (v.numel() > 0) {
      TORCH_CHECK(v.scalar_type() == at::kBool && v.numel() == 1, op, ": level ", k, " valid flag must be bool");
      L.valid = v.data_ptr<bool>();
    }
    TORCH_CHECK(L.lr != nullptr, op, ": level ", k, " has no lr");
    TORCH_CHECK(k == 0 || L.nstate == 0 || L.s[L.nstate - 1] != nullptr, op, ": level ", k, " lacks its state");
    TORCH_CHECK(k == 0 || L.valid != nullptr, op, ": level ", k, " has no valid flag");
    TORCH_CHECK(!(L.learn & kLearnH1) || L.h1 != nullptr, op, ": level ", k, " learns h1 but has none");
    TORCH_CHECK(!(L.learn & kLearnH2) || L.h2 != nullptr, op, ": level ", k, " learns beta2 but has none");
  }
  return d;
}

}  // namespace hyperfused
