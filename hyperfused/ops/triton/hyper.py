"""Triton kernels of the hypergradient passes (docs/MATH.md §4, §6): the "triton" backend.

Three functions with the argument lists and results of the compiled ops ``torch.ops.hyperfused.hyper_reduce``,
``hyper_update`` and ``nonfinite_count`` (csrc/ops.cpp declares the schemas; ``hyperfused.ops.fused`` builds
the arguments for every backend), so the op layer calls either with the same arguments:

    hyper_reduce(kind, learn, momentum, eps, grads, s0, s1, s2, scal) -> float64 [n, 4]
    hyper_update(kind, learn, momentum, eps, params, grads, s0, s1, s2, scal, scal_jac, ok) -> float64 [n, 4]
    nonfinite_count(grads) -> float64 [n]

Multi-tensor scheme (one launch per pass, whatever the number of tensors)
-------------------------------------------------------------------------
Every tensor is cut into chunks of ``CHUNK`` elements (the last one shorter; a tensor of 1 element is one
chunk). One program handles one chunk and walks it in ``BLOCK``-element tiles. Its arguments are tables on
the device, so a launch carries any number of tensors:

* a pointer table int64 [5, n]: the addresses of params, grads, s0, s1, s2 of tensor i (0 where absent),
  cast to typed pointers in the kernel;
* ``numel`` int64 [n];
* the block-to-(tensor, offset) map: ``chunk_tensor`` int32 [chunks] and ``chunk_start`` int64 [chunks]
  (64-bit offsets: tensors of 2^31 elements and more), and ``first_chunk`` int32 [n + 1] for the finish.

The map depends only on the tensors' sizes and the pointer table only on their addresses: both are cached on
the device, so a training loop whose tensors keep their storage (the usual case with torch's caching
allocator, and always inside a captured CUDA graph) uploads nothing after its first steps, and nothing in a
step is ever read back to the host.

Reductions are deterministic: each program sums its chunk tile by tile in a fixed order and writes one row of
partial sums (no atomics); the finishing kernel adds a tensor's chunk rows in chunk order in float64.

Bytes per element, fp32 (the model bench/bench_triton.py reports GB/s with; docs/MATH.md §6):
    reduce  reads g (4) and the state J needs: Adam(lr) m, v (+8); Adam(lr, betas) m, v, g_prev (+12);
            SGD g_prev or buf (+4), SGD(lr, mu) buf, buf_prev (+8); Adagrad / RMSprop s, g_prev (+8)
    update  reads x, g, state and writes x, state (+ g_prev where a Jacobian needs it): Adam(lr) 28,
            Adam(lr, betas) 32, SGD(lr) 16, SGD momentum 20 (24 learning mu), Adagrad / RMSprop 24
    one-pass update: the update's bytes plus the reads of the state that J needs and the update does not
            read anyway (the previous gradient), the sums ride on the same tiles.
    nonfinite  reads g (4).

Tiling for Hopper / Ampere (H100 / A100): ``BLOCK`` = 1024 elements per tile at ``num_warps`` = 4 (8
elements per thread: two 16-byte vector accesses per stream for fp32 when the tensors are 16-byte aligned,
which the ``ALIGNED`` specialisation tells the compiler), ``CHUNK`` = 8192 elements per program (8 tiles; a
16M-element step is 2048 programs, about 15 per SM on 132 SMs: enough to hide latency, few partial rows).
The update kernel runs with up to seven streams live, so it keeps ``BLOCK`` at 1024 to stay near 64 registers
per thread. Under the Triton interpreter (``TRITON_INTERPRET=1``, CPU tensors, for tests) tiles are larger
because the interpreter pays per tile, not per element.

The per-element formulas are those of csrc/hyperfused/hyper_math.h (the C++ and CUDA kernels' single
source), written again here in Triton because Triton cannot include C headers; the tests hold both to the
pure-PyTorch reference.
"""
from __future__ import annotations

import operator
import os
import weakref
from operator import attrgetter
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ... import kinds
from ...kinds import COL_DECAY, ROW_COLS, ROW_NONFINITE, TABLE_COLS
from ..fused import _dense
from ..tower_shape import momentum_code, prev_slot

Tensor = torch.Tensor

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# the kinds' ids in the op schemas (hyperfused.kinds); _jac and _step branch on them
SGD, ADAGRAD, RMSPROP, ADAM = (kinds.KINDS[k].id for k in ("sgd", "adagrad", "rmsprop", "adam"))
_TABLE_COLS = tl.constexpr(TABLE_COLS)
_COL_DECAY = tl.constexpr(COL_DECAY)
_ROW_COLS = tl.constexpr(ROW_COLS)

#: tiling: elements per tile, elements per program (a multiple of BLOCK), warps per program
CONFIG = {"BLOCK": 4096 if INTERPRET else 1024, "CHUNK": 16384 if INTERPRET else 8192, "num_warps": 4,
          "FINISH_BLOCK": 256}

#: kernel launches made by this module (for the launch-count report and its test)
LAUNCHES = {"count": 0, "inside": False}


def configure(block: Optional[int] = None, chunk: Optional[int] = None, num_warps: Optional[int] = None) -> None:
    """Change the tiling (tests use small chunks to exercise many chunks per tensor on small tensors)."""
    if block is not None:
        CONFIG["BLOCK"] = int(block)
    if chunk is not None:
        CONFIG["CHUNK"] = int(chunk)
    if num_warps is not None:
        CONFIG["num_warps"] = int(num_warps)
    b, c = CONFIG["BLOCK"], CONFIG["CHUNK"]
    if b <= 0 or b & (b - 1) or c % b:
        raise ValueError(f"BLOCK must be a power of two and CHUNK a multiple of it (got {b}, {c})")
    _MAPS.clear()


