"""The scalar tower step in Triton: every level above level 0 in two small launches per param group.

docs/MATH.md §1.2 steps 2-4, §5 on the tiny vectors of the levels above (a handful of raw hyperparameters, or one per
tensor with per-tensor learning rates). One program does the whole tower:

``_tower_plan``    bottom-up hypergradients delta_k = sum(delta_{k-1} * J_k) (per entry for per-tensor lrs),
                   then top-down tentative updates of every level's raw hyperparameters and state, and the
                   step's verdict ok = every delta and every new hyperparameter finite (and the level-0 flag).
                   Results go to a scratch buffer; nothing the optimizer holds is written.
``_tower_commit``  writes the scratch back where the (all-groups) ok flag is set, and valid |= ok.

The per-element formulas are hyper.py's (_jac, _step): a level above is the same optimizer on a small vector.
The tower's shape (kinds, learned sets, momentum, per-tensor lrs, sizes) is a compile-time constant: one
compiled kernel per tower shape. The tower's tensors are reached through a pointer table (levels x 8 slots:
lr, h1, h2, s0, s1, s2, step, valid), cached on the device like hyper.py's, so a step uploads nothing.

Scratch layout (math dtype, BLOCK entries a row): rows 0..K-1 delta_k; rows K..2K-1 the new flat raw
hyperparameters of level k; rows 2K + 4(k-1) + j, j = 0..2 the new state arrays of level k and j = 3 its step.
A row written and read back within the program is fenced by a barrier.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ...kinds import SCRATCH_ROWS_PER_LEVEL, STATE_SLOTS
from ..tower_shape import _nlr, eps_pair, level_slots, shape_of, units_of
from .hyper import _TL_DTYPE, _bias, _device_table, _jac, _launch, _step

Tensor = torch.Tensor
_STATE_SLOTS = tl.constexpr(STATE_SLOTS)      # a global a kernel reads must be a constexpr



@triton.jit
def _sigma(r):
    """(tanh r + 1) / 2 and its derivative (1 - tanh^2 r) / 2, tanh from exp (no libdevice needed)."""
    e = tl.exp(-2.0 * tl.abs(r))
    th = (1.0 - e) / (1.0 + e)
    th = tl.where(r < 0, -th, th)
    return (th + 1.0) / 2.0, (1.0 - th * th) / 2.0


@triton.jit
def _raw(tab, scr, k, r, NEW: tl.constexpr, NHP: tl.constexpr, LEARN: tl.constexpr, PER: tl.constexpr,
         U: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr, DT: tl.constexpr):
    """Raw lr (vector when per-tensor), h1, h2 of level k: the current ones, or (NEW) the tentative ones of
    the scratch for its learned names."""
    lp = tl.load(tab + k * 8 + 0).to(tl.pointer_type(DT))
    zero = tl.zeros([BLOCK], dtype=DT)
    if PER:
        lr = tl.load(lp + r, mask=r < U, other=0.0)
    else:
        lr = zero + tl.load(lp)
    h1 = zero
    h2 = zero
    if NHP > 1:              # the kind has a second hyperparameter (momentum, alpha, beta1)
        h1 = zero + tl.load(tl.load(tab + k * 8 + 1).to(tl.pointer_type(DT)))
    if NHP > 2:
        h2 = zero + tl.load(tl.load(tab + k * 8 + 2).to(tl.pointer_type(DT)))
    if NEW:
        row = scr + (K + k) * BLOCK
        flat = tl.load(row + r)
        pos = 0
        if LEARN & 1:
            if PER:
                lr = tl.where(r < U, flat, 0.0)
                pos = U
            else:
                lr = zero + tl.sum(tl.where(r == 0, flat, 0.0), axis=0)
                pos = 1
        if LEARN & 2:
            h1 = zero + tl.sum(tl.where(r == pos, flat, 0.0), axis=0)
            pos += 1
        if LEARN & 4:
            h2 = zero + tl.sum(tl.where(r == pos, flat, 0.0), axis=0)
    return lr, h1, h2


@triton.jit
def _param(P: tl.constexpr, r):
    """A raw hyperparameter's value through parametrisation P (hyperfused.kinds: 0 identity, 1 sigma,
    2 square) and sigma' (0 for the others)."""
    d = r * 0.0
    v = r
    if P == 1:
        v, d = _sigma(r)
    elif P == 2:
        v = r * r
    return v, d


