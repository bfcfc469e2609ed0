"""A tower's shape, as the tower kernels see it (the Triton kernels and the compiled ops alike): per level its
kind, learned set as bits, momentum flag, per-tensor lr, number of state arrays, and the lengths of the flat
vectors the levels optimize. No Triton here."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

KIND_ID = {"sgd": 0, "adagrad": 1, "rmsprop": 2, "adam": 3}
_H1 = {"sgd": "momentum", "rmsprop": "alpha", "adam": "beta1"}
_BIT = {"lr": 1, "momentum": 2, "alpha": 2, "beta1": 2, "beta2": 4}


def eps_pair(cfg) -> Tuple[float, float]:
    """(eps, eps_root) of a level: its denominators are sqrt(s + eps_root) + eps (the kernels' eps argument)."""
    return float(cfg.get("eps", 0.0)), float(cfg.get("eps_root", 0.0))


def _learn_bits(names: Sequence[str]) -> int:
    return sum(_BIT[n] for n in names)


def _state_keys(kind, cfg, learned):
    from . import fused
    return fused.state_keys(kind, cfg, learned)


def shape_of(specs) -> Dict[str, tuple]:
    """The tower's compile-time shape: kinds, learned bits, momentum flags, per-tensor lrs, state arrays."""
    return dict(KINDS=tuple(KIND_ID[lv.kind] for lv, *_ in specs),
                LEARN=tuple(_learn_bits(learned) for _, _, learned, _, _ in specs),
                MOM=tuple(bool(cfg.get("momentum", False)) for *_, cfg in specs),
                PER=tuple(bool(per) for _, _, _, per, _ in specs),
                NSTATE=tuple(len(_state_keys(lv.kind, cfg, learned)) for lv, _, learned, _, cfg in specs))


def _nlr(levels) -> Tuple[int, ...]:
    """The length of every level's lr (one per tensor, or per entry of the vector below, when per-tensor)."""
    return tuple(rec["hp"]["lr"].numel() for rec in levels)


def units_of(levels, specs) -> Tuple[int, ...]:
    """UNITS[k]: the length of the flat vector level k optimizes (k >= 1), and after the top one entry more
    for the flat delta of the top's learned set (empty: 0)."""
    out = [0]
    for k in range(1, len(specs) + 1):
        below_hp, below_learned = levels[k - 1]["hp"], specs[k - 1][2]
        out.append(sum(below_hp[n].numel() for n in below_learned))
    return tuple(out)
