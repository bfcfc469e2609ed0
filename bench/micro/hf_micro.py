"""The microbenchmarks' cases: every op on its own and every optimizer step, each next to its torch counterpart.

Nothing here builds an op's arguments. An op's arguments are those the optimizer itself passes: a real
optimizer step runs with a recorder around the backend's kernel entries (``torch.ops.hyperfused.*`` for the
compiled backends, the Triton kernel modules for "triton", ``hyperfused.ops.reference`` and
``hyperfused.ops.agd`` for "reference"), and the benchmark replays the recorded calls. A case whose op the
step did not call fails: the library no longer calls it, and the benchmark says so instead of timing nothing.

Bytes per call come from the project's bytes model (docs/MATH.md §6, §7.4) in the stream form of
``bench/gpu/bench_gpu.py``, whose ``stream_bytes``, optimizer configurations (``HF``) and baselines' streams
(``BASELINES``) are imported, not copied: ``(x streams, g streams, state streams)``, x and g in the
parameter's dtype, hyperfused's state in float32. torch's optimizers keep their state in the parameter's
dtype, so a torch baseline's streams are all counted at the parameter's size. Where the "cpu" backend keeps
the gradient tensor itself as the previous gradient (float32/float64 parameters), one state stream, the
write of the previous gradient, is not moved and is not counted (docs/MATH.md §6, last column).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "gpu"))

import bench_gpu  # noqa: E402  (bench/gpu/bench_gpu.py: its bytes model and configurations)

import hyperfused as hf  # noqa: E402
from hyperfused import ops  # noqa: E402
from hyperfused.ops import agd as agd_ops  # noqa: E402

Tensor = torch.Tensor

#: cuda when there is a GPU, else cpu (bench_gpu's rule)
DEVICE = bench_gpu.DEV
stream_bytes = bench_gpu.stream_bytes
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def backends() -> List[str]:
    """The backends that run on DEVICE: cpu (if the extension is built) and reference on CPU; cuda (if the CUDA
    extension is built) and triton (if importable) on a GPU. HF_MICRO_BACKENDS=a,b picks others (for example
    triton on CPU tensors under TRITON_INTERPRET=1)."""
    env = os.environ.get("HF_MICRO_BACKENDS", "")
    if env:
        return [b for b in env.split(",") if b]
    if DEVICE == "cuda":
        return (["cuda"] if ops.cuda_extension_available() else []) + (["triton"] if ops.triton_available() else [])
    return (["cpu"] if ops.extension_available() else []) + ["reference"]


# ------------------------------------------------------------------------------------------------- sizes
@dataclass
class Size:
    name: str
    elements: int                       # elements of the 8 parameters of a step benchmark, in all
    agd_shapes: Sequence[tuple]         # AGD's weights (matrices, convolution kernels)


_AGD_DEFAULT = [(256, 128, 3, 3), (128, 64, 3, 3), (512, 256), (10, 512)]      # ~0.5M parameters
SIZES = {
    "tiny": {"cpu": (4096, [(16, 8), (8, 4, 3, 3)]), "cuda": (4096, [(16, 8), (8, 4, 3, 3)])},
    "default": {"cpu": (2 ** 20, _AGD_DEFAULT), "cuda": (2 ** 26, bench_gpu.RESNET18)},
    "large": {"cpu": (2 ** 24, bench_gpu.RESNET18), "cuda": (2 ** 28, bench_gpu.RESNET18)},
}


def parse_size(text: str, device: str = DEVICE) -> Size:
    """A named size (tiny, default, large) or an element count ("256K", "4M", "1000000"; AGD then takes the
    default size's shapes)."""
    if text in SIZES:
        n, shapes = SIZES[text][device]
        return Size(text, n, shapes)
    t = text.upper()
    mult = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}.get(t[-1:], 1)
    try:
        n = int(float(t.rstrip("KMG")) * mult)
    except ValueError:
        raise ValueError(f"unknown size {text!r}: choose {', '.join(SIZES)} or an element count like 4M") from None
    if n < 8:
        raise ValueError(f"size {text!r}: at least 8 elements (8 tensors)")
    return Size(text, n, SIZES["default"][device][1])


