"""The "cpu", "cuda" and "triton" backends: the hypergradient passes as the compiled ops
``torch.ops.hyperfused.hyper_reduce`` and ``hyper_update`` (csrc/cpu, csrc/cuda; torch dispatches by device),
or as the Triton kernels with the same arguments (``hyperfused.ops.triton.hyper``), one call per param group
(and per gradient dtype).

This module turns the optimizer's per-tensor state dicts and hyperparameter values into the ops' arguments:
state lists in the kernel's order and a float64 table of per-tensor scalars, built on the tensors' device. On
CUDA nothing here reads a device value on the host, so a step can be captured in a CUDA graph.
"""
from __future__ import annotations

import threading
import warnings
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .. import kinds
from ..kinds import (COL_DECAY, COL_DSIG1, COL_RAW_LR, COL_STEP, COL_VALID, ROW_COLS, ROW_NONFINITE, SIGMA,
                     SQUARE, STATE_SLOTS, TABLE_COLS)
from . import _ext, packed
from . import reference as ref
from .tower_shape import eps_pair

Tensor = torch.Tensor


def state_keys(kind: str, cfg: dict, learned: Sequence[str]) -> List[str]:
    """The state tensors the kernels read and write, in the kernel's order (s0, s1, s2): hyperfused.kinds."""
    return list(kinds.KINDS[kind].state_keys(cfg, learned))


def learn_mask(kind: str, learned: Sequence[str]) -> int:
    return kinds.KINDS[kind].learn_mask(learned)


_COLS: Dict[tuple, tuple] = {}


def _table_columns(kind: str, learned: Sequence[str]):
    """Which hyperparameter fills which column of the scalar table (kinds table): the values (lr, h1, h2), the
    raw lr of a squared lr, sigma' of the sigma-parametrised ones; cached per (kind, learned set)."""
    key = (kind, tuple(learned))
    out = _COLS.get(key)
    if out is None:
        spec = kinds.KINDS[kind]
        values = tuple(enumerate(spec.hyper))
        raw = tuple((COL_RAW_LR, n) for n in spec.hyper[:1] if n in learned and spec.parametrisation(n) == SQUARE)
        sig = tuple((COL_DSIG1 + c - 1, n) for c, n in enumerate(spec.hyper)
                    if c >= 1 and n in learned and spec.parametrisation(n) == SIGMA)
        out = _COLS[key] = (values, raw, sig)
    return out


def _eps(kind: str, cfg: dict) -> List[float]:
    """The ops' eps argument: the kind's two per-level constants (kinds.Kind.consts; Adagrad/RMSprop
    [eps, eps_root], their denominators' sqrt(s + eps_root) + eps; Adam [eps, initial_exp_avg_sq])."""
    return list(eps_pair(kind, cfg))


