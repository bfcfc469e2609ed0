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


def shape_of(specs) -> Dict[str, tuple]:
    """The tower's compile-time shape: kinds, learned bits, momentum flags, per-tensor lrs, state arrays, and what
    the kinds table says of each level's kind: its number of hyperparameters, the parametrisation of each learned
    column (3 per level, identity where not learned), the state slot of its previous gradient (-1: none), and
    whether it counts steps."""
    out = dict(KINDS=[], LEARN=[], MOM=[], PER=[], NSTATE=[], NHP=[], PARAM=[], PREV=[], STEPS=[])
    for lv, _, learned, per, cfg in specs:
        spec = kinds.KINDS[lv.kind]
        out["KINDS"].append(spec.id)
        out["LEARN"].append(spec.learn_mask(learned))
        out["MOM"].append(bool(cfg.get("momentum", False)))
        out["PER"].append(bool(per))
        out["NSTATE"].append(len(spec.state_keys(cfg, learned)))
        out["NHP"].append(len(spec.hyper))
        out["PARAM"] += [spec.parametrisation(spec.hyper[c]) if c < len(spec.hyper) and spec.hyper[c] in learned
                         else kinds.IDENTITY for c in range(kinds.HP_COLS)]
        out["PREV"].append(spec.prev_grad_slot(cfg))
        out["STEPS"].append(spec.counts_steps(cfg))
    return {k: tuple(v) for k, v in out.items()}


def compiled_covers(specs) -> bool:
    """The compiled and Triton towers run these levels: all but a learned decoupled weight decay at level 0 (not a
    column of the kinds table) and SGD with Nesterov momentum or dampening above it (its kept gradient and step
    count are implemented in the level-0 passes and the Python tower only). A tower holding either runs the Python
    tower, on the device all the same."""
    if "weight_decay" in specs[0][2]:
        return False
    return not any(lv.kind == "sgd" and (float(cfg.get("nesterov", 0.0)) or float(cfg.get("dampening", 0.0)))
                   for lv, _, _, _, cfg in specs[1:])


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