# ------------------------------------------------------------------------------------------------- tensors
def make_params(n: int, dtype: torch.dtype):
    """bench_gpu's 8 parameters of uneven sizes (n elements in all) on DEVICE, two gradients each."""
    return bench_gpu.make_params(n, dtype)


def set_grads(params, grads, i: int) -> None:
    """Gradient i % 2 of each parameter: backward makes a new gradient tensor every step, so a previous gradient
    the optimizer keeps lives in other memory than the current one."""
    for p, pair in zip(params, grads):
        p.grad = pair[i % 2]


def agd_params(shapes, dtype: torch.dtype):
    """AGD's weights on DEVICE with fixed gradients of a few dominant directions per slice plus noise (as
    minibatch gradients have, and as bench_gpu's AGD section makes them): a warm-started power iteration settles
    in one iteration."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    ps = []
    for shape in shapes:
        S = 1 if len(shape) == 2 else shape[2] * shape[3]
        low = torch.randn(S, shape[0], 4, generator=g, device=DEVICE) @ torch.randn(S, 4, shape[1], generator=g,
                                                                                      device=DEVICE)
        mat = low + 0.1 * torch.randn(S, shape[0], shape[1], generator=g, device=DEVICE)
        grad = (mat[0] if len(shape) == 2 else mat.permute(1, 2, 0).reshape(shape)) * 1e-3
        p = torch.nn.Parameter((torch.randn(*shape, generator=g, device=DEVICE) * 0.01).to(dtype))
        p.grad = grad.to(dtype).contiguous()
        ps.append(p)
    return ps


def kept_gradient(opt, params) -> bool:
    """The optimizer keeps the gradient tensor itself as its previous gradient (the "cpu" backend, float32 and
    float64 parameters): the previous gradient's write is not made."""
    kept = False
    for p in params:
        st = opt.state.get(p, {})
        if "prev_grad" in st and st["prev_grad"] is p.grad:
            kept = True
    return kept


# ------------------------------------------------------------------------------------------------- torch
def torch_optimizer(cls, params, **kw):
    """torch's optimizer, fused where this device and dtype support it, else foreach."""
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, ValueError):
        return cls(params, foreach=True, **kw)


# ------------------------------------------------------------------------------------------------- steps
@dataclass
class Step:
    name: str
    group: str
    build: Callable                      # build(params) for torch, build(params, backend) for hyperfused
    streams: Tuple[int, int, int]        # bytes model (x, g, state) streams per element
    baseline: Optional[str] = None       # the torch entry this one is compared with
    agd: bool = False                    # on AGD's weights (agd_params), fixed gradients
    torch_state: bool = False            # the state is in the parameter's dtype (torch's optimizers)


def _streams_at_param_size(streams) -> Tuple[int, int, int]:
    """A torch baseline's streams: its state is in the parameter's dtype, so every stream counts as an x one."""
    return (sum(streams), 0, 0)


TORCH_STEPS = {
    "torch Adam": Step("torch Adam", "step Adam", lambda p: torch_optimizer(torch.optim.Adam, p, lr=1e-3),
                       bench_gpu.BASELINES["torch Adam fused"][1], torch_state=True),
    "torch AdamW": Step("torch AdamW", "step Adam", lambda p: torch_optimizer(torch.optim.AdamW, p, lr=1e-3,
                                                                              weight_decay=1e-2),
                        bench_gpu.BASELINES["torch AdamW fused"][1], torch_state=True),
    "torch SGD momentum": Step("torch SGD momentum", "step SGD", lambda p: torch_optimizer(
        torch.optim.SGD, p, lr=1e-3, momentum=0.9), bench_gpu.BASELINES["torch SGD momentum fused"][1],
        torch_state=True),
    # AGD's update is W -= coef * g: torch's plain SGD moves the same bytes (x read and written, g read)
    "torch SGD": Step("torch SGD", "step AGD", lambda p: torch_optimizer(torch.optim.SGD, p, lr=1e-3),
                      (2, 1, 0), agd=True, torch_state=True),
}


def _hf(name, group, baseline):
    build, streams, _ = bench_gpu.HF[name]
    return Step(f"hf {name}", group, build, streams, baseline)