def scalars(kind: str, learned: Sequence[str], n: int, hp: Dict[str, Tensor], raw: Dict[str, Tensor],
            steps: Optional[List[Tensor]], valid: List, device, step_offset: float = 0.0,
            host: bool = False, decay: Optional[Tensor] = None, role: Optional[int] = None) -> Tensor:
    """The float64 [n, TABLE_COLS] table (hyperfused.kinds' COL_*): lr, h1, h2, raw_lr, dsigma(h1), dsigma(h2),
    step, valid, decay (``decay``: an update's lr * weight_decay, one value or one per tensor; 0 if None).
    ``steps``: the tensors' step counts (0-dim tensors, or one vector of them: ``packed``; plus ``step_offset``);
    ``valid``: one 0-dim tensor or number per tensor, or one vector. ``host``: the tensors are on the CPU and the table may be built from host numbers (the
    compiled CPU kernels; the Triton kernels keep the tensor-op path they take on a GPU, also under the
    interpreter). ``role`` (with ``host``): a host table is written into a buffer kept for this role and thread
    (the caller's op reads it before the next table of that role is made)."""
    values, raws, sigs = _table_columns(kind, learned)
    cols: List[Tuple[int, Optional[Tensor]]] = [(j, hp.get(name)) for j, name in values]
    cols += [(j, raw[name]) for j, name in raws]
    if decay is not None:
        cols.append((COL_DECAY, decay))
    sig = [(j, raw[name]) for j, name in sigs]          # the columns of dsigma(raw)
    if host and n <= _HOST_TABLE_MAX and not torch.compiler.is_compiling():   # (a traced step: tensor ops)
        return _scalars_on_host(n, cols, sig, steps, valid, step_offset, role)
    # on the device: the columns (one-element values broadcast as views) stacked by one op, in as few launches as
    # the values allow (a launch costs microseconds of host time on a GPU); the same float64 values as the host
    # path (every conversion to float64 is exact)
    parts: List[Optional[Tensor]] = [None] * TABLE_COLS
    for j, v in cols:
        parts[j] = v if (v is None or isinstance(v, Tensor)) else _const(float(v), device)
    for j, r in sig:
        parts[j] = ref.dsigma(r.to(torch.float64))     # in float64, as the host path: the same table on every backend
    if steps is not None:
        st = steps if isinstance(steps, Tensor) else torch.stack(list(steps))
        parts[COL_STEP] = st + step_offset if step_offset else st
    if isinstance(valid, Tensor):
        parts[COL_VALID] = valid
    elif valid and isinstance(valid[0], Tensor):
        parts[COL_VALID] = torch.stack(list(valid))
    else:                                      # numbers, known on the host
        parts[COL_VALID] = torch.tensor([float(v) for v in valid], dtype=torch.float64, device=device)
    zero = None
    columns = []
    for v in parts:
        if v is None:
            if zero is None:
                zero = torch.zeros(n, dtype=torch.float64, device=device)
            columns.append(zero)
        else:
            v = v.reshape(-1)
            columns.append(v.expand(n) if v.numel() == 1 else v)
    out = torch.stack(columns, dim=1)          # (promotes to the widest dtype: float64 where one column is)
    return out if out.dtype == torch.float64 else out.to(torch.float64)


_CONSTS: Dict[tuple, Tensor] = {}


def _const(v: float, device, dtype: torch.dtype = torch.float64) -> Tensor:
    """A 0-dim tensor holding ``v`` on ``device``, made once (a fixed hyperparameter's exact number in a device
    table: no copy from the host per step; made by a fill, which a CUDA graph capture allows; the step counts'
    increment where the step is known taken). Read only."""
    key = (v, str(device), dtype)
    t = _CONSTS.get(key)
    if t is None:
        if len(_CONSTS) >= 1024:
            _CONSTS.clear()
        t = _CONSTS[key] = torch.full((), v, dtype=dtype, device=device)
    return t


# Up to this many tensors, a CPU table is built from host numbers: reading a 0-dim CPU tensor costs ~0.2 us,
# a tensor op ~3 us (stacking 64 step counts ~21 us, reading them ~14 us), and a small model's step is made of
# such costs. Beyond it the Python lists cost about what the tensor ops do.
_HOST_TABLE_MAX = 128


_TABLES = threading.local()


