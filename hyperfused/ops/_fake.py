"""Fake (meta) implementations of the ``torch.ops.hyperfused`` ops, for FakeTensor tracing: torch.compile,
torch.export, AOTAutograd and torch.library.opcheck.

A fake implementation returns empty tensors with the metadata (shape, strides, dtype, device) of what the kernel
returns, and writes nothing; it is run instead of the kernel while tracing. Each one here follows the CPU kernel
(csrc/cpu/*.cpp) and the CUDA kernel (csrc/cuda/ops_cuda.cpp), which agree: every output is a new contiguous
tensor on the device of the tensor named below. The argument checks are the ones that decide an output's shape
(a call the kernel rejects is rejected while tracing, not later at run time); the kernels check the rest.

Ops that mutate their inputs (hyper_update, hyper_update_tower, hyper_tower_commit, agd_update,
agd_normalize_rows) say so in their schemas (``Tensor(a!)``): functionalization (``auto_functionalized``) turns
the call into a functional one with the mutated tensors as outputs. Their fakes write nothing but bump the version
counters of the tensors the kernel writes (``_mutated``): the ops have no ADInplaceOrView kernel (csrc/ops.cpp
defines them with TORCH_LIBRARY, where that key falls through), so nothing else tells the tracer that those
tensors changed, and Dynamo would reuse what it read of them before the call; e.g. ``hp_lr.item()`` after
hyper_tower_commit wrote hp_lr gave the value from before the commit, and a compiled exact-mode step of
hf.Adam(hyper=hf.SGD(...), backend="cpu") then ran pass B with the old lr.

Registered by ``hyperfused.ops._ext.load_extension`` once ``hyperfused._C`` (the schemas) has loaded.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..kinds import EPS_PER_LEVEL, MAX_TOWER_LEVELS, SCRATCH_ROWS_PER_LEVEL, TOWER_HEAD, TOWER_PER_LEVEL, TOWER_SLOTS  # noqa: F401
from ..kinds import ROW_COLS as KOUT       # columns of the hypergradient passes' rows
from ..kinds import TABLE_COLS as KSCAL    # columns of their float64 scalar table (scal)

Tensor = torch.Tensor

CUDA_CHUNK = 65536                                         # kChunk, csrc/cuda/hyper_cuda.h

F64 = torch.float64
_CPU = torch.device("cpu")


def _dev(tensors: Sequence[Tensor]) -> torch.device:
    """The device of a list's first tensor; the CPU for an empty list (where the kernels' outputs are empty)."""
    return tensors[0].device if len(tensors) else _CPU


def _slices(t: Tensor):
    """AGD's slices of a matrix (1) or of a 4-D kernel (kh * kw)."""
    return 1 if t.dim() == 2 else t.shape[2] * t.shape[3]


def _mutated(*lists: Sequence[Tensor]) -> None:
    """The tensors the kernel writes in place changed: bump their (fake) version counters (see the module
    docstring). Tracing only; the eager kernels leave the counters alone, as fused.py's previous-gradient check
    (_check_prev_grads) expects."""
    for lst in lists:
        if len(lst):
            torch.autograd.graph.increment_version(list(lst))


def _check_table(op: str, n: int, scal: Tensor, what: str = "scal") -> None:
    torch._check(scal.dtype == F64 and scal.dim() == 2 and scal.shape[0] == n and scal.shape[1] == KSCAL,
                 lambda: f"{op}: {what} must be a contiguous float64 tensor of shape [{n}, {KSCAL}], got "
                         f"{scal.dtype} {tuple(scal.shape)}")


def _check_lists(op: str, grads, params, s0, s1, s2) -> None:
    n = len(grads)
    torch._check(len(params) in (0, n), lambda: f"{op}: {len(params)} params for {n} grads")
    for lst in (s0, s1, s2):
        torch._check(len(lst) in (0, n), lambda: f"{op}: a state list has {len(lst)} tensors for {n} grads")


def _rows(n: int, scal: Tensor) -> Tensor:
    """The passes' float64 [n, 4] rows, on the device of the scalar table (the kernels allocate them there)."""
    return scal.new_empty((n, KOUT), dtype=F64)


def _tower_levels(op: str, desc: Sequence[int], eps: Sequence[float], slots: Sequence[Tensor]):
    """(K, block) of a tower's desc (tower_desc.h's checks of the lengths); the scratch has SCRATCH_ROWS_PER_LEVEL * K * block
    entries."""
    torch._check(len(desc) >= TOWER_HEAD, lambda: f"{op}: desc too short")
    K, block = int(desc[0]), int(desc[1])
    levels = K + 1
    torch._check(1 <= K and levels <= MAX_TOWER_LEVELS,
                 lambda: f"{op}: a tower of {levels} levels (1 to {MAX_TOWER_LEVELS - 1} above level 0 are "
                         f"supported)")
    torch._check(len(desc) == TOWER_HEAD + TOWER_PER_LEVEL * levels and len(eps) == EPS_PER_LEVEL * levels
                 and len(slots) == TOWER_SLOTS * levels,
                 lambda: f"{op}: desc, eps and slots do not describe {levels} levels")
    return K, block