# bench_gpu's hyperfused configurations (builders and streams), then those it does not have, with docs/MATH.md
# §6's streams: SGD one-pass 4 + 20 = (2, 2, 2); SGD momentum height 0 4 + 20 = (2, 2, 2), exact (lr)
# 8 + 20 = (2, 2, 3), one-pass (lr) 4 + 20 = (2, 2, 2); AGD (§7.4) Frobenius 4 + 12 = (2, 2, 0), spectral with one
# iteration 8 + 12 = (2, 3, 0)
HF_STEPS = {s.name: s for s in [
    _hf("Adam plain (height 0)", "step Adam", "torch Adam"),
    _hf("Adam (lr) exact", "step Adam", "torch Adam"),
    _hf("Adam (lr, betas) exact", "step Adam", "torch Adam"),
    _hf("Adam (lr) one-pass", "step Adam", "torch Adam"),
    _hf("Adam (lr, betas) one-pass", "step Adam", "torch Adam"),
    _hf("SGD (lr) exact", "step SGD", "torch SGD momentum"),
    Step("hf SGD (lr) one-pass", "step SGD",
         lambda p, b: hf.SGD(p, lr=1e-3, hyper=hf.SGD(lr=1e-8), backend=b, one_pass=True), (2, 2, 2),
         "torch SGD momentum"),
    Step("hf SGD momentum plain (height 0)", "step SGD",
         lambda p, b: hf.SGD(p, lr=1e-3, momentum=0.9, backend=b), (2, 2, 2), "torch SGD momentum"),
    Step("hf SGD momentum (lr) exact", "step SGD",
         lambda p, b: hf.SGD(p, lr=1e-3, momentum=0.9, learn=("lr",), hyper=hf.SGD(lr=1e-8), backend=b), (2, 2, 3),
         "torch SGD momentum"),
    Step("hf SGD momentum (lr) one-pass", "step SGD",
         lambda p, b: hf.SGD(p, lr=1e-3, momentum=0.9, learn=("lr",), hyper=hf.SGD(lr=1e-8), backend=b,
                             one_pass=True), (2, 2, 2), "torch SGD momentum"),
    Step("hf AGD frobenius", "step AGD", lambda p, b: hf.AGD(p, norm="frobenius", backend=b), (2, 2, 0),
         "torch SGD", agd=True),
    Step("hf AGD spectral", "step AGD", lambda p, b: hf.AGD(p, norm="spectral", backend=b), (2, 3, 0),
         "torch SGD", agd=True),
]}


@dataclass
class Bench:
    """One benchmark body: ``fn`` (timed), the bytes it moves per call, its group, its baseline's id."""
    fn: Callable[[], object]
    nbytes: Optional[int]
    group: str
    baseline: Optional[str] = None
    keep: list = field(default_factory=list)        # tensors and optimizers the body needs alive


def step_bench(step: Step, backend: Optional[str], dtype: torch.dtype, size: Size) -> Bench:
    """An optimizer step (gradients set first, alternating between two per parameter except for AGD)."""
    if step.agd:
        params = agd_params(size.agd_shapes, dtype)
        grads = [(p.grad, p.grad) for p in params]
        n = sum(p.numel() for p in params)
    else:
        params, grads = make_params(size.elements, dtype)
        n = size.elements
    opt = step.build(params) if backend is None else step.build(params, backend)
    counter = [0]

    def fn():
        counter[0] += 1
        set_grads(params, grads, counter[0])
        opt.step()

    for _ in range(3):            # state created, Jacobians valid, kernels compiled (Triton) before timing
        fn()
    streams = step.streams
    if step.torch_state:
        streams = _streams_at_param_size(streams)
    elif kept_gradient(opt, params):
        streams = (streams[0], streams[1], streams[2] - 1)
    return Bench(fn, stream_bytes(streams, dtype) * n, step.group, step.baseline, [opt, params, grads])


