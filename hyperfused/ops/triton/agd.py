"""Triton kernels of Automatic Gradient Descent (docs/MATH.md §7): the "triton" backend of hf.AGD.

Same arguments and results as the compiled ops (csrc/ops.cpp):

    agd_sumsq(grads, slices) -> float64 [sum of slices]      pass A: per-slice sums of squares
    agd_update(params, grads, coef, ok=None) -> None         pass B: W -= coef[slice] * g, nowhere if not ok
    agd_gv(grads, vs) -> (sumsq, [g v])                      spectral pass A: g v and the sums of squares
    agd_gtu(grads, us) -> [g^T u]                            the other half-iteration
    agd_normalize_rows(xs, dsts) -> float64 [rows]           dsts[t][r] = xs[t][r] / |xs[t][r]| (kept if 0)

Layout. A weight is a matrix (one slice) or a contiguous (d_out, d_in, kh, kw) kernel with S = kh*kw slices;
element f of the flat tensor is row f // S (the pair (o, i)) and slice f % S. The kernels load 2-D tiles of
[rows, SP] (SP = S rounded up to a power of two, columns past S masked), so a sum over the rows is a per-slice
sum with no scatter; consecutive rows are consecutive memory, so the loads stay coalesced.

Multi-tensor as in hyper.py: one launch per pass for every tensor, with a pointer table, a chunk map of
(tensor, first row) and fixed-order partial sums combined by a finishing kernel (deterministic, no atomics).
The spectral half-iterations run one program per block of output rows (g v: rows o of every slice; g^T u:
columns i, and, where a tensor has few columns, per range of rows, whose partial sums a finishing kernel adds in
range order: ``gtu_plan``), each looping over the other dimension in a fixed order: deterministic.

Bytes per element (fp32 gradient): sumsq reads g (4); update reads w, g and writes w (12): AGD's 16 B/param.
gv reads g (4, v is O(d_in) per slice); gtu reads g again (4).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .hyper import INTERPRET, _TL_DTYPE, _device_table, _launch, _pointer_table

Tensor = torch.Tensor

#: rows per tile and per program of the Frobenius passes, output rows per program of the spectral ones
AGD_CONFIG = {"ROWS": 1024 if INTERPRET else 256, "CHUNK_ROWS": 8192 if INTERPRET else 2048, "num_warps": 4,
              "BO": 64 if INTERPRET else 16, "BI": 256 if INTERPRET else 64, "FB": 256,
              # g^T u: a tensor whose column programs are fewer than GTU_PROGRAMS has its rows split into ranges
              # of at least GTU_MIN_ROWS rows, one program each (gtu_plan)
              "GTU_PROGRAMS": 1024, "GTU_MIN_ROWS": 256}


@triton.jit
def _sumsq_kernel(ptrs, rows_ptr, slices_ptr, chunk_tensor_ptr, chunk_row_ptr, part_ptr,
                  G_DT: tl.constexpr, SP: tl.constexpr, ROWS: tl.constexpr, CHUNK_ROWS: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if G_DT == tl.float64 else tl.float32    # float64 sums for float64 grads
    pid = tl.program_id(0)
    t = tl.load(chunk_tensor_ptr + pid)
    r0 = tl.load(chunk_row_ptr + pid)
    nrows = tl.load(rows_ptr + t)
    S = tl.load(slices_ptr + t)
    end = tl.minimum(nrows, r0 + CHUNK_ROWS)
    gp = tl.load(ptrs + t).to(tl.pointer_type(G_DT))
    r = tl.arange(0, ROWS).to(tl.int64)
    c = tl.arange(0, SP)
    acc = tl.zeros([ROWS, SP], dtype=ACC)
    for k in range(0, tl.cdiv(end - r0, ROWS)):
        rows = r0 + k * ROWS + r
        m = (rows < end)[:, None] & (c < S)[None, :]
        g = tl.load(gp + rows[:, None] * S + c[None, :], mask=m, other=0.0).to(ACC)
        acc += g * g
    tl.store(part_ptr + pid * SP + c, tl.sum(acc, axis=0).to(tl.float64))


@triton.jit
def _sumsq_finish(part_ptr, first_chunk_ptr, slices_ptr, offset_ptr, out_ptr, SP: tl.constexpr, FB: tl.constexpr):
    t = tl.program_id(0)
    lo = tl.load(first_chunk_ptr + t)
    hi = tl.load(first_chunk_ptr + t + 1)
    S = tl.load(slices_ptr + t)
    off = tl.load(offset_ptr + t)
    r = tl.arange(0, FB)
    c = tl.arange(0, SP)
    acc = tl.zeros([FB, SP], dtype=tl.float64)
    for k in range(lo, hi, FB):
        rows = k + r
        acc += tl.load(part_ptr + rows[:, None] * SP + c[None, :], mask=(rows < hi)[:, None], other=0.0)
    tl.store(out_ptr + off + c, tl.sum(acc, axis=0), mask=c < S)


@triton.jit
def _update_kernel(ptrs, n_tensors, rows_ptr, slices_ptr, offset_ptr, chunk_tensor_ptr, chunk_row_ptr, coef_ptr,
                   ok_ptr, X_DT: tl.constexpr, SP: tl.constexpr, ROWS: tl.constexpr, CHUNK_ROWS: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(chunk_tensor_ptr + pid)
    r0 = tl.load(chunk_row_ptr + pid)
    nrows = tl.load(rows_ptr + t)
    S = tl.load(slices_ptr + t)
    off = tl.load(offset_ptr + t)
    end = tl.minimum(nrows, r0 + CHUNK_ROWS)
    xp = tl.load(ptrs + t).to(tl.pointer_type(X_DT))
    gp = tl.load(ptrs + n_tensors + t).to(tl.pointer_type(X_DT))
    r = tl.arange(0, ROWS).to(tl.int64)
    c = tl.arange(0, SP)
    cmask = c < S
    zi = tl.zeros([SP], dtype=tl.int32)
    okv = (zi + tl.load(ok_ptr).to(tl.int32)) != 0
    coef = tl.load(coef_ptr + off + c, mask=cmask, other=0.0)
    for k in range(0, tl.cdiv(end - r0, ROWS)):
        rows = r0 + k * ROWS + r
        m = (rows < end)[:, None] & (cmask & okv)[None, :]
        idx = rows[:, None] * S + c[None, :]
        g = tl.load(gp + idx, mask=m, other=0.0)
        x = tl.load(xp + idx, mask=m, other=0.0)
        if X_DT == tl.float64:
            xn = x - coef[None, :] * g
        else:
            xn = x.to(tl.float32) - coef.to(tl.float32)[None, :] * g.to(tl.float32)
        if X_DT == tl.bfloat16:       # round to nearest even on the bits (as hyper.py's _to_storage)
            bits = xn.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            tl.store(xp + idx, (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=m)
        else:
            tl.store(xp + idx, xn.to(X_DT), mask=m)


@triton.jit
def _mat_program(ptrs, n_tensors, dout_ptr, din_ptr, slices_ptr, prog_tensor_ptr, prog_start_ptr,
                 G_DT: tl.constexpr):
    """This program's tensor: its first row (g v) or column (g^T u), d_out, d_in, S, and the pointers of the
    gradient, the input vectors and the output (the pointer table's three rows)."""
    pid = tl.program_id(0)
    t = tl.load(prog_tensor_ptr + pid)
    start = tl.load(prog_start_ptr + pid)
    gp = tl.load(ptrs + t).to(tl.pointer_type(G_DT))
    vp = tl.load(ptrs + n_tensors + t).to(tl.pointer_type(tl.float64))
    op = tl.load(ptrs + 2 * n_tensors + t).to(tl.pointer_type(tl.float64))
    return pid, start, tl.load(dout_ptr + t), tl.load(din_ptr + t), tl.load(slices_ptr + t), gp, vp, op


@triton.jit
def _gv_kernel(ptrs, n_tensors, dout_ptr, din_ptr, slices_ptr, prog_tensor_ptr, prog_row_ptr, part_ptr,
               G_DT: tl.constexpr, SP: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr):
    """g v for output rows [o0, o0 + BO) of every slice of one tensor (float64 out (S, d_out)), and those
    rows' per-slice sums of squares (a partial row per program)."""
    ACC: tl.constexpr = tl.float64 if G_DT == tl.float64 else tl.float32
    pid, o0, dout, din, S, gp, vp, op = _mat_program(ptrs, n_tensors, dout_ptr, din_ptr, slices_ptr,
                                                     prog_tensor_ptr, prog_row_ptr, G_DT)
    o = o0 + tl.arange(0, BO).to(tl.int64)
    i0 = tl.arange(0, BI).to(tl.int64)
    c = tl.arange(0, SP)
    acc = tl.zeros([BO, SP], dtype=tl.float64)
    sq = tl.zeros([BO, BI, SP], dtype=ACC)
    for k in range(0, tl.cdiv(din, BI)):
        i = k * BI + i0
        m = (o < dout)[:, None, None] & (i < din)[None, :, None] & (c < S)[None, None, :]
        idx = (o[:, None, None] * din + i[None, :, None]) * S + c[None, None, :]
        g = tl.load(gp + idx, mask=m, other=0.0).to(ACC)
        vm = (i < din)[:, None] & (c < S)[None, :]
        v = tl.load(vp + c[None, :] * din + i[:, None], mask=vm, other=0.0)      # v[s, i] as [BI, SP]
        acc += tl.sum(g.to(tl.float64) * v[None, :, :], axis=1)
        sq += g * g
    om = (o < dout)[:, None] & (c < S)[None, :]
    tl.store(op + c[None, :] * dout + o[:, None], acc, mask=om)
    tl.store(part_ptr + pid * SP + c, tl.sum(tl.sum(sq, axis=1), axis=0).to(tl.float64))


@triton.jit
def _gtu_kernel(ptrs, n_tensors, dout_ptr, din_ptr, slices_ptr, prog_tensor_ptr, prog_col_ptr, prog_row_ptr,
                rows_ptr, part_ptr, G_DT: tl.constexpr, SP: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr):
    """g^T u over one range of rows [r0, r0 + rows) for columns [i0, i0 + BI) of every slice of one tensor: this
    program's partial [BI, SP] (float64), added over the ranges by ``_gtu_finish``."""
    pid, i0, dout, din, S, gp, up, _op = _mat_program(ptrs, n_tensors, dout_ptr, din_ptr, slices_ptr,
                                                      prog_tensor_ptr, prog_col_ptr, G_DT)
    r0 = tl.load(prog_row_ptr + pid)
    rows = tl.load(rows_ptr + tl.load(prog_tensor_ptr + pid))
    r1 = tl.minimum(dout, r0 + rows)
    i = i0 + tl.arange(0, BI).to(tl.int64)
    ob = tl.arange(0, BO).to(tl.int64)
    c = tl.arange(0, SP)
    acc = tl.zeros([BI, SP], dtype=tl.float64)
    for k in range(0, tl.cdiv(r1 - r0, BO)):
        o = r0 + k * BO + ob
        m = (o < r1)[:, None, None] & (i < din)[None, :, None] & (c < S)[None, None, :]
        idx = (o[:, None, None] * din + i[None, :, None]) * S + c[None, None, :]
        g = tl.load(gp + idx, mask=m, other=0.0).to(tl.float64)
        um = (o < r1)[:, None] & (c < S)[None, :]
        u = tl.load(up + c[None, :] * dout + o[:, None], mask=um, other=0.0)      # u[s, o] as [BO, SP]
        acc += tl.sum(g * u[:, None, :], axis=0)
    cell = tl.arange(0, BI)[:, None] * SP + c[None, :]
    tl.store(part_ptr + pid * (BI * SP) + cell, acc)


@triton.jit
def _gtu_finish(ptrs, n_tensors, dout_ptr, din_ptr, slices_ptr, fin_tensor_ptr, fin_col_ptr, fin_first_ptr,
                ranges_ptr, part_ptr, G_DT: tl.constexpr, SP: tl.constexpr, BI: tl.constexpr):
    """g^T u for columns [i0, i0 + BI) of one tensor: its row ranges' partials added in range order (float64 out
    (S, d_in))."""
    pid, i0, _dout, din, S, _gp, _up, op = _mat_program(ptrs, n_tensors, dout_ptr, din_ptr, slices_ptr,
                                                        fin_tensor_ptr, fin_col_ptr, G_DT)
    first = tl.load(fin_first_ptr + pid)
    ranges = tl.load(ranges_ptr + tl.load(fin_tensor_ptr + pid))
    c = tl.arange(0, SP)
    cell = tl.arange(0, BI)[:, None] * SP + c[None, :]
    acc = tl.zeros([BI, SP], dtype=tl.float64)
    for z in range(0, ranges):
        acc += tl.load(part_ptr + (first + z) * (BI * SP) + cell)
    i = i0 + tl.arange(0, BI).to(tl.int64)
    im = (i < din)[:, None] & (c < S)[None, :]
    tl.store(op + c[None, :] * din + i[:, None], acc, mask=im)


# ------------------------------------------------------------------------------------------------ host side
_MAPS: Dict[tuple, tuple] = {}


def _sp(slices: Sequence[int]) -> int:
    return triton.next_power_of_2(max(slices))


def _row_map(device, rows: Tuple[int, ...], slices: Tuple[int, ...]):
    chunk = AGD_CONFIG["CHUNK_ROWS"]
    key = ("rows", str(device), rows, slices, chunk)
    hit = _MAPS.get(key)
    if hit is None:
        tensor_of, row_of, first, offset = [], [], [0], [0]
        for i, (n, s) in enumerate(zip(rows, slices)):
            k = max(1, -(-n // chunk))
            tensor_of += [i] * k
            row_of += list(range(0, k * chunk, chunk))
            first.append(first[-1] + k)
            offset.append(offset[-1] + s)
        hit = _MAPS[key] = tuple(_device_table(v, d, device) for v, d in (
            (tensor_of, torch.int32), (row_of, torch.int64), (first, torch.int32), (list(rows), torch.int64),
            (list(slices), torch.int32), (offset[:-1], torch.int64))) + (offset[-1],)
    return hit


def _block_map(device, extents: Tuple[int, ...], block: int):
    key = ("blocks", str(device), extents, block)
    hit = _MAPS.get(key)
    if hit is None:
        tensor_of, start_of = [], []
        for i, n in enumerate(extents):
            k = max(1, -(-n // block))
            tensor_of += [i] * k
            start_of += list(range(0, k * block, block))
        hit = _MAPS[key] = (_device_table(tensor_of, torch.int32, device),
                            _device_table(start_of, torch.int64, device))
    return hit


def _check(op: str, grads: Sequence[Tensor], slices: Sequence[int]) -> None:
    if len(grads) != len(slices):
        raise ValueError(f"{op}: {len(grads)} gradients but {len(slices)} slice counts")
    for i, (g, s) in enumerate(zip(grads, slices)):
        if g.dtype not in _TL_DTYPE:
            raise TypeError(f"{op}: gradient {i} has dtype {g.dtype}; the kernels take float32, float64, float16 "
                            f"and bfloat16")
        if not g.is_contiguous():
            raise ValueError(f"{op}: gradient {i} must be contiguous")
        if s < 1 or g.numel() % s:
            raise ValueError(f"{op}: gradient {i} of {g.numel()} elements cannot have {s} slices")
        if g.dtype != grads[0].dtype:
            raise ValueError(f"{op}: all gradients of one call must share one dtype")


def agd_sumsq(grads: List[Tensor], slices: List[int]) -> Tensor:
    """Per tensor, the sums of squares of its slices (float64, concatenated in tensor order)."""
    grads, slices = list(grads), [int(s) for s in slices]
    if not grads:
        return torch.zeros(0, dtype=torch.float64)
    _check("agd_sumsq", grads, slices)
    dev = grads[0].device
    rows = tuple(g.numel() // s for g, s in zip(grads, slices))
    ct, cr, first, nrows, sl, off, total = _row_map(dev, rows, tuple(slices))
    SP = _sp(slices)
    part = torch.empty(ct.numel(), SP, dtype=torch.float64, device=dev)
    ptrs, _ = _pointer_table(dev, (grads,), len(grads))
    _launch(_sumsq_kernel, (ct.numel(),), ptrs, nrows, sl, ct, cr, part, G_DT=_TL_DTYPE[grads[0].dtype], SP=SP,
            ROWS=max(1, AGD_CONFIG["ROWS"] // SP), CHUNK_ROWS=AGD_CONFIG["CHUNK_ROWS"],
            num_warps=AGD_CONFIG["num_warps"])
    out = torch.empty(total, dtype=torch.float64, device=dev)
    _launch(_sumsq_finish, (len(grads),), part, first, sl, off, out, SP=SP, FB=AGD_CONFIG["FB"])
    return out


def agd_update(params: List[Tensor], grads: List[Tensor], coef: Tensor, ok: Optional[Tensor] = None) -> None:
    """W -= coef[slice] * g for every tensor, in place; nothing is written where the 0-dim device flag ``ok``
    is false (a skipped step: a non-finite coefficient or gradient)."""
    params, grads = list(params), list(grads)
    if not params:
        return
    if len(params) != len(grads):
        raise ValueError(f"agd_update: {len(params)} params for {len(grads)} grads")
    slices = [1 if p.dim() == 2 else p.shape[2] * p.shape[3] for p in params]
    _check("agd_update", grads, slices)
    for i, (p, g) in enumerate(zip(params, grads)):
        if p.shape != g.shape or p.dtype != g.dtype or not p.is_contiguous():
            raise ValueError(f"agd_update: parameter {i} must be contiguous with the gradient's shape and dtype")
    dev = params[0].device
    rows = tuple(g.numel() // s for g, s in zip(grads, slices))
    ct, cr, first, nrows, sl, off, total = _row_map(dev, rows, tuple(slices))
    if coef.dtype != torch.float64 or coef.numel() != total:
        raise ValueError(f"agd_update: coef must be float64 with one entry per slice ({total}), got "
                         f"{coef.dtype} with {coef.numel()}")
    if ok is None:
        ok = torch.ones((), dtype=torch.bool, device=dev)
    SP = _sp(slices)
    ptrs, _ = _pointer_table(dev, (params, grads), len(params))
    _launch(_update_kernel, (ct.numel(),), ptrs, len(params), nrows, sl, off, ct, cr, coef.contiguous(),
            ok.reshape(()).view(torch.uint8), X_DT=_TL_DTYPE[params[0].dtype], SP=SP,
            ROWS=max(1, AGD_CONFIG["ROWS"] // SP), CHUNK_ROWS=AGD_CONFIG["CHUNK_ROWS"],
            num_warps=AGD_CONFIG["num_warps"])


def _dims(g: Tensor):
    return g.shape[0], g.shape[1], 1 if g.dim() == 2 else g.shape[2] * g.shape[3]


def agd_gv(grads: List[Tensor], vs: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """g v per slice (vs[t]: float64 (S, d_in) -> (S, d_out)) and the per-slice sums of squares, one read."""
    grads = list(grads)
    if not grads:
        return torch.zeros(0, dtype=torch.float64), []
    dims = [_dims(g) for g in grads]
    _check("agd_gv", grads, [d[2] for d in dims])
    dev = grads[0].device
    vs = [v.to(torch.float64).contiguous() for v in vs]
    outs = [torch.empty(d[2], d[0], dtype=torch.float64, device=dev) for d in dims]
    BO, BI, SP = AGD_CONFIG["BO"], AGD_CONFIG["BI"], _sp([d[2] for d in dims])
    pt, pr = _block_map(dev, tuple(d[0] for d in dims), BO)
    part = torch.empty(pt.numel(), SP, dtype=torch.float64, device=dev)
    ptrs, _ = _pointer_table(dev, (grads, vs, outs), len(grads))
    dout, din, sl = _dims_tensors(dev, dims)
    _launch(_gv_kernel, (pt.numel(),), ptrs, len(grads), dout, din, sl, pt, pr, part,
            G_DT=_TL_DTYPE[grads[0].dtype], SP=SP, BO=BO, BI=max(1, BI // SP), num_warps=AGD_CONFIG["num_warps"])
    # the programs of one tensor are consecutive: finish their sums-of-squares rows in order
    slt, off, total = _slice_table(dev, tuple(d[2] for d in dims))
    first_prog = _first_of(dev, tuple(d[0] for d in dims), BO)
    sq = torch.empty(total, dtype=torch.float64, device=dev)
    _launch(_sumsq_finish, (len(grads),), part, first_prog, slt, off, sq, SP=SP, FB=AGD_CONFIG["FB"])
    return sq, outs


def agd_gtu(grads: List[Tensor], us: List[Tensor]) -> List[Tensor]:
    """g^T u per slice (us[t]: float64 (S, d_out) -> (S, d_in))."""
    grads = list(grads)
    if not grads:
        return []
    dims = [_dims(g) for g in grads]
    _check("agd_gtu", grads, [d[2] for d in dims])
    dev = grads[0].device
    us = [u.to(torch.float64).contiguous() for u in us]
    outs = [torch.empty(d[2], d[1], dtype=torch.float64, device=dev) for d in dims]
    BO, BI, SP = AGD_CONFIG["BO"], AGD_CONFIG["BI"], _sp([d[2] for d in dims])
    BI = max(1, BI // SP)
    pt, pc, pr, rows, ft, fc, ff, ranges, n_prog = _gtu_map(dev, tuple(dims), BI)
    part = torch.empty(n_prog, BI * SP, dtype=torch.float64, device=dev)
    ptrs, _ = _pointer_table(dev, (grads, us, outs), len(grads))
    dout, din, sl = _dims_tensors(dev, dims)
    _launch(_gtu_kernel, (n_prog,), ptrs, len(grads), dout, din, sl, pt, pc, pr, rows, part,
            G_DT=_TL_DTYPE[grads[0].dtype], SP=SP, BO=BO, BI=BI, num_warps=AGD_CONFIG["num_warps"])
    _launch(_gtu_finish, (ft.numel(),), ptrs, len(grads), dout, din, sl, ft, fc, ff, ranges, part,
            G_DT=_TL_DTYPE[grads[0].dtype], SP=SP, BI=BI, num_warps=AGD_CONFIG["num_warps"])
    return outs


def gtu_plan(dims: Sequence[Tuple[int, int, int]], bi: int) -> List[Tuple[int, int, int]]:
    """Per tensor of shape (d_out, d_in, S): (column programs of ``bi`` columns, row ranges, rows per range) of
    ``agd_gtu``. A tensor with few columns (a 4096 x 4096 matrix has 64 programs of 64 columns; a 50257 x 768
    embedding 12) would leave most of a GPU idle: its rows are split into ranges of at least GTU_MIN_ROWS rows
    until it has about GTU_PROGRAMS programs. The plan depends on the shapes only: the sums are deterministic."""
    out = []
    for d_out, d_in, _s in dims:
        cols = max(1, -(-d_in // bi))
        want = -(-AGD_CONFIG["GTU_PROGRAMS"] // cols)
        most = max(1, -(-d_out // AGD_CONFIG["GTU_MIN_ROWS"]))
        r = max(1, min(want, most))
        rows = max(1, -(-d_out // r))
        out.append((cols, max(1, -(-d_out // rows)), rows))
    return out


def _gtu_map(device, dims: Tuple[Tuple[int, int, int], ...], bi: int):
    """agd_gtu's programs (tensor, first column, first row; a column block's ranges consecutive), each tensor's
    rows per range and range count, the finishing programs (tensor, first column, first program), cached."""
    key = ("gtu", str(device), dims, bi, AGD_CONFIG["GTU_PROGRAMS"], AGD_CONFIG["GTU_MIN_ROWS"])
    hit = _MAPS.get(key)
    if hit is None:
        plan = gtu_plan(dims, bi)
        pt, pc, pr, ft, fc, ff = [], [], [], [], [], []
        for t, (cols, ranges, rows) in enumerate(plan):
            for k in range(cols):
                ft.append(t)
                fc.append(k * bi)
                ff.append(len(pt))
                for z in range(ranges):
                    pt.append(t)
                    pc.append(k * bi)
                    pr.append(z * rows)
        tables = [(pt, torch.int32), (pc, torch.int64), (pr, torch.int64), ([p[2] for p in plan], torch.int64),
                  (ft, torch.int32), (fc, torch.int64), (ff, torch.int64), ([p[1] for p in plan], torch.int32)]
        hit = _MAPS[key] = tuple(_device_table(v, d, device) for v, d in tables) + (len(pt),)
    return hit


@triton.jit
def _normalize_rows_kernel(ptrs, n_tensors, row_tensor_ptr, row_local_ptr, width_ptr, norm_ptr, BW: tl.constexpr):
    """One program per row of one tensor: its norm (float64, summed over BW lanes then in a fixed tree), and
    the row divided by it into the destination when the norm is not zero."""
    row = tl.program_id(0)
    t = tl.load(row_tensor_ptr + row)
    r = tl.load(row_local_ptr + row)
    d = tl.load(width_ptr + t)
    xp = tl.load(ptrs + t).to(tl.pointer_type(tl.float64))
    dp = tl.load(ptrs + n_tensors + t).to(tl.pointer_type(tl.float64))
    j = tl.arange(0, BW)
    acc = tl.zeros([BW], dtype=tl.float64)
    for k in range(0, tl.cdiv(d, BW)):
        cols = k * BW + j
        x = tl.load(xp + r * d + cols, mask=cols < d, other=0.0)
        acc += x * x
    n = tl.sqrt(tl.sum(acc, axis=0))
    tl.store(norm_ptr + row, n)
    if n > 0:
        for k in range(0, tl.cdiv(d, BW)):
            cols = k * BW + j
            x = tl.load(xp + r * d + cols, mask=cols < d, other=0.0)
            tl.store(dp + r * d + cols, x / n, mask=cols < d)


def agd_normalize_rows(xs: List[Tensor], dsts: List[Tensor]) -> Tensor:
    """Every row of every float64 (rows, d) tensor normalised into dsts (rows of norm 0 leave dsts as they
    were); returns the row norms, concatenated. One launch for all tensors."""
    xs, dsts = list(xs), list(dsts)
    if len(xs) != len(dsts):
        raise ValueError(f"agd_normalize_rows: {len(xs)} tensors but {len(dsts)} destinations")
    for i, (x, d) in enumerate(zip(xs, dsts)):
        if x.dtype != torch.float64 or x.dim() != 2 or not x.is_contiguous():
            raise ValueError(f"agd_normalize_rows: tensor {i} must be a contiguous float64 matrix (rows, d), got "
                             f"{x.dtype} of shape {tuple(x.shape)}")
        if d.dtype != torch.float64 or not d.is_contiguous() or d.numel() != x.numel() or d.device != x.device:
            raise ValueError(f"agd_normalize_rows: destination {i} must be a contiguous float64 tensor of "
                             f"{x.numel()} elements on {x.device}")
    if not xs:
        return torch.zeros(0, dtype=torch.float64)
    dev = xs[0].device
    rows = tuple(x.shape[0] for x in xs)
    key = ("normrows", str(dev), rows)
    hit = _MAPS.get(key)
    if hit is None:      # program r: (tensor, row within it); a row of width 0 gets norm 0 like any zero row
        hit = _MAPS[key] = (_device_table([t for t, n in enumerate(rows) for _ in range(n)], torch.int32, dev),
                            _device_table([r for n in rows for r in range(n)], torch.int64, dev))
    tensor_of, local = hit
    norms = torch.empty(sum(rows), dtype=torch.float64, device=dev)
    if norms.numel():
        widths = _dims_tensors(dev, tuple((x.shape[1], x.shape[1], 1) for x in xs))[0]
        _launch(_normalize_rows_kernel, (norms.numel(),), _pointer_table(dev, (xs, dsts), len(xs))[0], len(xs),
                tensor_of, local, widths, norms, BW=AGD_CONFIG["FB"], num_warps=AGD_CONFIG["num_warps"])
    return norms


def _dims_tensors(device, dims):
    key = ("dims", str(device), tuple(dims))
    hit = _MAPS.get(key)
    if hit is None:
        hit = _MAPS[key] = tuple(_device_table([d[j] for d in dims], dt, device)
                                 for j, dt in ((0, torch.int64), (1, torch.int64), (2, torch.int32)))
    return hit


def _slice_table(device, slices):
    """Slices per tensor (int32) and each tensor's first entry in the concatenated per-slice vector."""
    key = ("slices", str(device), slices)
    hit = _MAPS.get(key)
    if hit is None:
        offset = [0]
        for s in slices:
            offset.append(offset[-1] + s)
        hit = _MAPS[key] = (_device_table(slices, torch.int32, device),
                            _device_table(offset[:-1], torch.int64, device), offset[-1])
    return hit


def _first_of(device, extents, block):
    key = ("first", str(device), extents, block)
    hit = _MAPS.get(key)
    if hit is None:
        first = [0]
        for n in extents:
            first.append(first[-1] + max(1, -(-n // block)))
        hit = _MAPS[key] = _device_table(first, torch.int32, device)
    return hit