# ------------------------------------------------------------------------------------------------ element math
@triton.jit
def _derived(scal_ptr, row, eps_ptr):
    """The per-tensor scalars of one update from its float64 row (lr, h1, h2, raw_lr, dsig1, dsig2, t, flag, ...),
    computed once per program in float64 (bias corrections 1 - b^t and their derivatives t b^(t-1) / c^2; SGD's
    weight of g in a dampened momentum buffer, 1 at the first step)."""
    base = scal_ptr + row * _TABLE_COLS
    lr = tl.load(base + 0)
    h1 = tl.load(base + 1)
    h2 = tl.load(base + 2)
    raw_lr = tl.load(base + 3)
    dsig1 = tl.load(base + 4)
    dsig2 = tl.load(base + 5)
    t = tl.load(base + 6)
    flag = tl.load(base + 7)
    eps = tl.load(eps_ptr)
    eps_root = tl.load(eps_ptr + 1)
    c1, c2, dc1, dc2, r1, r2 = _bias(h1, h2, t, eps_root)
    gk = tl.where(t == 1.0, 1.0, 1.0 - eps)     # SGD (constants [dampening, nesterov]): g's weight in the buffer
    return lr, h1, h2, raw_lr, dsig1, dsig2, c1, c2, dc1, dc2, r1, r2, flag, eps, eps_root, gk


@triton.jit
def _bias(h1, h2, t, v0):
    """Adam's bias corrections 1 - b^t, their derivatives t b^(t-1) / (1 - b^t)^2 and 1 / (b (1 - b^t)) for both
    betas; b^t as exp(t log b) (t is a float step count), and b^(t-1) exactly 1 at t = 1. At t = 1 the beta1
    terms (and the beta2 terms when v starts at v0 = 0) are 0: those Jacobians are exactly 0 (hyper_math.h
    make_scalars)."""
    p1 = tl.exp(t * tl.log(h1))
    p2 = tl.exp(t * tl.log(h2))
    q1 = tl.where(t == 1.0, 1.0, tl.exp((t - 1.0) * tl.log(h1)))
    q2 = tl.where(t == 1.0, 1.0, tl.exp((t - 1.0) * tl.log(h2)))
    c1 = 1.0 - p1
    c2 = 1.0 - p2
    first = t == 1.0
    keep2 = tl.where(v0 == 0.0, 0.0, 1.0)       # (nested, not `first & ...`: scalar bools in the interpreter)
    dc1 = tl.where(first, 0.0, t * q1 / (c1 * c1))
    dc2 = tl.where(first, keep2, 1.0) * (t * q2 / (c2 * c2))
    r1 = tl.where(first, 0.0, 1.0 / (h1 * c1))
    r2 = tl.where(first, keep2, 1.0) * (1.0 / (h2 * c2))
    return c1, c2, dc1, dc2, r1, r2


@triton.jit
def _jac(KIND: tl.constexpr, LEARN: tl.constexpr, MOMENTUM: tl.constexpr, PREV: tl.constexpr, a0, a1, a2,
         lr, h1, h2, raw_lr, dsig1, dsig2, c1, c2, dc1, dc2, r1, r2, eps, eps_root):
    """J_lr, J_h1, J_h2 of the last update at one tile, rebuilt from its state (a0, a1, a2: s0, s1, s2 in the
    math type) and its scalars; hyper_math.h element_jac. Adagrad's and RMSprop's denominator is
    D = R + eps with R = sqrt(s + eps_root). MOMENTUM (SGD): 0 none, 1 plain, 2 dampened, 3 Nesterov's;
    PREV: the slot of the previous gradient."""
    zero = a0 * 0.0
    j0 = zero
    j1 = zero
    j2 = zero
    if KIND == 0 and MOMENTUM == 3:   # SGD, Nesterov's: -(g_prev + mu buf), -lr (buf + mu buf_prev)
        if LEARN & 1:
            if PREV == 2:
                j0 = -(a2 + a0 * h1)
            else:
                j0 = -(a1 + a0 * h1)
        if LEARN & 2:
            j1 = -lr * (a0 + h1 * a1)
    elif KIND == 0:        # SGD: -buf (or -g_prev), and -lr buf_prev for the momentum
        j0 = -a0
        if MOMENTUM:
            if LEARN & 2:
                j1 = -lr * a1
    elif KIND == 1:        # Adagrad: -g_prev / D
        j0 = -a1 / (tl.sqrt(a0 + eps_root) + eps)
    elif KIND == 2:        # RMSprop: -2 a g / D and lr g (s - g^2) / gamma / (2 R D^2) sigma'(q), 0 where R = 0
        R = tl.sqrt(a0 + eps_root)
        rD = 1.0 / (R + eps)
        j0 = -2.0 * raw_lr * a1 * rD
        if LEARN & 2:
            j1 = tl.where(R > 0.0, lr * a1 * ((a0 - a1 * a1) / h1) * (0.5 * rD * rD / R) * dsig1, zero)
    elif KIND == 4:        # Lion: -sign(c) of the last update, kept in s1
        j0 = -a1
    else:                  # Adam
        mh = a0 / c1
        S = tl.sqrt(a1 / c2)
        rden = 1.0 / (S + eps)
        j0 = -(mh * rden)
        if LEARN & 2:
            dmh = (a0 - a2) * r1 + a0 * dc1
            j1 = -lr * dmh * rden * dsig1
        if LEARN & 4:
            dvh = (a1 - a2 * a2) * r2 + a1 * dc2
            term = lr * mh * (rden * rden) / (2.0 * S) * dvh * dsig2
            j2 = tl.where(S > 0.0, term, zero)
    return j0, j1, j2