# ------------------------------------------------------------------------------------------------- capture
def kernel_entries(backend: str) -> List[Tuple[object, List[str]]]:
    """(owner, attribute names): where the optimizers reach the backend's kernels, attribute by attribute at
    call time, so that a recorder can stand in for them."""
    if backend in ("cpu", "cuda"):
        if not (ops.cuda_extension_available() if backend == "cuda" else ops.extension_available()):
            raise RuntimeError(f"backend {backend!r}: its compiled extension is not built here")
        # the passes' ops through hyperfused._C's direct bindings (what eager steps call: fused._compiled), the
        # others through torch.ops
        return [(ops._ext.direct_ops(), ["hyper_reduce", "hyper_update", "nonfinite_count", "hyper_reduce_tower",
                                         "hyper_update_tower", "hyper_tower_plan", "hyper_tower_commit"]),
                (torch.ops.hyperfused, ["multi_tensor_dot", "agd_sumsq", "agd_update", "agd_gv", "agd_gtu",
                                        "agd_normalize_rows"])]
    if backend == "triton":
        import importlib
        return [(ops._triton.kernels(), ["hyper_reduce", "hyper_update", "nonfinite_count"]),
                (importlib.import_module("hyperfused.ops.triton.agd"),
                 ["agd_sumsq", "agd_update", "agd_gv", "agd_gtu", "agd_normalize_rows"]),
                (importlib.import_module("hyperfused.ops.triton.tower"), ["plan", "commit"])]
    if backend == "reference":
        return [(ops.reference, ["hyper_reduce", "hyper_update", "multi_tensor_dot"]),
                (agd_ops, ["sumsq_slices", "power_iteration"])]
    raise ValueError(f"no kernel entries for backend {backend!r}")


@contextlib.contextmanager
def recording(backend: str):
    """Records the outermost calls of the backend's kernel entries, in order: [(name, function, args, kwargs)]."""
    calls: list = []
    depth = [0]
    saved = []

    def wrap(name, fn):
        def recorder(*args, **kwargs):
            if depth[0] == 0:
                calls.append((name, fn, args, kwargs))
            depth[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
        return recorder

    try:
        for owner, names in kernel_entries(backend):
            for name in names:
                fn = getattr(owner, name)
                saved.append((owner, name, fn))
                setattr(owner, name, wrap(name, fn))
        yield calls
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)


@contextlib.contextmanager
def unfused_tower(off: bool):
    """With ``off``, pass A (one-pass: pass B) and the levels above run as separate ops (hyper_reduce,
    hyper_tower_plan, ...) instead of hyper_reduce_tower / hyper_update_tower: the optimizers ask
    ``hyperfused.ops.tower.fusable`` which to run."""
    if not off:
        yield
        return
    from hyperfused.ops import tower
    saved = tower.fusable
    tower.fusable = lambda *a, **k: False
    try:
        yield
    finally:
        tower.fusable = saved


@dataclass
class Capture:
    calls: list
    opt: object
    params: list
    grads: list
    kept: bool


_CACHE: Dict[tuple, Capture] = {}


def capture(config: str, backend: str, dtype: torch.dtype, size: Size, unfused: bool) -> Capture:
    """One optimizer step of ``config`` (an HF_STEPS name) recorded after three unrecorded ones. The last capture
    is cached (cases that share it are adjacent) and no other: at a GPU's sizes a few would fill its memory."""
    key = (config, backend, dtype, size.name, size.elements, unfused)
    if key in _CACHE:
        return _CACHE[key]
    _CACHE.clear()
    step = HF_STEPS[config]
    if step.agd:
        params = agd_params(size.agd_shapes, dtype)
        grads = [(p.grad, p.grad) for p in params]
    else:
        params, grads = make_params(size.elements, dtype)
    from hyperfused.optim import base
    programs, base._PROGRAMS = base._PROGRAMS, False      # (a step program's calls are made in C++: the general
    try:                                                   # path makes the same ones, one entry at a time)
        opt = step.build(params, backend)
        with unfused_tower(unfused):
            for i in range(3):
                set_grads(params, grads, i)
                opt.step()
            set_grads(params, grads, 3)
            with recording(backend) as calls:
                opt.step()
    finally:
        base._PROGRAMS = programs
    _CACHE[key] = cap = Capture(calls, opt, params, grads, kept_gradient(opt, params))
    return cap


def replay(calls: list, names: Sequence[str]) -> Callable[[], object]:
    """The recorded calls of these entries, in the step's order, as one function."""
    picked = [(fn, args, kwargs) for name, fn, args, kwargs in calls if name in names]

    def fn():
        out = None
        with torch.no_grad():               # (as the step made them: the ops refuse inputs that require grad)
            for f, args, kwargs in picked:
                out = f(*args, **kwargs)
        return out
    return fn


