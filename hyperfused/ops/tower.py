"""The levels above level 0 as the compiled ops ``hyperfused::hyper_tower_plan`` / ``hyper_tower_commit``
(csrc/hyperfused/tower.h: on the host for CPU tensors, in a one-thread kernel for CUDA tensors): two calls
per param group instead of a few dozen small torch ops, and on CUDA no host round trip."""
from __future__ import annotations

import weakref
from typing import List, Tuple

import torch

from ..kinds import MAX_TOWER_LEVELS as MAX_LEVELS
from ..kinds import DECAY
from .reference import inplace
from .tower_shape import _nlr, eps_pair, level_slots, shape_of, units_of

Tensor = torch.Tensor


def _ops():
    from .fused import _compiled
    return _compiled()


def supported(levels, specs) -> bool:
    """The compiled tower ops cover this tower: built for its device, at most MAX_LEVELS levels, one dtype."""
    from . import _ext
    if not 2 <= len(specs) <= MAX_LEVELS:
        return False
    dev = levels[0]["hp"]["lr"].device
    if dev.type == "cpu":
        if not _ext.extension_available():
            return False
    elif dev.type != "cuda" or not _ext.cuda_extension_available():
        return False
    dt = levels[0]["hp"]["lr"].dtype
    return dt in (torch.float32, torch.float64) and all(
        t.dtype == dt for rec in levels for t in rec["hp"].values())


# The tower ops' argument lists, kept per optimizer (weakly: they go with it) while the same tensors and the same
# specs (rebuilt by the optimizer whenever a value changes) make them: building them costs more than the ops.
# An entry holds what it was built from, so no identity in its key can be reused while it lives.
_ARGS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ARGS_PER_OWNER = 32


def _tensor_ids(levels) -> tuple:
    ids = []
    for rec in levels:
        ids += map(id, rec["hp"].values())
        st = rec.get("state")
        if st:
            ids += map(id, st.values())
    return tuple(ids)


def _args(levels, specs, device, dtype) -> Tuple[List[int], List[float], List[Tensor]]:
    owner = specs[0][0]
    try:
        mine = _ARGS.get(owner)
    except TypeError:                           # an owner that cannot be weakly referenced: no cache
        return _build_args(levels, specs, device, dtype)
    key = _tensor_ids(levels)
    hit = None if mine is None else mine.get(id(levels))
    if hit is not None and hit[0] is levels and hit[1] is specs and hit[2] == key and hit[3] == (device, dtype):
        return hit[4]
    args = _build_args(levels, specs, device, dtype)
    if mine is None:
        mine = _ARGS[owner] = {}
    if len(mine) >= _ARGS_PER_OWNER:
        mine.clear()
    mine[id(levels)] = (levels, specs, key, (device, dtype), args)
    return args


def _build_args(levels, specs, device, dtype) -> Tuple[List[int], List[float], List[Tensor]]:
    shape = shape_of(specs)
    units = units_of(levels, specs)
    nlr = _nlr(levels)
    K = len(specs) - 1
    block = max(1, max(units))
    desc = [K, block, units[K + 1]]
    none = torch.empty(0, dtype=dtype, device=device)
    slots: List[Tensor] = []
    for k, (rec, spec) in enumerate(zip(levels, specs)):
        desc += [shape["KINDS"][k], shape["LEARN"][k], int(shape["MOM"][k]), int(shape["PER"][k]),
                 shape["NSTATE"][k] if k else 0, nlr[k], units[k] if k else 0]
        # (the ops write the tensors they are given: a 0-dim one goes as a one-element view, see inplace)
        slots += [none if t is None else inplace(t) for t in level_slots(k, rec, spec)]
    eps = [e for lv, *_, cfg in specs for e in eps_pair(lv.kind, cfg)]
    return desc, eps, slots


def plan(levels, specs, d0_flat: Tensor, finite: Tensor):
    """Tentative tower step: (scratch, ok) on the device; nothing the optimizer holds is written. The scratch
    also carries the op's argument lists, which ``commit`` of the same step reuses."""
    dt = levels[0]["hp"]["lr"].dtype
    args = _args(levels, specs, d0_flat.device, dt)
    scr, ok = _ops().hyper_tower_plan(*args, d0_flat.to(dt).contiguous(), finite.reshape(()))
    return (scr, args), ok


def fusable(levels, specs, grads, per_tensor_lr: bool, n_group: int) -> bool:
    """Pass A (one-pass mode: pass B) and the tower can run as the one op ``hyper_reduce_tower``
    (``hyper_update_tower``): the compiled tower covers it, the gradients share one dtype, level 0 learns
    something and not a decoupled decay (whose hypergradient is built in Python from a dot product, not in the
    op's rows), and a per-tensor lr has a gradient for every tensor of the group (the op's rows are then the
    group's vector)."""
    learned0 = specs[0][2]
    return (bool(grads) and bool(learned0) and DECAY not in learned0 and supported(levels, specs)
            and all(g.dtype == grads[0].dtype for g in grads)
            and not (per_tensor_lr and "lr" in learned0 and len(grads) != n_group))


def reduce_plan(kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw, levels, specs, inv_scale=None):
    """Pass A and the tentative tower step in one op (see ``fusable``): (scratch, ok) as ``plan`` returns."""
    from . import fused
    args = _args(levels, specs, grads[0].device, levels[0]["hp"]["lr"].dtype)
    scr, ok = fused.hyper_reduce_tower(kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw, args,
                                       inv_scale=inv_scale)
    return (scr, args), ok


def update_plan(kind, cfg, learned, per_tensor_lr, params, grads, states, hp, ok, raw, jac, levels, specs,
                inv_scale=None, decay=None):
    """One-pass mode's pass B and the tentative tower step in one op (see ``fusable``): (scratch, ok)."""
    from . import fused
    args = _args(levels, specs, grads[0].device, levels[0]["hp"]["lr"].dtype)
    scr, tok = fused.hyper_update(kind, cfg, learned, per_tensor_lr, params, grads, states, hp, ok, raw=raw, jac=jac,
                                  inv_scale=inv_scale, tower_args=args, decay=decay)
    return (scr, args), tok


def commit(levels, specs, scratch, ok: Tensor) -> None:
    """Write the tentative step where ``ok`` (0-dim bool on the device) is set."""
    scr, args = scratch
    _ops().hyper_tower_commit(*args, scr, ok.reshape(()))