@triton.jit
def _values(P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, lr, h1, h2):
    """Values and derivatives from raw hyperparameters: lr, h1, h2, raw_lr, dsigma(h1), dsigma(h2). P0..P2: each
    column's parametrisation where the level above learns it, identity otherwise (tower_shape.shape_of)."""
    raw_lr = lr
    lr, _ = _param(P0, lr)
    h1, ds1 = _param(P1, h1)
    h2, ds2 = _param(P2, h2)
    return lr, h1, h2, raw_lr, ds1, ds2


@triton.jit
def _state(tab, k, r, m, NS: tl.constexpr, BLOCK: tl.constexpr, DT: tl.constexpr):
    """Level k's NS state arrays (zeros for those it does not keep)."""
    s0 = tl.zeros([BLOCK], dtype=DT)
    s1 = tl.zeros([BLOCK], dtype=DT)
    s2 = tl.zeros([BLOCK], dtype=DT)
    if NS >= 1:
        s0 = tl.load(tl.load(tab + k * 8 + 3).to(tl.pointer_type(DT)) + r, mask=m, other=0.0)
    if NS >= 2:
        s1 = tl.load(tl.load(tab + k * 8 + 4).to(tl.pointer_type(DT)) + r, mask=m, other=0.0)
    if NS >= 3:
        s2 = tl.load(tl.load(tab + k * 8 + 5).to(tl.pointer_type(DT)) + r, mask=m, other=0.0)
    return s0, s1, s2


@triton.jit
def _flat_x(tab, k, r, LEARN: tl.constexpr, PER: tl.constexpr, U: tl.constexpr, BLOCK: tl.constexpr,
            DT: tl.constexpr):
    """The flat vector of level k's learned raw hyperparameters (lr first, then h1, h2, then level 0's learned
    decoupled decay, LEARN bit 8, whose pointer is in its slot 3); U: the length of its lr vector when per-tensor."""
    x = tl.zeros([BLOCK], dtype=DT)
    pos = 0
    if LEARN & 1:
        lp = tl.load(tab + k * 8 + 0).to(tl.pointer_type(DT))
        if PER:
            x = tl.load(lp + r, mask=r < U, other=0.0)
            pos = U
        else:
            x = tl.where(r == 0, tl.load(lp), x)
            pos = 1
    if LEARN & 2:
        x = tl.where(r == pos, tl.load(tl.load(tab + k * 8 + 1).to(tl.pointer_type(DT))), x)
        pos += 1
    if LEARN & 4:
        x = tl.where(r == pos, tl.load(tl.load(tab + k * 8 + 2).to(tl.pointer_type(DT))), x)
        pos += 1
    if LEARN & 8:
        x = tl.where(r == pos, tl.load(tl.load(tab + k * 8 + 3).to(tl.pointer_type(DT))), x)
    return x