# ------------------------------------------------------------------------------------------------- ops
@dataclass
class Op:
    name: str
    config: Optional[str]                 # the HF_STEPS configuration whose step calls it (None: called directly)
    entries: Dict[str, Tuple[str, ...]]   # backend -> the recorded entries that make the op
    streams: Optional[Tuple[int, int, int]] = None  # bytes model per element (None: see nbytes / negligible)
    unfused: bool = False                 # record with the tower unfused (hyper_reduce, hyper_tower_plan, ...)
    counterpart: Optional[str] = None     # key of TORCH_OPS
    prev_grad_write: bool = False         # the streams include the previous gradient's write (kept: not made)


_COMPILED = ("cpu", "cuda")
_ALL = ("cpu", "cuda", "triton", "reference")


def _on(backends_, *names) -> Dict[str, Tuple[str, ...]]:
    return {b: tuple(names) for b in backends_}


# Adam learning lr and betas with an SGD level above (the tower): pass A reads g, m, v, prev_grad (0, 1, 3); the
# update reads x, g, m, v and writes x, m, v, prev_grad (2, 1, 5); one-pass's update also reads prev_grad
# (2, 1, 6); the non-finite count reads g (0, 1, 0). The levels above move a few scalars (negligible).
OPS = {o.name: o for o in [
    Op("hyper_reduce", "hf Adam (lr, betas) exact", _on(_ALL, "hyper_reduce"), (0, 1, 3), True, "read"),
    Op("hyper_update exact", "hf Adam (lr, betas) exact", _on(_ALL, "hyper_update"), (2, 1, 5), True, "adam",
       prev_grad_write=True),
    Op("hyper_update one-pass (scal_jac)", "hf Adam (lr, betas) one-pass", _on(_ALL, "hyper_update"), (2, 1, 6),
       True, "adam", prev_grad_write=True),
    Op("nonfinite_count", "hf Adam (lr, betas) one-pass", _on(("cpu", "cuda", "triton"), "nonfinite_count"),
       (0, 1, 0), True, "read"),
    Op("hyper_reduce_tower", "hf Adam (lr, betas) exact", _on(_COMPILED, "hyper_reduce_tower"), (0, 1, 3), False,
       "read"),
    Op("hyper_update_tower", "hf Adam (lr, betas) one-pass", _on(_COMPILED, "hyper_update_tower"), (2, 1, 6),
       False, "adam", prev_grad_write=True),
    Op("hyper_tower_plan", "hf Adam (lr, betas) exact",
       dict(_on(_COMPILED, "hyper_tower_plan"), triton=("plan",)), None, True),
    Op("hyper_tower_commit", "hf Adam (lr, betas) exact",
       dict(_on(_COMPILED, "hyper_tower_commit"), triton=("commit",)), None, True),
    Op("multi_tensor_dot", None, _on(("cpu", "cuda", "reference"), "multi_tensor_dot"), (0, 2, 0),
       counterpart="dot"),
    Op("agd_sumsq", "hf AGD frobenius", dict(_on(_COMPILED + ("triton",), "agd_sumsq"), reference=("sumsq_slices",)),
       (0, 1, 0), counterpart="read"),
    Op("agd_update", "hf AGD frobenius", _on(_COMPILED + ("triton",), "agd_update"), (2, 1, 0), counterpart="axpy"),
    Op("agd_gv", "hf AGD spectral", _on(_COMPILED + ("triton",), "agd_gv"), (0, 1, 0), counterpart="gv"),
    Op("agd_gtu", "hf AGD spectral", _on(_COMPILED + ("triton",), "agd_gtu"), (0, 1, 0), counterpart="gtu"),
    Op("agd_normalize_rows", "hf AGD spectral",
       dict(_on(_COMPILED, "agd_normalize_rows"), triton=("agd_normalize_rows",)), None, counterpart="normalize"),
    # one warm power iteration: g v (with the sums of squares), normalise, g^T u, normalise: two reads of g
    Op("power iteration", "hf AGD spectral",
       dict(_on(_COMPILED, "agd_gv", "agd_normalize_rows", "agd_gtu"),
            triton=("agd_gv", "agd_normalize_rows", "agd_gtu"), reference=("power_iteration",)), (0, 2, 0),
       counterpart="matrix_norm"),
]}