def _scalars_on_host(n: int, cols, sig, steps, valid, step_offset: float, role: Optional[int] = None) -> Tensor:
    """``scalars`` for a few CPU tensors: the table filled through its numpy view from host numbers (the same
    float64 values; dsigma of a one-element raw value computed in float64), with no tensor op per column; in the
    buffer kept for ``role`` (every entry is written) or a new tensor."""
    kept = None if role is None else _TABLES.__dict__.setdefault("by_role", {})
    hit = None if kept is None else kept.get((n, role))
    if hit is None:
        out = torch.empty((n, TABLE_COLS), dtype=torch.float64)
        a = out.numpy()
        if kept is not None:
            if len(kept) >= 64:
                kept.clear()
            kept[(n, role)] = (out, a)
    else:
        out, a = hit
    row = [0.0] * TABLE_COLS
    per = []
    for j, v in cols:
        if v is None:
            continue
        if not isinstance(v, Tensor):           # a fixed hyperparameter's exact number
            row[j] = float(v)
        elif v.numel() == 1:
            row[j] = v.item()
        else:
            per.append((j, v.reshape(-1)))
    for j, r in sig:
        if r.numel() == 1:
            row[j] = ref.dsigma(r.item())
        else:
            per.append((j, ref.dsigma(r).reshape(-1)))
    a[:] = row
    for j, col in per:
        a[:, j] = col.numpy()
    if isinstance(steps, Tensor):          # packed: one vector
        a[:, COL_STEP] = steps.numpy()
        if step_offset:
            a[:, COL_STEP] += step_offset
    elif steps is not None:
        a[:, COL_STEP] = [t.item() + step_offset for t in steps]
    if isinstance(valid, Tensor):
        a[:, COL_VALID] = valid.numpy()
    else:
        a[:, COL_VALID] = [v.item() if isinstance(v, Tensor) else v for v in valid]
    return out


_META: Dict[tuple, tuple] = {}


def _meta(kind, cfg, learned) -> tuple:
    """(state keys, the ops' head arguments, counts steps) of a level's configuration, kept per cfg dict (the
    optimizer makes a new one whenever a value changes, and never edits one; the entry holds it, so its id is
    not reused while the entry lives)."""
    key = (kind, id(cfg), tuple(learned))
    hit = _META.get(key)
    if hit is not None and hit[0] is cfg:
        return hit[1]
    if len(_META) >= 256:
        _META.clear()
    spec = kinds.KINDS[kind]
    out = (spec.state_keys(cfg, learned), _head(kind, cfg, learned), spec.counts_steps(cfg))
    _META[key] = (cfg, out)
    return out


def _steps(states, counts: bool):
    """The step counts of ``states``: their packed vector (``packed``), else a list of 0-dim tensors; None for a
    kind that counts no steps."""
    if not counts:
        return None
    vec = packed.steps_of(states)
    return vec if vec is not None else [st["step"] for st in states]


def _lists(kind, cfg, learned, states):
    keys = _meta(kind, cfg, learned)[0]
    lists = [[st[k] for st in states] for k in keys]
    while len(lists) < STATE_SLOTS:
        lists.append([])
    return lists


def _deltas(kind, learned, per_tensor_lr, rows: Tensor, dt) -> Dict[str, Tensor]:
    out = {}
    for name in learned:
        v = rows[:, kinds.KINDS[kind].column(name)].to(dt)
        out[name] = v if (name == "lr" and per_tensor_lr) else v.sum()
    return out


def _dense(t: Tensor) -> bool:
    """Non-overlapping and dense: the elements fill a block of memory in some dimension order."""
    if t.is_contiguous():
        return True
    dims = sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1)
    expect = 1
    for st, sz in dims:
        if st != expect:
            return False
        expect *= sz
    return True


def _all_contiguous(ts: Sequence[Tensor]) -> bool:
    return all(map(Tensor.is_contiguous, ts))


def _one_dtype(ts: Sequence[Tensor]) -> bool:
    d = ts[0].dtype
    return all(t.dtype == d for t in ts)


def _work_lists(params: Sequence[Tensor], grads: Sequence[Tensor]):
    """The tensors pass B writes and the gradients it reads, laid out alike. Usually (everything contiguous,
    eagerly) the tensors themselves, with no per-tensor work: the op writes the parameters in place under the
    step's no_grad, as torch's fused optimizers do. Otherwise detached views, or contiguous copies of parameters
    that are not dense (written back after the op), and gradients with the parameters' strides."""
    if not torch.compiler.is_compiling() and _all_contiguous(params) and _all_contiguous(grads):
        return params, grads
    work = [p.detach() if _dense(p) else p.detach().contiguous() for p in params]
    return work, [_dense_like(x, w) for x, w in zip(grads, work)]