def _tower_dtype(op: str, slots: Sequence[Tensor]) -> torch.dtype:
    torch._check(len(slots) > 0, lambda: f"{op}: no tower slots")
    dt = slots[0].dtype
    torch._check(dt in (torch.float32, torch.float64),
                 lambda: f"{op}: the tower's dtype must be float32 or float64, got {dt}")
    return dt


def _tower_outputs(op, scal, n, desc, eps, slots):
    """(rows, scratch, ok) of the ops that run a pass and then the levels above: rows float64 [n, 4], the
    scratch [6 K block] in the tower's dtype (its slots'), ok a 0-dim bool, all on the scalar table's device."""
    dt = _tower_dtype(op, slots)
    K, block = _tower_levels(op, desc, eps, slots)
    return (_rows(n, scal), scal.new_empty((SCRATCH_ROWS_PER_LEVEL * K * block,), dtype=dt), scal.new_empty((), dtype=torch.bool))


def multi_tensor_dot(a: List[Tensor], b: List[Tensor]) -> Tensor:
    torch._check(len(a) == len(b), lambda: f"multi_tensor_dot: got {len(a)} tensors in a and {len(b)} in b")
    for i, (x, y) in enumerate(zip(a, b)):
        torch._check(x.shape == y.shape, lambda: f"multi_tensor_dot: pair {i} has shapes {tuple(x.shape)} and "
                                                 f"{tuple(y.shape)}")
        torch._check(x.dtype == y.dtype, lambda: f"multi_tensor_dot: pair {i} has dtypes {x.dtype} and {y.dtype}")
    return torch.empty((len(a),), dtype=F64, device=_dev(a))


def hyper_reduce(kind: int, learn: int, momentum: bool, eps: List[float], grads: List[Tensor], s0: List[Tensor],
                 s1: List[Tensor], s2: List[Tensor], scal: Tensor, inv_scale: Optional[Tensor] = None) -> Tensor:
    _check_lists("hyper_reduce", grads, [], s0, s1, s2)
    _check_table("hyper_reduce", len(grads), scal)
    return _rows(len(grads), scal)


def hyper_update(kind: int, learn: int, momentum: bool, eps: List[float], params: List[Tensor],
                 grads: List[Tensor], s0: List[Tensor], s1: List[Tensor], s2: List[Tensor], scal: Tensor,
                 scal_jac: Optional[Tensor], ok: Tensor, inv_scale: Optional[Tensor] = None) -> Tensor:
    # writes params and the state lists in place (schema: Tensor(a!)[] params, s0, s1, s2); the rows are zeros
    # without scal_jac, one-pass mode's sums with it: the same shape either way
    _check_lists("hyper_update", grads, params, s0, s1, s2)
    _check_table("hyper_update", len(grads), scal)
    if scal_jac is not None:
        _check_table("hyper_update", len(grads), scal_jac, "scal_jac")
    _mutated(params, s0, s1, s2)
    return _rows(len(grads), scal)


def nonfinite_count(grads: List[Tensor]) -> Tensor:
    return torch.empty((len(grads),), dtype=F64, device=_dev(grads))


def hyper_tower_plan(desc: List[int], eps: List[float], slots: List[Tensor], d0: Tensor, finite: Tensor):
    torch._check(d0.dim() == 1, lambda: "hyper_tower_plan: d0 must be a contiguous vector")
    torch._check(d0.dtype in (torch.float32, torch.float64),
                 lambda: f"hyper_tower_plan: d0 must be float32 or float64, got {d0.dtype}")
    torch._check(finite.dtype == torch.bool and finite.numel() == 1, lambda: "hyper_tower_plan: finite must be bool")
    K, block = _tower_levels("hyper_tower_plan", desc, eps, slots)
    return d0.new_empty((SCRATCH_ROWS_PER_LEVEL * K * block,)), d0.new_empty((), dtype=torch.bool)


def hyper_reduce_tower(kind: int, learn: int, momentum: bool, eps: List[float], grads: List[Tensor],
                       s0: List[Tensor], s1: List[Tensor], s2: List[Tensor], scal: Tensor, d0_map: List[int],
                       desc: List[int], tower_eps: List[float], slots: List[Tensor],
                       inv_scale: Optional[Tensor] = None):
    _check_lists("hyper_reduce_tower", grads, [], s0, s1, s2)
    _check_table("hyper_reduce_tower", len(grads), scal)
    return _tower_outputs("hyper_reduce_tower", scal, len(grads), desc, tower_eps, slots)