@triton.jit
def _step(KIND: tl.constexpr, LEARN: tl.constexpr, MOMENTUM: tl.constexpr, x, g, a0, a1, a2,
          lr, h1, h2, eps, eps_root, c1, c2, gk, om1, om2):
    """One update at one tile: the new x and state (a0, a1, a2); hyper_math.h element_update (om1, om2: 1 - h1,
    1 - h2, computed in float64: hyper_math.h row_scalars_of). The previous gradient, where one is kept, is written
    by the caller."""
    if KIND == 0:
        if MOMENTUM == 3:                # Nesterov's (dampening 0)
            a1 = a0
            a0 = a0 * h1 + g
            x = x - (g + a0 * h1) * lr
        elif MOMENTUM == 2:              # dampened: g weighs gk (1 at the first step, 1 - dampening after)
            a1 = a0
            a0 = a0 * h1 + g * gk
            x = x - a0 * lr
        elif MOMENTUM:
            a1 = a0                      # the buffer before this update, for J_momentum
            a0 = a0 * h1 + g
            x = x - a0 * lr
        else:
            x = x - g * lr
    elif KIND == 1:
        a0 = a0 + g * g
        x = x - lr * g / (tl.sqrt(a0 + eps_root) + eps)
    elif KIND == 2:
        a0 = h1 * a0 + om1 * (g * g)
        x = x - lr * g / (tl.sqrt(a0 + eps_root) + eps)
    elif KIND == 4:                      # Lion: s1 keeps sign(c) for J_lr
        c = h1 * a0 + om1 * g
        a1 = tl.where(c > 0.0, 1.0, tl.where(c < 0.0, -1.0, 0.0)).to(a0.dtype)
        a0 = h2 * a0 + om2 * g
        x = x - lr * a1
    else:
        a0 = h1 * a0 + om1 * g
        a1 = h2 * a1 + om2 * g * g
        x = x - lr * ((a0 / c1) / (tl.sqrt(a1 / c2) + eps))
    return x, a0, a1, a2


@triton.jit
def _to_storage(x, X_DT: tl.constexpr):
    """The math value in the parameter's dtype, rounded to nearest even. bfloat16 is rounded on the bits
    (the Triton interpreter truncates in its own conversion; GPUs round to nearest even: this is the same on
    both, and a few integer operations in a memory-bound loop)."""
    if X_DT == tl.bfloat16:
        x32 = x.to(tl.float32)
        bits = x32.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        # a NaN's payload would carry into the exponent (or wrap around to 0): any NaN stores as torch's 0x7FC0
        bits = tl.where(x32 != x32, 0x7FC00000, bits)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(X_DT)


# ------------------------------------------------------------------------------------------------ kernels
@triton.jit
def _chunk_program(ptrs, numel_ptr, chunk_tensor_ptr, chunk_start_ptr, n_tensors, X_DT: tl.constexpr,
                   M_DT: tl.constexpr, ALIGNED: tl.constexpr, CHUNK: tl.constexpr):
    """This program's chunk: its tensor t, [start, end), and the tensor's pointers from the table's rows
    (param, grad, s0, s1, s2; a row the pass does not use holds 0 and is never read)."""
    pid = tl.program_id(0)
    t = tl.load(chunk_tensor_ptr + pid)
    start = tl.multiple_of(tl.load(chunk_start_ptr + pid), CHUNK)   # chunks start at multiples of CHUNK
    end = tl.minimum(tl.load(numel_ptr + t), start + CHUNK)
    xp = tl.load(ptrs + 0 * n_tensors + t).to(tl.pointer_type(X_DT))
    gp = tl.load(ptrs + 1 * n_tensors + t).to(tl.pointer_type(X_DT))
    p0 = tl.load(ptrs + 2 * n_tensors + t).to(tl.pointer_type(M_DT))
    p1 = tl.load(ptrs + 3 * n_tensors + t).to(tl.pointer_type(M_DT))
    p2 = tl.load(ptrs + 4 * n_tensors + t).to(tl.pointer_type(M_DT))
    if ALIGNED:
        xp = tl.multiple_of(xp, 16)
        gp = tl.multiple_of(gp, 16)
        p0 = tl.multiple_of(p0, 16)
        p1 = tl.multiple_of(p1, 16)
        p2 = tl.multiple_of(p2, 16)
    return pid, t, start, end, xp, gp, p0, p1, p2


@triton.jit
def _load_state(p0, p1, p2, offs, m, like, NS0: tl.constexpr, NS1: tl.constexpr, NS2: tl.constexpr):
    """The state arrays a call has (s0, s1, s2) at one tile, in the math type; zeros (shaped like ``like``) for
    a slot it does not have."""
    a0 = like * 0.0
    a1 = like * 0.0
    a2 = like * 0.0
    if NS0:
        a0 = tl.load(p0 + offs, mask=m, other=0.0)
    if NS1:
        a1 = tl.load(p1 + offs, mask=m, other=0.0)
    if NS2:
        a2 = tl.load(p2 + offs, mask=m, other=0.0)
    return a0, a1, a2


@triton.jit
def _reduce_tile(offs, m, gp, p0, p1, p2, inv, valid, acc0, acc1, acc2, bad,
                 lr, h1, h2, raw_lr, dsig1, dsig2, c1, c2, dc1, dc2, r1, r2, eps, eps_root,
                 KIND: tl.constexpr, LEARN: tl.constexpr, MOMENTUM: tl.constexpr, PREV: tl.constexpr,
                 NS0: tl.constexpr, NS1: tl.constexpr, NS2: tl.constexpr, WITH_JAC: tl.constexpr,
                 M_DT: tl.constexpr, SCALED: tl.constexpr):
    """One tile of pass A: the sums of g J and the non-finite count, added to the accumulators. ``m`` is the
    tile's mask: uniform in the main loop (every lane in bounds, so loads are vectorised), per lane at the tail."""
    g = tl.load(gp + offs, mask=m, other=0.0).to(M_DT)
    if SCALED:                                           # GradScaler's 1 / scale, applied as the gradient is read
        g = g * inv
    bad += tl.where((g - g) == 0.0, 0.0, 1.0)
    if WITH_JAC:
        a0, a1, a2 = _load_state(p0, p1, p2, offs, m, g, NS0, NS1, NS2)
        j0, j1, j2 = _jac(KIND, LEARN, MOMENTUM, PREV, a0, a1, a2, lr, h1, h2, raw_lr, dsig1, dsig2, c1, c2, dc1,
                          dc2, r1, r2, eps, eps_root)
        use = m & valid
        acc0 += tl.where(use, g * j0, 0.0)
        acc1 += tl.where(use, g * j1, 0.0)
        acc2 += tl.where(use, g * j2, 0.0)
    return acc0, acc1, acc2, bad