def _dense_like(g: Tensor, p: Tensor) -> Tensor:
    if g.is_contiguous() and p.is_contiguous():        # the usual case, without building stride tuples
        return g
    return g if (g.stride() == p.stride() and _dense(g)) else torch.empty_like(p).copy_(g)


# ------------------------------------------------------------------------------------------------------------
# The previous gradient without a copy. Where the state needs g_{t-1} (docs/MATH.md §4.5), pass B does not copy the
# gradient into a buffer (a whole extra write stream): the state keeps a reference to the gradient tensor
# itself, which the usual loop (zero_grad(set_to_none=True), torch's default) replaces by a fresh tensor at the
# next backward. If the tensor was changed in place after the step instead (zero_grad(set_to_none=False),
# gradients accumulated without zeroing, gradient-bucket views under DDP), its version counter says so: that
# tensor's hypergradient term is dropped for that one step (its Jacobian counts as zero, as for a tensor that
# did not move), a warning is given once, and from then on it is copied into a buffer of its own.
class _Kept(weakref.ref):
    """A weak reference to a gradient kept as a previous gradient, with its id and its version counter then."""
    __slots__ = ("key", "version")


_STOLEN: Dict[int, _Kept] = {}   # id(gradient) -> its _Kept


def _forget(r: _Kept) -> None:
    if _STOLEN.get(r.key) is r:
        del _STOLEN[r.key]


def _keep(t: Tensor) -> None:
    r = _Kept(t, _forget)
    r.key, r.version = id(t), t._version
    _STOLEN[r.key] = r


_warned = [False]


def _check_prev_grads(states: List[dict], valid):
    """``valid`` (0-dim flags, or one vector of them), with the flag of every tensor whose kept previous gradient
    was changed in place since cleared (a copy: ``valid`` itself is left as it is)."""
    out = valid if isinstance(valid, Tensor) else list(valid)
    if torch.compiler.is_compiling():
        # a traced step cannot watch version counters: the state keeps its own copies from here on
        for st in states:
            if "prev_grad" in st:
                st["prev_grad_copy"] = True
        return out
    stolen = _STOLEN
    if not stolen:            # no gradient is kept anywhere (the device backends never keep one): nothing to check
        return out
    for i, st in enumerate(states):
        prev = st.get("prev_grad")
        if prev is None or st.get("prev_grad_copy"):
            continue
        entry = stolen.get(id(prev))                  # (_kept_version, inline: this runs per tensor and step)
        if entry is not None and entry() is prev and prev._version != entry.version:
            if out is valid:                              # (a vector: cleared in a copy)
                out = valid.clone()
            out[i] = torch.zeros_like(valid[i])
            st["prev_grad"] = torch.zeros_like(prev)      # our own buffer from now on
            st["prev_grad_copy"] = True
            _STOLEN.pop(id(prev), None)
            if not _warned[0]:
                _warned[0] = True
                warnings.warn(
                    "hyperfused: a gradient tensor was modified in place after the optimizer step (for example by "
                    "zero_grad(set_to_none=False) or by accumulating gradients without zeroing them); the "
                    "hypergradient term of that tensor is skipped for this step and its gradient is copied "
                    "from now on. zero_grad(set_to_none=True), the default, avoids the copy.", stacklevel=4)
    return out