def hyper_update_tower(kind: int, learn: int, momentum: bool, eps: List[float], params: List[Tensor],
                       grads: List[Tensor], s0: List[Tensor], s1: List[Tensor], s2: List[Tensor], scal: Tensor,
                       scal_jac: Tensor, ok: Tensor, d0_map: List[int], desc: List[int], tower_eps: List[float],
                       slots: List[Tensor], inv_scale: Optional[Tensor] = None):
    # writes params and the state lists in place, as hyper_update does; nothing of the tower (commit does)
    _check_lists("hyper_update_tower", grads, params, s0, s1, s2)
    _check_table("hyper_update_tower", len(grads), scal)
    _check_table("hyper_update_tower", len(grads), scal_jac, "scal_jac")
    out = _tower_outputs("hyper_update_tower", scal, len(grads), desc, tower_eps, slots)
    _mutated(params, s0, s1, s2)
    return out


def hyper_tower_commit(desc: List[int], eps: List[float], slots: List[Tensor], scratch: Tensor, ok: Tensor) -> None:
    # writes the slots in place (schema: Tensor(a!)[] slots)
    K, block = _tower_levels("hyper_tower_commit", desc, eps, slots)
    torch._check(scratch.dim() == 1 and scratch.numel() == SCRATCH_ROWS_PER_LEVEL * K * block,
                 lambda: "hyper_tower_commit: scratch does not match the tower")
    torch._check(ok.dtype == torch.bool and ok.numel() == 1, lambda: "hyper_tower_commit: ok must be bool")
    _mutated(slots)


def agd_sumsq(grads: List[Tensor], slices: List[int]) -> Tensor:
    torch._check(len(grads) == len(slices),
                 lambda: f"agd_sumsq: {len(grads)} gradients but {len(slices)} slice counts")
    for i, (g, s) in enumerate(zip(grads, slices)):
        torch._check(s >= 1 and g.numel() % s == 0,
                     lambda: f"agd_sumsq: gradient {i} of {g.numel()} elements cannot have {s} slices")
    return torch.empty((sum(int(s) for s in slices),), dtype=F64, device=_dev(grads))


def agd_update(params: List[Tensor], grads: List[Tensor], coef: Tensor, ok: Optional[Tensor] = None) -> None:
    # writes params in place (schema: Tensor(a!)[] params)
    torch._check(len(params) == len(grads), lambda: f"agd_update: {len(params)} params for {len(grads)} grads")
    for i, (p, g) in enumerate(zip(params, grads)):
        torch._check(p.dim() in (2, 4) and p.shape == g.shape,
                     lambda: f"agd_update: parameter {i} must be a matrix or a 4-D kernel shaped like its gradient")
    total = sum(_slices(p) for p in params)
    torch._check(coef.dtype == F64 and coef.numel() == total,
                 lambda: f"agd_update: coef must be float64 with one entry per slice ({total})")
    if ok is not None:
        torch._check(ok.dtype == torch.bool and ok.numel() == 1, lambda: "agd_update: ok must be one bool")
    _mutated(params)


def _check_mats(op: str, grads, vecs, by_in: bool) -> None:
    torch._check(len(grads) == len(vecs), lambda: f"{op}: {len(grads)} gradients but {len(vecs)} vectors")
    for t, (g, v) in enumerate(zip(grads, vecs)):
        torch._check(g.dim() in (2, 4), lambda: f"{op}: gradient {t} must be a contiguous matrix or 4-D kernel")
        n = g.shape[1] if by_in else g.shape[0]
        torch._check(v.numel() == _slices(g) * n,
                     lambda: f"{op}: vector {t} must be a contiguous float64 tensor of {_slices(g)} x {n} elements")


def agd_gv(grads: List[Tensor], vs: List[Tensor]):
    """(per-slice sums of squares, concatenated: float64 [sum S]; per tensor g v: float64 (S, d_out))."""
    _check_mats("agd_gv", grads, vs, by_in=True)
    total = sum(_slices(g) for g in grads)
    sq = torch.empty((total,), dtype=F64, device=_dev(grads))
    return sq, [g.new_empty((_slices(g), g.shape[0]), dtype=F64) for g in grads]


def agd_gtu(grads: List[Tensor], us: List[Tensor]) -> List[Tensor]:
    """Per tensor g^T u: float64 (S, d_in)."""
    _check_mats("agd_gtu", grads, us, by_in=False)
    return [g.new_empty((_slices(g), g.shape[1]), dtype=F64) for g in grads]