def op_bench(op: Op, backend: str, dtype: torch.dtype, size: Size) -> Bench:
    """hyperfused's op on ``backend``, replaying the calls a real step made (multi_tensor_dot, which no
    optimizer calls, directly on a step's parameters and gradients)."""
    group = f"op {op.name}"
    base = f"torch {op.name}" if op.counterpart else None
    if op.config is None:                                        # multi_tensor_dot
        params, grads = make_params(size.elements, dtype)
        a, b = [g[0] for g in grads], [p.detach() for p in params]
        if backend == "reference":
            fn = ops.reference.multi_tensor_dot
        else:
            kernel_entries(backend)                  # the compiled ops loaded
            fn = torch.ops.hyperfused.multi_tensor_dot
        return Bench(lambda: fn(a, b), stream_bytes(op.streams, dtype) * size.elements, group, base,
                     [params, grads])
    cap = capture(op.config, backend, dtype, size, op.unfused)
    names = op.entries[backend]
    missing = [n for n in names if not any(c[0] == n for c in cap.calls)]
    if missing:
        raise AssertionError(f"{op.config} on backend {backend!r} called none of {missing} in its step (recorded: "
                             f"{[c[0] for c in cap.calls]}): the benchmark of {op.name} has nothing to time")
    fn = replay(cap.calls, names)
    fn()                                    # once before timing (Triton compiles here, if the step did not)
    if op.streams is None:
        nbytes = _vector_bytes(cap.calls, names) if op.name == "agd_normalize_rows" else None
    else:
        streams = op.streams
        if op.prev_grad_write and cap.kept:
            streams = (streams[0], streams[1], streams[2] - 1)
        n = sum(p.numel() for p in cap.params)
        nbytes = stream_bytes(streams, dtype) * n
    return Bench(fn, nbytes, group, base, [cap])


def _vector_bytes(calls, names) -> int:
    """agd_normalize_rows: its float64 vectors read and written."""
    total = 0
    for name, _, args, _ in calls:
        if name in names:
            total += sum(x.numel() * 8 * 2 for x in args[0])
    return total


# ------------------------------------------------------------------------------------------------- torch ops
def _read_streams(streams, params, grads, dtype):
    """Tensors that hold the bytes the streams read: x and g streams in the parameter's dtype, state streams in
    float32 (hyperfused's state)."""
    nx, ng, ns = streams
    x = [p.detach() for p in params]
    g = [pair[0] for pair in grads]
    out = x * nx + g * min(ng, 1)
    out += [torch.randn_like(t) for t in g] * max(ng - 1, 0)
    out += [torch.randn(t.shape, dtype=torch.float32, device=t.device) for _ in range(ns) for t in g]
    return out


def _fused_adam(params, grads):
    """torch's Adam kernel (torch._fused_adam_ where this device and dtype have it, else the foreach ops)."""
    x = [p.detach().clone() for p in params]
    g = [pair[0] for pair in grads]
    m = [torch.zeros_like(t) for t in x]
    v = [torch.zeros_like(t) for t in x]
    steps = [torch.tensor(1.0, device=t.device) for t in x]
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
    try:
        torch._fused_adam_(x, g, m, v, [], steps, **kw)
        return lambda: torch._fused_adam_(x, g, m, v, [], steps, **kw)
    except (RuntimeError, NotImplementedError):
        ps = [torch.nn.Parameter(t) for t in x]
        for p, t in zip(ps, g):
            p.grad = t
        opt = torch.optim.Adam(ps, lr=1e-3, foreach=True)
        return opt.step


def _slices(g: Tensor) -> Tensor:
    return agd_ops.as_slices(g)


def _gv(g: Tensor, v: Tensor) -> Tensor:
    """g v per slice, on the native layout (one read of g)."""
    if g.dim() == 2:
        return torch.mv(g, v[0]).unsqueeze(0)
    return torch.einsum("ois,si->so", g.flatten(2), v)