@triton.jit
def _reduce_kernel(ptrs, numel_ptr, chunk_tensor_ptr, chunk_start_ptr, scal_ptr, eps_ptr, inv_scale_ptr, part_ptr,
                   n_tensors, KIND: tl.constexpr, LEARN: tl.constexpr, MOMENTUM: tl.constexpr, PREV: tl.constexpr,
                   NS0: tl.constexpr, NS1: tl.constexpr, NS2: tl.constexpr, WITH_JAC: tl.constexpr,
                   G_DT: tl.constexpr, M_DT: tl.constexpr, ALIGNED: tl.constexpr, SCALED: tl.constexpr,
                   BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """Pass A: one program per chunk writes sum(g J_lr), sum(g J_h1), sum(g J_h2), #non-finite g. The chunk's
    whole tiles run unmasked (vector loads where the tensors are 16-byte aligned), then its partial last tile."""
    pid, t, start, end, _xp, gp, p0, p1, p2 = _chunk_program(ptrs, numel_ptr, chunk_tensor_ptr, chunk_start_ptr,
                                                             n_tensors, G_DT, M_DT, ALIGNED, CHUNK)
    lr, h1, h2, raw_lr, dsig1, dsig2, c1, c2, dc1, dc2, r1, r2, flag, eps64, epsr64, _gk = _derived(
        scal_ptr, t, eps_ptr)
    # the scalars in the math type, once, before the loops
    lr_m, h1_m, h2_m, raw_m = lr.to(M_DT), h1.to(M_DT), h2.to(M_DT), raw_lr.to(M_DT)
    ds1_m, ds2_m, c1_m, c2_m = dsig1.to(M_DT), dsig2.to(M_DT), c1.to(M_DT), c2.to(M_DT)
    dc1_m, dc2_m, r1_m, r2_m = dc1.to(M_DT), dc2.to(M_DT), r1.to(M_DT), r2.to(M_DT)
    eps_m, epsr_m = eps64.to(M_DT), epsr64.to(M_DT)
    zi = tl.zeros([BLOCK], dtype=tl.int32)
    valid = (zi + (flag != 0.0).to(tl.int32)) != 0     # broadcast first: scalar & block fails in the interpreter
    everywhere = zi == 0
    acc0 = tl.zeros([BLOCK], dtype=M_DT)
    acc1 = tl.zeros([BLOCK], dtype=M_DT)
    acc2 = tl.zeros([BLOCK], dtype=M_DT)
    bad = tl.zeros([BLOCK], dtype=tl.float32)
    inv = lr_m
    if SCALED:
        inv = tl.load(inv_scale_ptr).to(M_DT)
    lane = tl.arange(0, BLOCK).to(tl.int64)
    full = (end - start) // BLOCK
    for k in range(0, full):                            # whole tiles: no per-lane bound
        acc0, acc1, acc2, bad = _reduce_tile(
            start + k * BLOCK + lane, everywhere, gp, p0, p1, p2, inv, valid, acc0, acc1, acc2, bad,
            lr_m, h1_m, h2_m, raw_m, ds1_m, ds2_m, c1_m, c2_m, dc1_m, dc2_m, r1_m, r2_m, eps_m, epsr_m,
            KIND, LEARN, MOMENTUM, PREV, NS0, NS1, NS2, WITH_JAC, M_DT, SCALED)
    offs = start + full * BLOCK + lane                  # the partial last tile (an empty mask when there is none)
    acc0, acc1, acc2, bad = _reduce_tile(
        offs, offs < end, gp, p0, p1, p2, inv, valid, acc0, acc1, acc2, bad,
        lr_m, h1_m, h2_m, raw_m, ds1_m, ds2_m, c1_m, c2_m, dc1_m, dc2_m, r1_m, r2_m, eps_m, epsr_m,
        KIND, LEARN, MOMENTUM, PREV, NS0, NS1, NS2, WITH_JAC, M_DT, SCALED)
    out = part_ptr + pid * _ROW_COLS
    tl.store(out + 0, tl.sum(acc0, axis=0).to(tl.float64))
    tl.store(out + 1, tl.sum(acc1, axis=0).to(tl.float64))
    tl.store(out + 2, tl.sum(acc2, axis=0).to(tl.float64))
    tl.store(out + 3, tl.sum(bad, axis=0).to(tl.float64))


@triton.jit
def _update_tile(offs, m, xp, gp, p0, p1, p2, inv, keep, jvalid, acc0, acc1, acc2, bad,
                 lr, h1, h2, eps, eps_root, c1, c2, gk, dec, om1, om2,
                 jlr, jh1, jh2, jraw, jds1, jds2, jc1, jc2, jdc1, jdc2, jr1, jr2,
                 KIND: tl.constexpr, LEARN: tl.constexpr, MOMENTUM: tl.constexpr,
                 NS0: tl.constexpr, NS1: tl.constexpr, NS2: tl.constexpr, PREV: tl.constexpr,
                 ONE_PASS: tl.constexpr, X_DT: tl.constexpr, M_DT: tl.constexpr, SCALED: tl.constexpr):
    """One tile of pass B (``m``: the tile's mask, the step's ``ok`` included): the update in place and, in
    one-pass mode, the sums of g J of the last update from the state before it, added to the accumulators. ``dec``:
    x's factor before the kind's step, 1 - lr wd of a decoupled weight decay (1 without: x * 1 is x)."""
    g = tl.load(gp + offs, mask=m, other=0.0).to(M_DT)
    if SCALED:
        g = g * inv
    x = tl.load(xp + offs, mask=m, other=0.0).to(M_DT) * dec
    a0, a1, a2 = _load_state(p0, p1, p2, offs, m, g, NS0, NS1, NS2)
    if ONE_PASS:
        bad += tl.where((g - g) == 0.0, 0.0, 1.0)
        j0, j1, j2 = _jac(KIND, LEARN, MOMENTUM, PREV, a0, a1, a2, jlr, jh1, jh2, jraw, jds1, jds2, jc1, jc2,
                          jdc1, jdc2, jr1, jr2, eps, eps_root)
        use = m & jvalid
        acc0 += tl.where(use, g * j0, 0.0)
        acc1 += tl.where(use, g * j1, 0.0)
        acc2 += tl.where(use, g * j2, 0.0)
    x, a0, a1, a2 = _step(KIND, LEARN, MOMENTUM, x, g, a0, a1, a2, lr, h1, h2, eps, eps_root, c1, c2, gk, om1, om2)
    tl.store(xp + offs, _to_storage(x, X_DT), mask=m)
    # every state array given is written: the previous gradient's (slot PREV, hyperfused.kinds) with g
    if PREV == 0:
        tl.store(p0 + offs, g, mask=m & keep)
    elif NS0:
        tl.store(p0 + offs, a0, mask=m)
    if PREV == 1:
        tl.store(p1 + offs, g, mask=m & keep)
    elif NS1:
        tl.store(p1 + offs, a1, mask=m)
    if PREV == 2:
        tl.store(p2 + offs, g, mask=m & keep)
    elif NS2:
        tl.store(p2 + offs, a2, mask=m)
    return acc0, acc1, acc2, bad


@triton.jit
def _update_kernel(ptrs, numel_ptr, chunk_tensor_ptr, chunk_start_ptr, scal_ptr, jscal_ptr, eps_ptr, ok_ptr,
                   inv_scale_ptr, part_ptr, n_tensors,
                   KIND: tl.constexpr, LEARN: tl.constexpr, MOMENTUM: tl.constexpr,
                   NS0: tl.constexpr, NS1: tl.constexpr, NS2: tl.constexpr, PREV: tl.constexpr,
                   ONE_PASS: tl.constexpr, X_DT: tl.constexpr, M_DT: tl.constexpr, ALIGNED: tl.constexpr,
                   SCALED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """Pass B: the update in place, nothing written where the device flag ``ok`` is 0; in one-pass mode also
    the next step's sums from the state as it was before this update (partials as in pass A). The chunk's whole
    tiles run with a uniform mask (vector loads and stores where the tensors are 16-byte aligned), then its
    partial last tile."""
    pid, t, start, end, xp, gp, p0, p1, p2 = _chunk_program(ptrs, numel_ptr, chunk_tensor_ptr, chunk_start_ptr,
                                                            n_tensors, X_DT, M_DT, ALIGNED, CHUNK)
    zi = tl.zeros([BLOCK], dtype=tl.int32)
    ok = (zi + tl.load(ok_ptr).to(tl.int32)) != 0      # broadcast first: scalar & block fails in the interpreter
    lr, h1, h2, raw_lr, dsig1, dsig2, c1, c2, _dc1, _dc2, _r1, _r2, store_prev, eps64, epsr64, gk = _derived(
        scal_ptr, t, eps_ptr)
    lr_m, h1_m, h2_m, c1_m, c2_m, gk_m = lr.to(M_DT), h1.to(M_DT), h2.to(M_DT), c1.to(M_DT), c2.to(M_DT), gk.to(M_DT)
    eps_m, epsr_m = eps64.to(M_DT), epsr64.to(M_DT)
    dec_m = 1.0 - tl.load(scal_ptr + t * _TABLE_COLS + _COL_DECAY).to(M_DT)    # (hyper_math.h row_scalars_of)
    om1_m, om2_m = (1.0 - h1).to(M_DT), (1.0 - h2).to(M_DT)       # in float64, rounded once (row_scalars_of)
    keep = (zi + (store_prev != 0.0).to(tl.int32)) != 0
    acc0 = tl.zeros([BLOCK], dtype=M_DT)
    acc1 = tl.zeros([BLOCK], dtype=M_DT)
    acc2 = tl.zeros([BLOCK], dtype=M_DT)
    bad = tl.zeros([BLOCK], dtype=tl.float32)
    jvalid = ok
    # the Jacobian's scalars (one-pass mode; otherwise unused stand-ins)
    jlr, jh1, jh2, jraw, jds1, jds2 = lr_m, h1_m, h2_m, lr_m, lr_m, lr_m
    jc1, jc2, jdc1, jdc2, jr1, jr2 = c1_m, c2_m, lr_m, lr_m, lr_m, lr_m
    if ONE_PASS:
        (jlr64, jh164, jh264, jraw64, jds164, jds264, jc164, jc264, jdc164, jdc264, jr164, jr264, jflag, _e, _er,
         _jgk) = _derived(jscal_ptr, t, eps_ptr)
        jvalid = (zi + (jflag != 0.0).to(tl.int32)) != 0
        jlr, jh1, jh2, jraw = jlr64.to(M_DT), jh164.to(M_DT), jh264.to(M_DT), jraw64.to(M_DT)
        jds1, jds2, jc1, jc2 = jds164.to(M_DT), jds264.to(M_DT), jc164.to(M_DT), jc264.to(M_DT)
        jdc1, jdc2, jr1, jr2 = jdc164.to(M_DT), jdc264.to(M_DT), jr164.to(M_DT), jr264.to(M_DT)
    inv = lr_m
    if SCALED:
        inv = tl.load(inv_scale_ptr).to(M_DT)
    lane = tl.arange(0, BLOCK).to(tl.int64)
    full = (end - start) // BLOCK
    for k in range(0, full):                            # whole tiles: the mask is the step's ok, uniform
        acc0, acc1, acc2, bad = _update_tile(
            start + k * BLOCK + lane, ok, xp, gp, p0, p1, p2, inv, keep, jvalid, acc0, acc1, acc2, bad,
            lr_m, h1_m, h2_m, eps_m, epsr_m, c1_m, c2_m, gk_m, dec_m, om1_m, om2_m,
            jlr, jh1, jh2, jraw, jds1, jds2, jc1, jc2, jdc1, jdc2, jr1, jr2,
            KIND, LEARN, MOMENTUM, NS0, NS1, NS2, PREV, ONE_PASS, X_DT, M_DT, SCALED)
    offs = start + full * BLOCK + lane                  # the partial last tile (an empty mask when there is none)
    acc0, acc1, acc2, bad = _update_tile(
        offs, (offs < end) & ok, xp, gp, p0, p1, p2, inv, keep, jvalid, acc0, acc1, acc2, bad,
        lr_m, h1_m, h2_m, eps_m, epsr_m, c1_m, c2_m, gk_m, dec_m, om1_m, om2_m,
        jlr, jh1, jh2, jraw, jds1, jds2, jc1, jc2, jdc1, jdc2, jr1, jr2,
        KIND, LEARN, MOMENTUM, NS0, NS1, NS2, PREV, ONE_PASS, X_DT, M_DT, SCALED)
    if ONE_PASS:
        out = part_ptr + pid * _ROW_COLS
        tl.store(out + 0, tl.sum(acc0, axis=0).to(tl.float64))
        tl.store(out + 1, tl.sum(acc1, axis=0).to(tl.float64))
        tl.store(out + 2, tl.sum(acc2, axis=0).to(tl.float64))
        tl.store(out + 3, tl.sum(bad, axis=0).to(tl.float64))


@triton.jit
def _finish_kernel(part_ptr, first_chunk_ptr, out_ptr, FB: tl.constexpr):
    """Per tensor: its chunks' partial rows added in chunk order (float64), FB rows at a time."""
    t = tl.program_id(0)
    lo = tl.load(first_chunk_ptr + t)
    hi = tl.load(first_chunk_ptr + t + 1)
    r = tl.arange(0, FB)
    s0 = tl.zeros([FB], dtype=tl.float64)
    s1 = tl.zeros([FB], dtype=tl.float64)
    s2 = tl.zeros([FB], dtype=tl.float64)
    s3 = tl.zeros([FB], dtype=tl.float64)
    for k in range(lo, hi, FB):
        rows = k + r
        m = rows < hi
        s0 += tl.load(part_ptr + rows * _ROW_COLS + 0, mask=m, other=0.0)
        s1 += tl.load(part_ptr + rows * _ROW_COLS + 1, mask=m, other=0.0)
        s2 += tl.load(part_ptr + rows * _ROW_COLS + 2, mask=m, other=0.0)
        s3 += tl.load(part_ptr + rows * _ROW_COLS + 3, mask=m, other=0.0)
    tl.store(out_ptr + t * _ROW_COLS + 0, tl.sum(s0, axis=0))
    tl.store(out_ptr + t * _ROW_COLS + 1, tl.sum(s1, axis=0))
    tl.store(out_ptr + t * _ROW_COLS + 2, tl.sum(s2, axis=0))
    tl.store(out_ptr + t * _ROW_COLS + 3, tl.sum(s3, axis=0))


# ------------------------------------------------------------------------------------------------ host side
_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
             torch.bfloat16: tl.bfloat16}

# (device, sizes, CHUNK) -> (chunk_tensor, chunk_start, first_chunk, numel): the block-to-(tensor, offset) map
_MAPS: Dict[tuple, Tuple[Tensor, Tensor, Tensor, Tensor]] = {}
# (device, addresses) -> pointer table; a few entries (the addresses of alternating gradient buffers)
_PTRS: Dict[tuple, Tensor] = {}
_CACHE_MAX = 64


def _chunk_map(device, sizes: Tuple[int, ...]):
    chunk = CONFIG["CHUNK"]
    key = (str(device), sizes, chunk)
    hit = _MAPS.get(key)
    if hit is not None:
        return hit
    tensor_of, start_of, first = [], [], [0]
    for i, n in enumerate(sizes):
        k = max(1, -(-n // chunk))
        tensor_of.extend([i] * k)
        start_of.extend(range(0, k * chunk, chunk))
        first.append(first[-1] + k)
    out = (_device_table(tensor_of, torch.int32, device, "the chunk map"),
           _device_table(start_of, torch.int64, device, "the chunk map"),
           _device_table(first, torch.int32, device, "the chunk map"),
           _device_table(sizes, torch.int64, device, "the chunk map"))
    if len(_MAPS) >= _CACHE_MAX:
        _MAPS.clear()
    _MAPS[key] = out
    return out


def _pointer_table(device, lists: Sequence[Sequence[Tensor]], n: int,
                   known: Optional[Dict[int, tuple]] = None) -> Tuple[Tensor, bool]:
    """The launch's pointer table on the device (cached per address set) and whether every address is 16-byte
    aligned (the kernels' vector accesses). ``known``: addresses already read, by the id of their list."""
    known = known or {}
    addrs = tuple(known.get(id(lst)) or tuple(map(Tensor.data_ptr, lst)) if lst else (0,) * n for lst in lists)
    key = (str(device), addrs)
    hit = _PTRS.get(key)
    if hit is not None:
        return hit
    aligned = all(a % 16 == 0 for lst in addrs for a in lst)
    table = _device_table(addrs, torch.int64, device, "the pointer table")
    if len(_PTRS) >= _CACHE_MAX:
        _PTRS.clear()
    _PTRS[key] = (table, aligned)
    return table, aligned


_EPS: Dict[tuple, Tensor] = {}


def _eps_tensor(eps: Sequence[float], device) -> Tensor:
    """The ops' eps argument [eps, eps_root] as float64 values on the device (a float argument would reach the
    kernel as float32)."""
    vals = tuple(float(e) for e in eps)
    if len(vals) != 2:
        raise ValueError(f"eps must be [eps, eps_root], got {list(eps)!r}")
    key = (vals, str(device))
    t = _EPS.get(key)
    if t is None:
        t = _EPS[key] = _device_table(vals, torch.float64, device, "the constants")
    return t


_DTYPE, _DEVICE = attrgetter("dtype"), attrgetter("device")


def _check_table(op: str, scal: Tensor, n: int) -> None:
    if scal.dtype != torch.float64 or scal.dim() != 2 or scal.shape[0] != n or scal.shape[1] != TABLE_COLS \
            or not scal.is_contiguous():
        raise ValueError(f"{op}: scalars must be a contiguous float64 tensor of shape [{n}, {TABLE_COLS}]")


# Lists of parameters and state that fitted gradients of given sizes, per (dtypes, device, first tensors): weak
# references to every tensor, their addresses and version counters then. The same tensor objects at the same
# addresses with the same versions keep their sizes, strides, dtype and device (a new storage, as ``p.data = ...``
# or ``.to()`` give, has a new address; an in-place change of the layout, t_(), resize_(), set_(), moves the
# version; the kernels' own writes do not): the step's parameters and state are checked once, the gradients (new
# tensors each step) every call.
_FITTED: Dict[tuple, tuple] = {}
_DEREF = weakref.ref.__call__
_VERSION = attrgetter("_version")


def _same_tensors(refs, lst) -> bool:
    return len(refs) == len(lst) and all(map(operator.is_, map(_DEREF, refs), lst))


def _lists_fit(grads, params, s0, s1, s2, math_dt, known: Optional[Dict[int, tuple]] = None) -> bool:
    """Whether the tensors fit the kernels, checked a property at a time over each whole list (maps of C methods:
    about 1 us per tensor instead of the 4 of a Python loop over the tensors, which costs milliseconds a step at
    1000 tensors); parameters and state already found to fit, at the same addresses, are not checked again
    (``_FITTED``). False sends the call to ``_check``'s loop, which names the offending tensor (or accepts
    non-contiguous dense gradients, which this path leaves to it). ``known`` gets the addresses read here, by the
    id of their list."""
    dt, dev = grads[0].dtype, grads[0].device
    if dt not in _TL_DTYPE or set(map(_DTYPE, grads)) != {dt} or set(map(_DEVICE, grads)) != {dev} \
            or not all(map(Tensor.is_contiguous, grads)):
        return False
    sizes = list(map(Tensor.size, grads))
    lists = (params, s0, s1, s2)
    key = (dt, dev, math_dt) + tuple(id(lst[0]) if lst else 0 for lst in lists)
    hit = _FITTED.get(key)
    addrs = [tuple(map(Tensor.data_ptr, lst)) for lst in lists]
    if known is not None:                   # (for the pointer table)
        known.update((id(lst), a) for lst, a in zip(lists, addrs) if lst)
    if hit is not None and hit[0] == sizes and hit[2] == addrs and all(map(_same_tensors, hit[1], lists)) \
            and hit[3] == [tuple(map(_VERSION, lst)) for lst in lists]:
        return True
    strides = list(map(Tensor.stride, grads))
    for lst, want in ((params, dt), (s0, math_dt), (s1, math_dt), (s2, math_dt)):
        if lst and (list(map(Tensor.size, lst)) != sizes or list(map(Tensor.stride, lst)) != strides
                    or set(map(_DTYPE, lst)) != {want} or set(map(_DEVICE, lst)) != {dev}):
            return False
    if len(_FITTED) >= _CACHE_MAX:
        _FITTED.clear()
    _FITTED[key] = (sizes, [list(map(weakref.ref, lst)) for lst in lists], addrs,
                    [tuple(map(_VERSION, lst)) for lst in lists])
    return True


def _check(op: str, grads, params, s0, s1, s2, scal, math_dt) -> Dict[int, tuple]:
    """Refuses, naming the tensor and the problem, what the kernels cannot take. Returns the addresses it read, by
    the id of their list (for ``_pointer_table``)."""
    n = len(grads)
    if params and len(params) != n:
        raise ValueError(f"{op}: {len(params)} params for {n} grads")
    for lst in (s0, s1, s2):
        if lst and len(lst) != n:
            raise ValueError(f"{op}: a state list has {len(lst)} tensors for {n} grads")
    _check_table(op, scal, n)
    dev = grads[0].device
    if dev.type == "cpu" and not INTERPRET:
        raise RuntimeError(f"{op}: the Triton kernels run on CUDA tensors; CPU tensors need the Triton "
                           f"interpreter (set TRITON_INTERPRET=1 before importing hyperfused)")
    known: Dict[int, tuple] = {}
    if _lists_fit(grads, params, s0, s1, s2, math_dt, known):
        return known
    for i, g in enumerate(grads):
        if g.dtype not in _TL_DTYPE:
            raise TypeError(f"{op}: gradient {i} has dtype {g.dtype}; the kernels take float32, float64, "
                            f"float16 and bfloat16")
        if g.dtype != grads[0].dtype:
            raise ValueError(f"{op}: all gradients of one call must share one dtype")
        if g.device != dev or not g.is_contiguous() and not _dense(g):
            raise ValueError(f"{op}: gradient {i} must be a dense tensor on {dev}")
        if params and (params[i].shape != g.shape or params[i].stride() != g.stride()
                       or params[i].dtype != g.dtype or params[i].device != dev):
            raise ValueError(f"{op}: parameter {i} must have the gradient's shape, strides, dtype and device")
        for lst in (s0, s1, s2):
            if lst and (lst[i].shape != g.shape or lst[i].stride() != g.stride() or lst[i].dtype != math_dt
                        or lst[i].device != dev):
                raise ValueError(f"{op}: state tensor {i} must have the gradient's shape, strides and device and "
                                 f"dtype {math_dt} (got {lst[i].dtype} on {lst[i].device})")
    return {}


def _math_dtype(dt: torch.dtype) -> torch.dtype:
    return torch.float64 if dt == torch.float64 else torch.float32


def _launch(kernel, grid, *args, **kw):
    """Launch on the device of the tensors (the first tensor argument's): Triton launches on the current CUDA
    device, which need not be theirs (tensors on cuda:1 while cuda:0 is current)."""
    LAUNCHES["count"] += 1
    LAUNCHES["inside"] = True        # what the interpreter does with the arguments is not the step's own work
    try:
        dev = next((a.device for a in args if isinstance(a, Tensor)), None)
        if dev is not None and dev.type == "cuda" and dev.index is not None \
                and dev.index != torch.cuda.current_device():
            with torch.cuda.device(dev):
                kernel[grid](*args, **kw)
        else:
            kernel[grid](*args, **kw)
    finally:
        LAUNCHES["inside"] = False


def _device_table(values, dtype: torch.dtype, device, what: str = "a launch table") -> Tensor:
    """A small table built on the host and copied to ``device`` once (the callers cache it per layout). While a
    CUDA graph is being captured such a copy cannot be captured: refused, with the remedy, instead of failing
    inside CUDA."""
    host = torch.tensor(values, dtype=dtype)
    dev = torch.device(device)
    if dev.type != "cuda":
        return host.to(dev)
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            f"hyperfused (triton backend): {what} for these tensors is not cached yet while a CUDA graph is being "
            f"captured, and a copy from host memory cannot be captured. Run an eager step with the same parameters "
            f"and gradient buffers before capturing (the warm-up torch.cuda.graph asks for)")
    return host.pin_memory().to(dev, non_blocking=True)


def _finish(part: Tensor, first: Tensor, n: int) -> Tensor:
    out = torch.empty(n, ROW_COLS, dtype=torch.float64, device=part.device)
    _launch(_finish_kernel, (n,), part, first, out, FB=CONFIG["FINISH_BLOCK"])
    return out


def _check_inv_scale(op: str, inv_scale: Optional[Tensor], device) -> None:
    if inv_scale is not None and (inv_scale.numel() != 1 or inv_scale.dtype != torch.float64
                                  or inv_scale.device != torch.device(device)):
        raise ValueError(f"{op}: inv_scale must be a one-element float64 tensor on {device}, got "
                         f"{inv_scale.dtype} of {inv_scale.numel()} elements on {inv_scale.device}")


def hyper_reduce(kind: int, learn: int, momentum: bool, eps: Sequence[float], grads: List[Tensor], s0: List[Tensor],
                 s1: List[Tensor], s2: List[Tensor], scal: Tensor, inv_scale: Optional[Tensor] = None) -> Tensor:
    """Pass A (same arguments and result as ``torch.ops.hyperfused.hyper_reduce``)."""
    n = len(grads)
    if int(kind) not in kinds.BY_ID:
        raise ValueError(f"kind must be an id of the kinds table (0 to {len(kinds.BY_ID) - 1}), got {kind}")
    if n == 0:
        return torch.zeros(0, ROW_COLS, dtype=torch.float64, device=scal.device)
    mdt = _math_dtype(grads[0].dtype)
    known = _check("hyper_reduce", grads, [], s0, s1, s2, scal, mdt)
    dev = grads[0].device
    _check_inv_scale("hyper_reduce", inv_scale, dev)
    ct, cs, first, numel = _chunk_map(dev, tuple(map(Tensor.numel, grads)))
    ptrs, aligned = _pointer_table(dev, ([], grads, s0, s1, s2), n, known)
    chunks = ct.numel()
    part = torch.empty(chunks, ROW_COLS, dtype=torch.float64, device=dev)
    epst = _eps_tensor(eps, dev)
    _launch(_reduce_kernel, (chunks,), ptrs, numel, ct, cs, scal, epst, epst if inv_scale is None else inv_scale,
            part, n,
            KIND=int(kind), LEARN=int(learn), MOMENTUM=momentum_code(kind, momentum, eps),
            PREV=prev_slot(kind, learn, momentum, eps),
            NS0=bool(s0), NS1=bool(s1), NS2=bool(s2), WITH_JAC=bool(learn),
            G_DT=_TL_DTYPE[grads[0].dtype], M_DT=_TL_DTYPE[mdt], ALIGNED=aligned,
            SCALED=inv_scale is not None,
            BLOCK=CONFIG["BLOCK"], CHUNK=CONFIG["CHUNK"], num_warps=CONFIG["num_warps"])
    return _finish(part, first, n)


def hyper_update(kind: int, learn: int, momentum: bool, eps: Sequence[float], params: List[Tensor], grads: List[Tensor],
                 s0: List[Tensor], s1: List[Tensor], s2: List[Tensor], scal: Tensor, scal_jac: Optional[Tensor],
                 ok: Tensor, inv_scale: Optional[Tensor] = None) -> Tensor:
    """Pass B (same arguments and result as ``torch.ops.hyperfused.hyper_update``): in place on params and
    state where the 0-dim device flag ``ok`` is true; with ``scal_jac`` (one-pass mode) also pass A's sums
    from the state before the update."""
    n = len(grads)
    if int(kind) not in kinds.BY_ID:
        raise ValueError(f"kind must be an id of the kinds table (0 to {len(kinds.BY_ID) - 1}), got {kind}")
    if n == 0:
        return torch.zeros(0, ROW_COLS, dtype=torch.float64, device=scal.device)
    if not params:
        raise ValueError("hyper_update: params are required")
    mdt = _math_dtype(grads[0].dtype)
    known = _check("hyper_update", grads, params, s0, s1, s2, scal, mdt)
    one_pass = scal_jac is not None
    if one_pass:
        _check_table("hyper_update", scal_jac, n)
    if ok.numel() != 1 or ok.dtype != torch.bool:
        raise ValueError("hyper_update: ok must be a 0-dim bool tensor")
    dev = grads[0].device
    _check_inv_scale("hyper_update", inv_scale, dev)
    ct, cs, first, numel = _chunk_map(dev, tuple(map(Tensor.numel, grads)))
    ptrs, aligned = _pointer_table(dev, (params, grads, s0, s1, s2), n, known)
    chunks = ct.numel()
    part = torch.empty(chunks if one_pass else 1, ROW_COLS, dtype=torch.float64, device=dev)
    # which state list holds the previous gradient (written where column COL_VALID of the table says so)
    prev = prev_slot(kind, learn, momentum, eps)
    epst = _eps_tensor(eps, dev)
    _launch(_update_kernel, (chunks,), ptrs, numel, ct, cs, scal, scal_jac if one_pass else scal, epst,
            ok.reshape(()).view(torch.uint8), epst if inv_scale is None else inv_scale, part, n,
            KIND=int(kind), LEARN=int(learn), MOMENTUM=momentum_code(kind, momentum, eps),
            NS0=bool(s0), NS1=bool(s1), NS2=bool(s2), PREV=prev, ONE_PASS=one_pass,
            X_DT=_TL_DTYPE[grads[0].dtype], M_DT=_TL_DTYPE[mdt], ALIGNED=aligned,
            SCALED=inv_scale is not None,
            BLOCK=CONFIG["BLOCK"], CHUNK=CONFIG["CHUNK"], num_warps=CONFIG["num_warps"])
    if not one_pass:
        return torch.zeros(n, ROW_COLS, dtype=torch.float64, device=dev)
    return _finish(part, first, n)


def nonfinite_count(grads: List[Tensor]) -> Tensor:
    """Non-finite elements per gradient (float64 [n]): one read of the gradients."""
    n = len(grads)
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    scal = torch.zeros(n, TABLE_COLS, dtype=torch.float64, device=grads[0].device)
    return hyper_reduce(SGD, 0, False, (0.0, 0.0), grads, [], [], [], scal)[:, ROW_NONFINITE]
