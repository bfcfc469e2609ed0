"""A tower's shape, as the tower kernels see it (the Triton kernels and the compiled ops alike): per level its
kind, learned set as bits, momentum flag, per-tensor lr, number of state arrays, and the lengths of the flat
vectors the levels optimize. No Triton here."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

from .. import kinds


def eps_pair(kind: str, cfg) -> Tuple[float, float]:
    """The two constants of a level (the kernels' eps argument; kinds.Kind.consts): (eps, eps_root) for Adagrad
    and RMSprop, whose denominators are sqrt(s + eps_root) + eps; (eps, initial_exp_avg_sq) for Adam."""
    a, b = kinds.KINDS[kind].consts
    return float(cfg.get(a, 0.0)), float(cfg.get(b, 0.0))


def _state_keys(kind, cfg, learned):
    return kinds.KINDS[kind].state_keys(cfg, learned)


def level_hp(kind: str, hp) -> list:
    """A level's hyperparameter tensors in the kernels' columns (lr, h1, h2), None where the kind has none."""
    names = kinds.KINDS[kind].hyper
    return [hp.get(names[c]) if c < len(names) else None for c in range(kinds.HP_COLS)]


def level_slots(k: int, rec, spec) -> list:
    """Level k's tensors in the tower ops' slots (kinds.TOWER_SLOTS: lr, h1, h2, s0, s1, s2, step, valid), None
    where it has none; read by the compiled ops' arguments and the Triton tower's pointer table alike. Level 0
    keeps no state there: its slot 3 holds its learned decoupled decay, if any (tower_desc.h)."""
    lv, _, learned, _, cfg = spec
    hp = rec["hp"]
    st = rec.get("state", {}) if k else {}
    arrays = ([st[key] for key in _state_keys(lv.kind, cfg, learned)] if k
              else [hp[kinds.DECAY]] if kinds.DECAY in learned else [])
    return level_hp(lv.kind, hp) + arrays + [None] * (kinds.STATE_SLOTS - len(arrays)) + [st.get("step"),
                                                                                          st.get("valid")]


def shape_of(specs) -> Dict[str, tuple]:
    """The tower's compile-time shape: kinds, learned bits, momentum codes (``momentum_code``), per-tensor lrs,
    state arrays, and what the kinds table says of each level's kind: its number of hyperparameters, the
    parametrisation of each learned column (3 per level, identity where not learned), the state slot of its
    previous gradient for its learned set (-1: none), and whether it counts steps."""
    out = dict(KINDS=[], LEARN=[], MOM=[], PER=[], NSTATE=[], NHP=[], PARAM=[], PREV=[], STEPS=[])
    for lv, _, learned, per, cfg in specs:
        spec = kinds.KINDS[lv.kind]
        out["KINDS"].append(spec.id)
        out["LEARN"].append(spec.learn_mask(learned))
        out["MOM"].append(momentum_code(spec.id, bool(cfg.get("momentum", False)), eps_pair(lv.kind, cfg)))
        out["PER"].append(bool(per))
        out["NSTATE"].append(len(spec.state_keys(cfg, learned)))
        out["NHP"].append(len(spec.hyper))
        out["PARAM"] += [spec.parametrisation(spec.hyper[c]) if c < len(spec.hyper) and spec.hyper[c] in learned
                         else kinds.IDENTITY for c in range(kinds.HP_COLS)]
        out["PREV"].append(prev_slot(spec.id, spec.learn_mask(learned), bool(cfg.get("momentum", False)),
                                     eps_pair(lv.kind, cfg)))
        out["STEPS"].append(spec.counts_steps(cfg))
    return {k: tuple(v) for k, v in out.items()}


def momentum_code(kind: int, momentum: bool, consts: Sequence[float]) -> int:
    """The kernels' MOMENTUM: 0 none, 1 plain, 2 dampened, 3 Nesterov's (SGD's constants [dampening, nesterov])."""
    if not momentum:
        return 0
    if int(kind) == kinds.KINDS["sgd"].id and float(consts[1]) != 0.0:
        return 3
    return 2 if int(kind) == kinds.KINDS["sgd"].id and float(consts[0]) != 0.0 else 1


def prev_slot(kind: int, learn: int, momentum: bool, consts: Sequence[float]) -> int:
    """The state slot of the previous gradient for learned bits ``learn`` (-1: none), as the kinds table orders the
    state."""
    spec = kinds.BY_ID[int(kind)]
    cfg = {"momentum": bool(momentum), "nesterov": float(consts[1]) if spec.name == "sgd" else 0.0}
    keys = spec.state_keys(cfg, spec.names_of(int(learn)))
    return keys.index("prev_grad") if "prev_grad" in keys else -1


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