@triton.jit
def _tower_plan(tab, eps_ptr, d0_ptr, finite_ptr, scr, ok_ptr,
                K: tl.constexpr, KINDS: tl.constexpr, LEARN: tl.constexpr, MOM: tl.constexpr,
                PER: tl.constexpr, UNITS: tl.constexpr, NSTATE: tl.constexpr, NLR: tl.constexpr,
                NHP: tl.constexpr, PARAM: tl.constexpr, PREV: tl.constexpr, STEPS: tl.constexpr,
                DT: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    zi = tl.zeros([BLOCK], dtype=tl.int32)
    # level 0's hypergradients (pass A's, all-reduced under FSDP), and whether pass A saw a non-finite gradient
    d = tl.load(d0_ptr + r, mask=r < UNITS[1], other=0.0).to(DT)
    tl.store(scr + r, d)
    bad = tl.where(r < UNITS[1], tl.where((d - d) == 0.0, 0, 1), 0) + (zi + (tl.load(finite_ptr) == 0).to(tl.int32))
    tl.debug_barrier()
    # 1. bottom-up: delta_k of every level below the top
    for k in tl.static_range(1, K):
        m = r < UNITS[k]
        g = tl.load(scr + (k - 1) * BLOCK + r)
        lr, h1, h2 = _raw(tab, scr, k, r, False, NHP[k], LEARN[k], PER[k], UNITS[k], K, BLOCK, DT)
        lr, h1, h2, raw_lr, ds1, ds2 = _values(PARAM[3 * k], PARAM[3 * k + 1], PARAM[3 * k + 2], lr, h1, h2)
        t = tl.zeros([BLOCK], dtype=DT)
        if STEPS[k]:
            t = t + tl.load(tl.load(tab + k * 8 + 6).to(tl.pointer_type(DT)))
        s0, s1, s2 = _state(tab, k, r, m, NSTATE[k], BLOCK, DT)
        eps = tl.load(eps_ptr + 2 * k).to(DT)
        eps_root = tl.load(eps_ptr + 2 * k + 1).to(DT)
        c1, c2, dc1, dc2, r1, r2 = _bias(h1, h2, t, eps_root)
        j0, j1, j2 = _jac(KINDS[k], LEARN[k], MOM[k], PREV[k], s0, s1, s2, lr, h1, h2, raw_lr, ds1, ds2, c1, c2,
                          dc1, dc2, r1, r2, eps, eps_root)
        c0 = tl.where(m, g * j0, 0.0)
        out = tl.zeros([BLOCK], dtype=DT)
        pos = 0
        if LEARN[k] & 1:
            if PER[k]:
                out = c0
                pos = UNITS[k]
            else:
                out = tl.where(r == 0, tl.sum(c0, axis=0), out)
                pos = 1
        if LEARN[k] & 2:
            out = tl.where(r == pos, tl.sum(tl.where(m, g * j1, 0.0), axis=0), out)
            pos += 1
        if LEARN[k] & 4:
            out = tl.where(r == pos, tl.sum(tl.where(m, g * j2, 0.0), axis=0), out)
        valid = (zi + tl.load(tl.load(tab + k * 8 + 7).to(tl.pointer_type(tl.uint8))).to(tl.int32)) != 0
        out = tl.where(valid, out, 0.0)
        bad += tl.where(r < UNITS[k + 1], tl.where((out - out) == 0.0, 0, 1), 0)
        tl.store(scr + k * BLOCK + r, out)
        tl.debug_barrier()
    # 2. top-down: level k updates level k-1's learned raw hyperparameters with its (new) values
    # (the loop variable is the only compile-time name: Triton turns a plainly assigned constant into a tensor,
    # and 3.6 refuses a constexpr annotation on a name assigned again in an unrolled loop)
    for k in tl.static_range(K, 0, -1):
        m = r < UNITS[k]
        x = _flat_x(tab, k - 1, r, LEARN[k - 1], PER[k - 1], NLR[k - 1], BLOCK, DT)
        g = tl.load(scr + (k - 1) * BLOCK + r)
        lr, h1, h2 = _raw(tab, scr, k, r, k < K, NHP[k], LEARN[k], PER[k], UNITS[k], K, BLOCK, DT)
        lr, h1, h2, raw_lr, ds1, ds2 = _values(PARAM[3 * k], PARAM[3 * k + 1], PARAM[3 * k + 2], lr, h1, h2)
        t = tl.zeros([BLOCK], dtype=DT)
        if STEPS[k]:
            t = t + tl.load(tl.load(tab + k * 8 + 6).to(tl.pointer_type(DT))) + 1.0
        s0, s1, s2 = _state(tab, k, r, m, NSTATE[k], BLOCK, DT)
        eps = tl.load(eps_ptr + 2 * k).to(DT)
        eps_root = tl.load(eps_ptr + 2 * k + 1).to(DT)
        c1, c2, _dc1, _dc2, _r1, _r2 = _bias(h1, h2, t, eps_root)
        gk = tl.where(t == 1.0, 1.0, 1.0 - eps)     # dampened SGD (constants [dampening, nesterov]): g's weight
        xn, a0, a1, a2 = _step(KINDS[k], LEARN[k], MOM[k], x, g, s0, s1, s2, lr, h1, h2, eps, eps_root, c1, c2, gk,
                               1.0 - h1, 1.0 - h2)
        # the previous gradient, where a Jacobian of this level needs it (its slot: hyperfused.kinds)
        if PREV[k] == 0:
            a0 = g
        elif PREV[k] == 1:
            a1 = g
        elif PREV[k] == 2:
            a2 = g
        base = scr + (2 * K + (_STATE_SLOTS + 1) * (k - 1)) * BLOCK
        tl.store(base + r, a0)
        tl.store(base + BLOCK + r, a1)
        tl.store(base + 2 * BLOCK + r, a2)
        tl.store(base + 3 * BLOCK + r, t)
        tl.store(scr + (K + k - 1) * BLOCK + r, xn)
        bad += tl.where(m, tl.where((xn - xn) == 0.0, 0, 1), 0)
        tl.debug_barrier()
    nbad = tl.sum(bad, axis=0)
    tl.store(ok_ptr, (nbad == 0).to(tl.uint8))


@triton.jit
def _tower_commit(tab, scr, ok_ptr, K: tl.constexpr, KINDS: tl.constexpr, LEARN: tl.constexpr,
                  MOM: tl.constexpr, PER: tl.constexpr, UNITS: tl.constexpr, NSTATE: tl.constexpr,
                  NLR: tl.constexpr, NHP: tl.constexpr, PARAM: tl.constexpr, PREV: tl.constexpr,
                  STEPS: tl.constexpr, DT: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    zi = tl.zeros([BLOCK], dtype=tl.int32)
    ok = (zi + tl.load(ok_ptr).to(tl.int32)) != 0
    for k in tl.static_range(1, K + 1):
        m = (r < UNITS[k]) & ok
        # level k-1's raw hyperparameters (its lr vector has NLR[k - 1] entries when per-tensor)
        xn = tl.load(scr + (K + k - 1) * BLOCK + r)
        pos = 0
        if LEARN[k - 1] & 1:
            lp = tl.load(tab + (k - 1) * 8 + 0).to(tl.pointer_type(DT))
            if PER[k - 1]:
                tl.store(lp + r, xn, mask=(r < NLR[k - 1]) & ok)
                pos = NLR[k - 1]
            else:
                tl.store(lp + r * 0, xn, mask=(r == 0) & ok)
                pos = 1
        if LEARN[k - 1] & 2:
            hp = tl.load(tab + (k - 1) * 8 + 1).to(tl.pointer_type(DT))
            tl.store(hp + (r - pos), xn, mask=(r == pos) & ok)
            pos += 1
        if LEARN[k - 1] & 4:
            hp = tl.load(tab + (k - 1) * 8 + 2).to(tl.pointer_type(DT))
            tl.store(hp + (r - pos), xn, mask=(r == pos) & ok)
            pos += 1
        if LEARN[k - 1] & 8:            # level 0's learned decoupled decay (its slot 3)
            hp = tl.load(tab + (k - 1) * 8 + 3).to(tl.pointer_type(DT))
            tl.store(hp + (r - pos), xn, mask=(r == pos) & ok)
        # level k's state, step and valid flag
        base = scr + (2 * K + (_STATE_SLOTS + 1) * (k - 1)) * BLOCK
        if NSTATE[k] >= 1:
            tl.store(tl.load(tab + k * 8 + 3).to(tl.pointer_type(DT)) + r, tl.load(base + r), mask=m)
        if NSTATE[k] >= 2:
            tl.store(tl.load(tab + k * 8 + 4).to(tl.pointer_type(DT)) + r, tl.load(base + BLOCK + r), mask=m)
        if NSTATE[k] >= 3:
            tl.store(tl.load(tab + k * 8 + 5).to(tl.pointer_type(DT)) + r, tl.load(base + 2 * BLOCK + r), mask=m)
        if STEPS[k]:
            sp = tl.load(tab + k * 8 + 6).to(tl.pointer_type(DT))
            tl.store(sp + r * 0, tl.load(base + 3 * BLOCK + r), mask=(r == 0) & ok)
        vp = tl.load(tab + k * 8 + 7).to(tl.pointer_type(tl.uint8))
        tl.store(vp + r * 0, (zi + 1).to(tl.uint8), mask=(r == 0) & ok)


# ------------------------------------------------------------------------------------------------ host side
_TABLES: Dict[tuple, Tensor] = {}
_EPS: Dict[tuple, Tensor] = {}


def _table(levels, specs, device) -> Tensor:
    ptrs = []
    for k, (rec, spec) in enumerate(zip(levels, specs)):
        ptrs.append([0 if t is None else t.data_ptr() for t in level_slots(k, rec, spec)])
    key = (str(device), tuple(map(tuple, ptrs)))
    t = _TABLES.get(key)
    if t is None:
        if len(_TABLES) > 64:
            _TABLES.clear()
        t = _TABLES[key] = _device_table(ptrs, torch.int64, device, "the tower's pointer table").reshape(-1)
    return t


def _eps(specs, device) -> Tensor:
    vals = tuple(e for lv, *_, cfg in specs for e in eps_pair(lv.kind, cfg))     # the two constants per level
    key = (str(device), vals)
    t = _EPS.get(key)
    if t is None:
        t = _EPS[key] = _device_table(vals, torch.float64, device, "the tower's constants")
    return t


def plan(levels, specs, d0_flat: Tensor, finite: Tensor):
    """Tentative tower step (see the module docstring): returns (scratch, ok) on the device."""
    dev, dt = d0_flat.device, levels[0]["hp"]["lr"].dtype
    K = len(specs) - 1
    units = units_of(levels, specs)
    block = max(2, triton.next_power_of_2(max(units)))
    scr = torch.zeros(SCRATCH_ROWS_PER_LEVEL * K * block, dtype=dt, device=dev)
    ok = torch.empty((), dtype=torch.uint8, device=dev)
    tab = _table(levels, specs, dev)
    _launch(_tower_plan, (1,), tab, _eps(specs, dev), d0_flat.contiguous(), finite.reshape(()).view(torch.uint8), scr, ok,
                      K=K, UNITS=units, NLR=_nlr(levels), DT=_TL_DTYPE[dt], BLOCK=block, num_warps=1,
            **shape_of(specs))
    return scr, ok.view(torch.bool)


def commit(levels, specs, scr: Tensor, ok: Tensor) -> None:
    """Write the tentative step where ``ok`` (0-dim bool on the device) is set."""
    dev, dt = scr.device, scr.dtype
    K = len(specs) - 1
    units = units_of(levels, specs)
    block = scr.numel() // (SCRATCH_ROWS_PER_LEVEL * K)
    tab = _table(levels, specs, dev)
    _launch(_tower_commit, (1,), tab, scr, ok.reshape(()).view(torch.uint8), K=K, UNITS=units, NLR=_nlr(levels),
            DT=_TL_DTYPE[dt], BLOCK=block, num_warps=1, **shape_of(specs))