def _keep_flags(states: List[dict], grads: List[Tensor], work: List[Tensor], laid_out: bool) -> List[bool]:
    """Per tensor, whether the state may keep the gradient tensor itself as its previous gradient: it has one,
    not its own copy, of the same dtype, on the CPU (as the gradients: only the C++ kernels on CPU tensors keep
    one), with the strides of ``work`` (the parameter as the op writes it; ``laid_out``: ``_work_lists`` handed
    everything over as it is, contiguous, so the strides agree), and not an inference tensor (made under
    torch.inference_mode: no version counter to watch). Never under torch.compile (a trace cannot watch version
    counters)."""
    if torch.compiler.is_compiling():
        return [False] * len(states)
    out = []
    for st, g, w in zip(states, grads, work):          # (inline: this runs per tensor and step)
        prev = st.get("prev_grad")
        out.append(prev is not None and not st.get("prev_grad_copy", False) and g.dtype == prev.dtype
                   and (laid_out or g.stride() == w.stride()) and prev.is_cpu and not g.is_inference())
    return out


def _compiled():
    """The compiled ops: in eager steps their direct bindings (``hyperfused._C``, csrc/ops.cpp: the same ops through
    torch's dispatcher, every key and mode as torch.ops reaches them, without torch.ops' Python parsing of the
    arguments against the schema); under a trace, ``torch.ops.hyperfused``."""
    if torch.compiler.is_compiling():
        return torch.ops.hyperfused
    return _ext.direct_ops()


def _reduce_args(kind, cfg, learned, grads, states, valid, hp, raw, compiled=True):
    """hyper_reduce's positional arguments (for one gradient dtype: the caller splits by dtype)."""
    n = len(grads)
    s0, s1, s2 = _lists(kind, cfg, learned, states)
    keys, head, counts = _meta(kind, cfg, learned)
    if "prev_grad" in keys:
        valid = _check_prev_grads(states, valid)
    steps = _steps(states, counts)
    dev = grads[0].device
    scal = scalars(kind, learned, n, hp, raw, steps, valid, dev, host=compiled and dev.type == "cpu", role=0)
    if _all_contiguous(grads) and (not s0 or _all_contiguous(s0)):
        g = grads
    else:
        g = [_dense_like(x, s) for x, s in zip(grads, s0)] if s0 else [x.contiguous() for x in grads]
    return head, g, s0, s1, s2, scal


def hyper_reduce(kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw, kernels=None, inv_scale=None):
    """Pass A on the compiled kernel (or ``kernels``, an object with the ops' functions, e.g. the Triton
    module); same contract as ``reference.hyper_reduce``. ``inv_scale``: GradScaler's 1 / scale (one-element
    float64 tensor on the device), applied by the kernels as they read the gradients."""
    head, g, s0, s1, s2, scal = _reduce_args(kind, cfg, learned, grads, states, valid, hp, raw,
                                             compiled=kernels is None)
    kernels = kernels or _compiled()
    rows = _by_dtype(g, lambda idx: kernels.hyper_reduce(
        *head, _pick(g, idx), _pick(s0, idx), _pick(s1, idx), _pick(s2, idx), _pick(scal, idx),
        inv_scale), len(g))
    finite = rows[:, ROW_NONFINITE].sum() == 0
    return _deltas(kind, learned, per_tensor_lr, rows, hp["lr"].dtype), finite


def hyper_reduce_tower(kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw, tower_args,
                       inv_scale=None) -> Tuple[Tensor, Tensor]:
    """Pass A and the levels above in one compiled op (one gradient dtype; the tensors are the whole group, in
    order, when the lr is per tensor): ``tower_args`` are the tower ops' (desc, eps, slots). Returns the tower's
    (scratch, ok), as ``tower.plan`` does after ``hyper_reduce``."""
    head, g, s0, s1, s2, scal = _reduce_args(kind, cfg, learned, grads, states, valid, hp, raw)
    _, scr, ok = _compiled().hyper_reduce_tower(*head, g, s0, s1, s2, scal, _d0_map(kind, learned, per_tensor_lr),
                                                *tower_args, inv_scale)
    return scr, ok