def _gtu(g: Tensor, u: Tensor) -> Tensor:
    if g.dim() == 2:
        return torch.mv(g.t(), u[0]).unsqueeze(0)
    return torch.einsum("ois,so->si", g.flatten(2), u)


def torch_op_bench(op: Op, dtype: torch.dtype, size: Size) -> Bench:
    """torch's counterpart of an op, on tensors of the same sizes and dtypes: its read-only multi-tensor pass over
    the same streams (torch._foreach_norm), its fused Adam kernel, per-pair dot products, torch._foreach_add_
    (AGD's update), g v and g^T u as matrix-vector products, row normalisation, matrix_norm(ord=2)."""
    group, c = f"op {op.name}", op.counterpart
    if op.config is not None and HF_STEPS[op.config].agd:
        params = agd_params(size.agd_shapes, dtype)
        grads = [(p.grad, p.grad) for p in params]
    else:
        params, grads = make_params(size.elements, dtype)
    n = sum(p.numel() for p in params)
    gs = [pair[0] for pair in grads]
    keep = [params, grads]
    nbytes = stream_bytes(op.streams, dtype) * n if op.streams else None
    if c == "read":
        ts = _read_streams(op.streams, params, grads, dtype)
        keep.append(ts)
        fn = lambda: torch._foreach_norm(ts)                                   # noqa: E731
    elif c == "adam":
        fn = _fused_adam(params, grads)
        nbytes = stream_bytes(_streams_at_param_size((2, 1, 4)), dtype) * n    # torch's Adam: state in x's dtype
    elif c == "dot":
        xs = [p.detach() for p in params]
        fn = lambda: [torch.dot(a, b) for a, b in zip(gs, xs)]                 # noqa: E731
    elif c == "axpy":
        xs = [p.detach() for p in params]
        fn = lambda: torch._foreach_add_(xs, gs, alpha=-1e-6)                  # noqa: E731
    elif c in ("gv", "gtu", "normalize"):
        vecs = [torch.nn.functional.normalize(torch.randn(agd_ops.slices_of(g), g.shape[1 if c == "gv" else 0],
                                                          device=g.device), dim=1).to(g.dtype) for g in gs]
        if c == "gv":
            fn = lambda: [_gv(g, v) for g, v in zip(gs, vecs)]                 # noqa: E731
        elif c == "gtu":
            fn = lambda: [_gtu(g, u) for g, u in zip(gs, vecs)]                # noqa: E731
        else:
            xs = [torch.randn(agd_ops.slices_of(g), g.shape[0], dtype=torch.float64, device=g.device) for g in gs]
            dsts = [torch.empty_like(x) for x in xs]
            fn = lambda: [torch.nn.functional.normalize(x, dim=1, out=d) for x, d in zip(xs, dsts)]  # noqa: E731
            nbytes = sum(x.numel() * 8 * 2 for x in xs)
            keep += [xs, dsts]
        keep.append(vecs)
    elif c == "matrix_norm":
        mats = [_slices(g) for g in gs]
        if dtype == torch.bfloat16:           # torch's SVD takes float32 and float64, not bfloat16
            mats = [m.float() for m in mats]
        keep.append(mats)
        fn = lambda: [torch.linalg.matrix_norm(m, ord=2) for m in mats]        # noqa: E731
    else:
        raise ValueError(f"no torch counterpart {c!r}")
    fn()
    return Bench(fn, nbytes, group, None, keep)


def op_ids() -> List[Tuple[str, str]]:
    """(op, entry) pairs for this device: each op's torch counterpart first, then every backend that has it."""
    out = []
    bs = backends()
    for name, op in OPS.items():
        have = [b for b in bs if b in op.entries]
        if not have:
            continue
        if op.counterpart:
            out.append((name, "torch"))
        out += [(name, b) for b in have]
    return out


def step_ids() -> List[Tuple[str, Optional[str]]]:
    """(step, backend) pairs: the torch baselines first (backend None), then hyperfused's configurations on every
    backend."""
    out = [(name, None) for name in TORCH_STEPS]
    out += [(name, b) for name in HF_STEPS for b in backends()]
    return out


def gbps(nbytes: Optional[int], seconds: float) -> Optional[float]:
    if not nbytes or not seconds or math.isnan(seconds):
        return None
    return nbytes / seconds / 1e9