def agd_normalize_rows(xs: List[Tensor], dsts: List[Tensor]) -> Tensor:
    # writes dsts in place (schema: Tensor(a!)[] dsts); returns the rows' norms, concatenated
    torch._check(len(xs) == len(dsts), lambda: f"agd_normalize_rows: {len(xs)} tensors but {len(dsts)} destinations")
    for t, (x, d) in enumerate(zip(xs, dsts)):
        torch._check(x.dtype == F64 and x.dim() == 2,
                     lambda: f"agd_normalize_rows: tensor {t} must be a contiguous float64 matrix (rows, d)")
        torch._check(d.dtype == F64 and d.numel() == x.numel(),
                     lambda: f"agd_normalize_rows: destination {t} must be a float64 tensor of {x.numel()} elements")
    _mutated(dsts)
    return torch.empty((sum(x.shape[0] for x in xs),), dtype=F64, device=_dev(xs))


def cuda_table_plan(numels: List[int]) -> Tensor:
    """_cuda_table_plan: one int64 row of 6 per block of the CUDA kernels' walk (csrc/cuda/tables.h), a block
    being a chunk of CUDA_CHUNK elements of one tensor (an empty tensor has none); always on the CPU."""
    for m in numels:
        torch._check(m >= 0, lambda: f"_cuda_table_plan: negative size {m}")
    blocks = sum((m + CUDA_CHUNK - 1) // CUDA_CHUNK for m in numels)
    return torch.empty((blocks, 6), dtype=torch.int64, device=_CPU)


def tower_plan_threads(desc: List[int], eps: List[float], slots: List[Tensor], d0: Tensor, finite: Tensor,
                       threads: int):
    """_tower_plan_threads: hyper_tower_plan's outputs (tests: the CUDA block's schedule on host threads)."""
    torch._check(1 <= threads <= 1024, lambda: f"_tower_plan_threads: threads must be in [1, 1024], got {threads}")
    return hyper_tower_plan(desc, eps, slots, d0, finite)


def tower_commit_threads(desc: List[int], eps: List[float], slots: List[Tensor], scratch: Tensor, ok: Tensor,
                         threads: int) -> List[Tensor]:
    """_tower_commit_threads: copies of the slots (tests: the CUDA block's commit on host threads)."""
    torch._check(1 <= threads <= 1024, lambda: f"_tower_commit_threads: threads must be in [1, 1024], got {threads}")
    return [torch.empty_like(t) for t in slots]


#: op name -> fake implementation
FAKES = {
    "multi_tensor_dot": multi_tensor_dot,
    "hyper_reduce": hyper_reduce,
    "hyper_update": hyper_update,
    "nonfinite_count": nonfinite_count,
    "hyper_tower_plan": hyper_tower_plan,
    "hyper_reduce_tower": hyper_reduce_tower,
    "hyper_update_tower": hyper_update_tower,
    "hyper_tower_commit": hyper_tower_commit,
    "agd_sumsq": agd_sumsq,
    "agd_update": agd_update,
    "agd_gv": agd_gv,
    "agd_gtu": agd_gtu,
    "agd_normalize_rows": agd_normalize_rows,
    "_cuda_table_plan": cuda_table_plan,
    "_tower_plan_threads": tower_plan_threads,
    "_tower_commit_threads": tower_commit_threads,
}

#: the ops of csrc/ops.cpp that get no fake implementation, and why
NO_FAKE = {
    "cpu_isa": "takes no tensor and returns a str: FakeTensor mode runs its kernel as it is, and Dynamo refuses "
               "any torch.* op that returns a non-Tensor, which no fake changes (a diagnostic: read it outside "
               "compiled code)",
}

_registered: List[str] = []


def composite_implicit(name: str) -> bool:
    """The op's kernel is registered as CompositeImplicitAutograd (``m.def(schema, fn)`` in csrc/ops.cpp): torch
    then refuses a fake implementation (it expects such an op to decompose into other ops while tracing)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"hyperfused::{name}", "CompositeImplicitAutograd")


def register() -> List[str]:
    """Register every fake implementation once (hyperfused._C must have loaded); returns the ops registered. An op
    whose kernel is CompositeImplicitAutograd (``m.def(schema, fn)``; torch refuses a fake for it: it expects such
    an op to decompose while tracing) is left out; csrc/ops.cpp registers none that way today."""
    if not _registered:
        for name, fn in FAKES.items():
            if composite_implicit(name):
                continue
            torch.library.register_fake(f"hyperfused::{name}", fn)
            _registered.append(name)
    return list(_registered)