def hyper_update(kind, cfg, learned, per_tensor_lr, params, grads, states, hp, ok, raw=None,
                 jac: Optional[Tuple[Dict[str, Tensor], Dict[str, Tensor], Sequence[Tensor]]] = None,
                 kernels=None, inv_scale=None, tower_args=None, decay: Optional[Tensor] = None):
    """Pass B on the compiled kernel (or ``kernels``); same contract as ``reference.hyper_update``. With
    ``jac`` (one-pass mode: the values and raw values the last update used, and the valid flags) it also
    returns pass A's deltas, computed from the old state before it is overwritten. With ``tower_args`` too (the
    tower ops' (desc, eps, slots); compiled kernels, one gradient dtype) the op hyper_update_tower runs the
    levels above on those sums and this returns the tower's (scratch, ok) instead. ``decay``: lr * weight_decay of
    a decoupled weight decay (one value, or one per tensor), by which the kernels shrink x before the update."""
    compiled = kernels is None
    kernels = kernels or _compiled()
    dt = hp["lr"].dtype
    n = len(params)
    s0, s1, s2 = _lists(kind, cfg, learned, states)
    keys, head, counts = _meta(kind, cfg, learned)
    steps = _steps(states, counts)
    work, g = _work_lists(params, grads)
    dev = grads[0].device
    # keeping the gradient itself needs to know whether the step was taken: on the host, so only for the C++
    # kernels on CPU tensors (the Triton kernels never read a device value on the host, on any device)
    host = compiled and dev.type == "cpu"
    may_keep = (host and inv_scale is None                             # a scaled gradient is never kept
                and "prev_grad" in keys)
    keep = _keep_flags(states, g, work, work is params) if may_keep else None
    # column 7 of the update's table: write the previous gradient (1) or keep the gradient tensor (0). Off the
    # CPU nothing is kept: a fill, not a copy from host memory (which a CUDA graph capture would refuse)
    store = ([0.0 if k else 1.0 for k in keep] if may_keep else [1.0] * n) if host \
        else torch.ones(n, dtype=torch.float64, device=dev)
    scal = scalars(kind, learned, n, hp, raw or {}, steps, store, dev, step_offset=1.0, host=host, decay=decay,
                   role=1)
    scal_jac = None
    if jac is not None:
        jhp, jraw, jvalid = jac
        if "prev_grad" in keys:
            jvalid = _check_prev_grads(states, jvalid)
        scal_jac = scalars(kind, learned, n, jhp, jraw, steps, jvalid, dev, host=host, role=2)
    if tower_args is not None:
        if scal_jac is None or not compiled:
            raise ValueError("hyper_update: tower_args needs one-pass mode (jac) and the compiled kernels")
        tower_out = kernels.hyper_update_tower(*head, work, g, s0, s1, s2, scal, scal_jac, ok,
                                               _d0_map(kind, learned, per_tensor_lr), *tower_args,
                                               inv_scale)[1:]
    else:
        rows = _by_dtype(g, lambda idx: kernels.hyper_update(
            *head, _pick(work, idx), _pick(g, idx), _pick(s0, idx), _pick(s1, idx), _pick(s2, idx),
            _pick(scal, idx), _pick(scal_jac, idx), ok, inv_scale), n)
    if work is not params:
        for p, w in zip(params, work):
            if w is not p and w.data_ptr() != p.data_ptr():   # a contiguous copy of a non-dense parameter
                p.detach().copy_(w)
    # the C++ kernels' verdict, read on the host (CPU tensors: no synchronisation), decides what follows in Python
    taken = bool(ok) if host and not torch.compiler.is_compiling() else None
    _after_update(states, g, keep, steps, ok, taken)
    if jac is None:
        return None
    if tower_args is not None:
        return tower_out
    return _deltas(kind, learned, per_tensor_lr, rows, dt), rows[:, ROW_NONFINITE].sum() == 0


def _after_update(states: List[dict], g: List[Tensor], keep: Optional[List[bool]], steps, ok: Tensor,
                  taken: Optional[bool]) -> None:
    """What follows pass B's op: the gradients kept as previous gradients (``keep``: ``_keep_flags``) and the step
    counts (``steps``: ``_steps``), where the step was taken (``taken``: the verdict read on the host; None: only
    the device knows, ``ok``)."""
    if keep is not None and taken and any(keep):            # only CPU tensors are kept
        for st, gi, k in zip(states, g, keep):
            if k:
                st["prev_grad"] = gi
                _keep(gi)
    if steps is not None:                           # one multi-tensor op, not one per tensor
        # the list overload: the one taking a single 0-dim tensor reads it on the host (.item()) when it leaves
        # its fast route, a synchronisation (seen on an H200 with torch 2.11); the one taking a Python number runs
        # one op per tensor on CPU (194 us for 64 step counts, against 36 us for the list overload)
        if isinstance(steps, Tensor):               # packed: one op on the vector
            if taken is None:
                steps.add_(ok.to(steps.dtype))
            elif taken:
                steps.add_(1.0)
        elif taken is None:
            inc = ok.to(steps[0].dtype)
            torch._foreach_add_(steps, [inc] * len(steps))
        elif taken:                                 # (CPU: the verdict is on the host)
            torch._foreach_add_(steps, [_const(1.0, "cpu", steps[0].dtype)] * len(steps))


def _head(kind, cfg, learned) -> tuple:
    """The ops' first four arguments: kind, learned bits, momentum on/off, eps."""
    return kinds.KINDS[kind].id, learn_mask(kind, learned), bool(cfg.get("momentum", False)), _eps(kind, cfg)


def _d0_map(kind, learned, per_tensor_lr) -> List[int]:
    """The tower ops' d0_map: [per_lr, the rows' column of each learned name, in order]."""
    return [int(per_tensor_lr)] + [kinds.KINDS[kind].column(name) for name in learned]


def _pick(items, idx: Optional[List[int]]):
    """The entries ``idx`` of a list (an empty list stays empty) or the rows ``idx`` of a table; everything
    for ``idx=None`` (one dtype: no copies)."""
    if idx is None or items is None or (isinstance(items, list) and not items):
        return items
    if isinstance(items, Tensor):
        return items[idx].contiguous()
    return [items[i] for i in idx]


def _by_dtype(grads: List[Tensor], call, n: int) -> Tensor:
    """Run ``call(indices)`` once per gradient dtype (``call(None)``: all of them, when there is one dtype)
    and put the [k, 4] rows back in tensor order."""
    dtypes = []
    for t in grads:
        if t.dtype not in dtypes:
            dtypes.append(t.dtype)
    if len(dtypes) == 1:
        return call(None)
    out = torch.zeros(n, ROW_COLS, dtype=torch.float64, device=grads[0].device)
    for d in dtypes:
        idx = [i for i, t in enumerate(grads) if t.dtype == d]
        out[idx] = call(idx)
    return out


def nonfinite(grads: List[Tensor], kernels=None) -> Tensor:
    """0-dim bool: True when every gradient element is finite (one read of the gradients)."""
    host = kernels is None and grads[0].device.type == "cpu" and not torch.compiler.is_compiling()
    kernels = kernels or _compiled()
    if _all_contiguous(grads) and _one_dtype(grads):       # the usual case: one op and one comparison
        counts = kernels.nonfinite_count(grads)
        if host:         # the C++ kernel's counts are on the host: a read, not two tensor ops
            # (a new tensor: the caller owns it, and may change it in place)
            return torch.tensor(not (any(counts.tolist()) if len(grads) <= _HOST_TABLE_MAX else counts.numpy().any()))
        return counts.sum() == 0
    g = [x if _dense(x) else x.contiguous() for x in grads]
    total = torch.zeros((), dtype=torch.float64, device=g[0].device)
    for d in {t.dtype for t in g}:
        total = total + kernels.nonfinite_count([t for t in g if t.dtype == d]).sum()
    return total == 0
